"""Auxiliary-head loss weights: the net's published defaults, the top-level ``aux_weights`` over them, and the old
``model.aux_weights`` spelling refused with the new one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from segkit import SegkitError
from segkit.losses import CrossEntropyLoss
from segkit.models.module import SegmentationModule
from segkit.tasks.train import build_datamodule, build_module

from .conftest import ROOT


class TwoHeads(nn.Module):
    """A 1x1 conv net with two auxiliary outputs whose losses are known."""

    default_aux_weights = {"aux": 0.4, "se_like": 0.2}

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        out = self.conv(x)
        return {"out": out, "aux": 2 * out, "se_like": -out}


def module(aux_weights=None) -> SegmentationModule:
    return SegmentationModule(
        net=TwoHeads(), loss=CrossEntropyLoss(), optimizer=torch.optim.SGD, num_classes=3, aux_weights=aux_weights
    )


def test_the_nets_published_weights_apply_and_named_heads_are_overridden():
    assert module().aux_weights == {"aux": 0.4, "se_like": 0.2}
    assert module({"aux": 0.1}).aux_weights == {"aux": 0.1, "se_like": 0.2}
    m = module({"se_like": 0.0})
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    out = m.net(x)
    _, total, parts = m._loss(out, y)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out["out"], y) + 0.4 * ce(out["aux"], y)
    assert torch.allclose(total, expected) and set(parts) == {"aux", "se_like"}


def test_top_level_aux_weights_reach_the_module(tiny_cfg):
    cfg = tiny_cfg("model=bisenetv2", "++aux_weights.aux3=0.5")
    built = build_module(cfg, build_datamodule(cfg))
    assert built.aux_weights == {"aux2": 1.0, "aux3": 0.5, "aux4": 1.0, "aux5": 1.0}
    assert "aux_weights" not in cfg.model  # the model config holds the net's arguments only


def test_the_old_spelling_is_refused_with_the_new_one(tiny_cfg):
    cfg = tiny_cfg("+model.aux_weights={aux:0.4}")
    with pytest.raises(SegkitError, match="top-level key aux_weights"):
        build_module(cfg, build_datamodule(cfg))
    for arg, spelling in [
        ("model.aux_weights.aux=0.2", "++aux_weights.aux=0.2"),
        ("+model.aux_weights={aux:1}", "aux_weights={aux:1}"),
    ]:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "src" / "train.py"), arg], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1 and f"write {spelling}" in proc.stderr.strip().splitlines()[-1], proc.stderr
