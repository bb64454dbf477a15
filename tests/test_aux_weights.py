"""Auxiliary-head loss weights: the net's published defaults, the top-level ``aux_weights`` over them, and weights
for heads a net does not have refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkit import SegkitError
from segkit.build import build_datamodule, build_module
from segkit.losses import CrossEntropyLoss
from segkit.models.module import SegmentationModule
from segkit.models.targets import masks_at_size
from tests.helpers import spec_of


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
        net=TwoHeads(), loss=CrossEntropyLoss(), optimizer=torch.optim.SGD, spec=spec_of(3), aux_weights=aux_weights
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


def test_aux_weights_under_model_is_an_unknown_net_argument(tiny_cfg):
    """Loss weights are a training key (top-level aux_weights), not an argument of the net."""
    cfg = tiny_cfg("+model.aux_weights={aux:0.4}")
    with pytest.raises(
        SegkitError, match=r"model.aux_weights is not an argument of UNet \(its arguments: .*base_width"
    ):
        build_module(cfg, build_datamodule(cfg))


def test_unknown_heads_and_non_numbers_are_refused():
    with pytest.raises(SegkitError, match="aux_weights.aux_sub16: TwoHeads has no auxiliary head 'aux_sub16'"):
        module({"aux_sub16": 0.4})
    with pytest.raises(SegkitError, match="give a number"):
        module({"aux": "high"})


def test_coarse_auxiliary_maps_are_scored_against_the_label_at_each_cells_centre():
    """An input of 65 x 70 pixels, padded to 80 x 80 by a stride-16 net, gives 5 x 5 cells; cell i covers pixels
    16 i .. 16 i + 15 and takes the label at 16 i + 8; the last row and column (centres 72 > 65, 70) take ignore_index."""
    mask = torch.arange(65 * 70).reshape(1, 65, 70) % 11
    coarse = masks_at_size(mask, (5, 5), ignore_index=255)
    expected = torch.full((1, 5, 5), 255)
    for i, y in enumerate(range(8, 80, 16)):
        for j, x in enumerate(range(8, 80, 16)):
            if y < 65 and x < 70:
                expected[0, i, j] = mask[0, y, x]
    assert torch.equal(coarse, expected) and (coarse[0, 4] == 255).all() and (coarse[0, :, 4] == 255).all()
    assert torch.equal(masks_at_size(mask, (3, 3))[0, 2, 2], torch.tensor(255))  # stride 32: centre 80 > 65
    with pytest.raises(SegkitError, match="power-of-two stride"):
        masks_at_size(mask, (6, 5))
