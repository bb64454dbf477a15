"""End-to-end runs of the real configs on tiny synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segkit.build import build_datamodule, build_module
from segkit.tasks.train import train
from tests.conftest import ROOT, TINY
from tests.helpers import run_dirs, train_cli, val_rows


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


def test_a_users_own_net_trains_and_evaluates_once_registered(tiny_cfg, tmp_path):
    """``_target_: mypkg.MyNet`` trains through Hydra (the user's own config); eval of its checkpoint refuses it in one
    line until the module that calls ``segkit.register_net`` is imported (``imports=[...]``), then scores what
    training validated."""
    import segkit
    from segkit.safe_config import _USER_NETS
    from segkit.tasks.evaluate import evaluate_from_config
    from tests.conftest import compose_config

    cfg = tiny_cfg("debug=limit", "test=false", "~model", "+model={_target_: tests.helpers.UserNet, width: 6}")
    metrics = train(cfg)
    common = [f"ckpt={tmp_path}", "progress=false", f"output_dir={tmp_path / 'eval'}"]
    refused = r"'tests.helpers.UserNet' is not a registered net .*register_net\(UserNet\)"
    with pytest.raises(segkit.SegkitError, match=refused):
        evaluate_from_config(compose_config("eval", common))
    try:
        scores = evaluate_from_config(compose_config("eval", [*common, "imports=[tests.registered_user_net]"]))
    finally:
        _USER_NETS.pop("tests.helpers.UserNet", None)
    assert scores["val/mIoU"] == pytest.approx(metrics["best/val/mIoU"], abs=1e-6)
    with pytest.raises(segkit.SegkitError, match=r"imports: cannot import 'mypkg_nowhere'"):
        evaluate_from_config(compose_config("eval", [*common, "imports=[mypkg_nowhere]"]))


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


def test_two_runs_started_together_get_their_own_directories(tmp_path):
    args = [*TINY, "debug=fdr", "model.base_width=4", "model.depth=2"]
    procs = [train_cli(args, tmp_path, wait=False) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = run_dirs(tmp_path)
    assert len(runs) == 2 and all((r / "result.json").is_file() for r in runs)
