"""The NaN guard: a non-finite loss or weight stops the run with one line, before anything bad is written; the last good checkpoint stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segkit import NonFiniteLossError
from segkit.tasks.train import train


def test_non_finite_loss_stops_the_run_with_one_line(tiny_cfg, tmp_path):
    cfg = tiny_cfg("optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=4", "test=false")
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message and "at step" in message and ("training loss is" in message or "not finite" in message)
    assert "lower optimizer.lr" in message and "gradient_clip_val" in message and "32-true" in message
    assert all(_all_finite(c) for c in (tmp_path / "checkpoints").glob("*.ckpt"))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and "NonFiniteLossError" in result["error"]


def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    """Epoch 0 trains well and is checkpointed; the lr then jumps to 1e12: the run stops at the first non-finite
    loss, names last.ckpt as the last good checkpoint, and every checkpoint on disk is finite."""
    cfg = tiny_cfg(
        "optimizer=sgd",
        "scheduler=none",
        "trainer.max_epochs=6",
        "test=false",
        "+callbacks.boost._target_=tests.helpers.RaiseLearningRate",
        "+callbacks.boost.epoch=1",
        "+callbacks.boost.lr=1e12",
    )
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert checkpoints and all(_all_finite(c) for c in checkpoints)
    assert str(tmp_path / "checkpoints" / "last.ckpt") in str(err.value)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] < 6


def _all_finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
