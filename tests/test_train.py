"""End-to-end runs of the real configs on tiny synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segkit.tasks.train import build_datamodule, build_module, train
from tests.conftest import ROOT, TINY
from tests.helpers import val_rows


# every conf/model choice trains one batch in tests/models/test_model_contract.py; this one runs the whole path
# (train, validate, test) on odd sizes
@pytest.mark.parametrize("model", ["unet_small"])
def test_fast_dev_run_on_odd_sizes(model, tiny_cfg):
    cfg = tiny_cfg(
        f"model={model}", "debug=fdr", "data.dataset.height=97", "data.dataset.width=131", "data.batch_size=2"
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0 and metrics["train/loss"] > 0
    dm = build_datamodule(cfg)
    net = build_module(cfg, dm).net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 97, 131)).shape == (1, 6, 97, 131)


def test_short_run_writes_checkpoints_and_csv(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("debug=limit"))
    assert Path(metrics["best_model_path"]).is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    rows = val_rows(tmp_path / "csv" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU", "val/loss", "val/IoU/disc"} <= set(rows[-1])
    assert "test/mIoU" in metrics and "best/val/mIoU" in metrics


def test_resume_from_last_checkpoint_is_exact(tiny_cfg, tmp_path):
    common = [
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "test=false",
        "callbacks.early_stopping=null",
    ]
    full = train(tiny_cfg(*common, f"paths.output_dir={tmp_path}/full"))
    train(
        tiny_cfg(*common, f"paths.output_dir={tmp_path}/cut", "+callbacks.stop._target_=tests.helpers.StopAfterEpoch")
    )
    cut_rows = val_rows(tmp_path / "cut" / "csv" / "metrics.csv")
    assert [r["epoch"] for r in cut_rows] == [0]
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = train(tiny_cfg(*common, f"paths.output_dir={tmp_path}/resumed", f"ckpt_path={last}"))
    for key in ("val/mIoU", "val/loss", "val/pixAcc", "train/loss"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key


def test_missing_checkpoint_is_a_clear_error(tiny_cfg):
    from segkit import SegkitError

    with pytest.raises(SegkitError, match="ckpt_path='nope.ckpt' does not exist"):
        train(tiny_cfg("debug=fdr", "ckpt_path=nope.ckpt"))


def test_ddp_two_processes_match_one_process(tiny_cfg, tmp_path):
    """2 CPU processes (gloo, trainer=ddp_sim with SyncBatchNorm) with batch 2 each train the same weights as 1
    process with batch 4 (the same samples per step, BatchNorm over the global batch, averaged gradients), and
    validate them to the same metrics."""
    common = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "test=false",
        "logger=csv",
        "optimizer=sgd",
        "data.dataset.num_samples={train: 16, val: 10, test: 8}",
        "data.val_batch_size=2",
    ]
    ddp = train(tiny_cfg(*common, "trainer=ddp_sim", "data.batch_size=2", f"paths.output_dir={tmp_path}/ddp"))
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cfg = tiny_cfg(*common, "data.batch_size=4", f"paths.output_dir={tmp_path}/single")
    train(cfg)
    trained = {
        run: torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in ("ddp", "single")
    }
    assert trained["ddp"].keys() == trained["single"].keys()
    moved = 0
    for key, value in trained["single"].items():
        assert torch.allclose(trained["ddp"][key].float(), value.float(), atol=2e-5), key
        moved += "running_var" in key and not torch.allclose(value, torch.ones_like(value))
    assert moved  # the BatchNorm statistics did update

    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(module, datamodule=dm, ckpt_path=str(ckpt), weights_only=True)
    for key in ("val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU", "val/IoU/box"):
        assert single[key] == pytest.approx(ddp[key], abs=1e-6), key
    assert single["val/loss"] == pytest.approx(ddp["val/loss"], rel=1e-4)


def run_cli(args: list[str], tmp_path: Path, timeout: int = 600, env_extra: dict | None = None):
    env = {**os.environ, "SEGKIT_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_multirun_over_optimizers(tmp_path):
    shrink = [o.split("=")[0] for o in TINY]  # keep the run folders named by the swept key alone
    args = [
        "-m",
        "optimizer=adam,sgd,rmsprop",
        "debug=limit",
        "test=false",
        *TINY,
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(shrink)},debug,test]",
    ]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*optimizer=*"))
    assert [r.name.split("optimizer=")[1].split(",")[0] for r in runs] == ["adam", "sgd", "rmsprop"]
    finals = []
    for run in runs:
        rows = val_rows(run / "csv" / "metrics.csv")
        assert len(rows) == 2
        finals.append(rows[-1]["val/loss"])
    assert len(set(finals)) == 3  # each optimizer trained its own model


def test_cli_bad_input_is_one_clear_line(tmp_path):
    proc = run_cli(["data=camvid", f"data.root={tmp_path}/nowhere", *TINY[5:]], tmp_path)
    assert proc.returncode == 1
    assert f"CamVid root '{tmp_path}/nowhere' does not exist; set data.root=" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_test_split_skips_testing_and_keeps_the_run(tiny_cfg):
    metrics = train(tiny_cfg("debug=limit", "data.splits.test=nosuchsplit"))
    assert "val/mIoU" in metrics and Path(metrics["best_model_path"]).is_file()
    assert not any(k.startswith("test/") for k in metrics)
