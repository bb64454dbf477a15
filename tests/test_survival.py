"""Runs that survive: exact resume after kill -9 in the run's own directory, a NaN guard that loses nothing,
and faults that surface early with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segkit import NonFiniteLossError, SegkitError
from segkit.data.class_weights import cached_counts
from segkit.tasks.train import build_datamodule, train
from tests.conftest import ROOT, TINY
from tests.helpers import read_csv_metrics, val_rows

RUN = [
    *TINY,
    "trainer.max_epochs=3",
    "trainer.limit_val_batches=2",
    "test=false",
    "callbacks.early_stopping=null",
    "model.base_width=4",
    "model.depth=2",
]


def _cli(args: list[str], cwd: Path, wait: bool = True, **kwargs):
    env = {**os.environ, "SEGKIT_ROOT": str(cwd), "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def _run_dirs(root: Path) -> list[Path]:
    return sorted((root / "logs" / "train" / "runs").iterdir())


def test_resume_after_kill_9_continues_the_same_run_exactly(tmp_path):
    """Killed mid-epoch, then resumed from last.ckpt: the same run directory, the best checkpoint and its score
    kept, the CSV history continued, and the same final metrics and returned value as an uninterrupted run."""
    full_root, cut_root = tmp_path / "full", tmp_path / "cut"
    full_root.mkdir(), cut_root.mkdir()
    flag = tmp_path / "paused"
    proc = _cli(
        [
            *RUN,
            "+callbacks.pause._target_=tests.helpers.PauseAtStep",
            "+callbacks.pause.step=6",
            f"+callbacks.pause.flag={flag}",
        ],
        cut_root,
        wait=False,
    )
    full = _cli(RUN, full_root)  # the uninterrupted twin runs meanwhile
    assert full.returncode == 0, full.stderr[-3000:]
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert flag.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "never paused"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 1 (4 steps per epoch): last.ckpt is from the end of epoch 0
    proc.wait()
    (run,) = _run_dirs(cut_root)
    assert not (run / "result.json").exists()
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["epoch"] == 0 and before["global_step"] == 4

    resumed = _cli([*RUN, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cut_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _run_dirs(cut_root) == [run]  # no new run directory: the run continued in its own
    (full_run,) = _run_dirs(full_root)
    got, want = (json.loads((d / "result.json").read_text()) for d in (run, full_run))
    assert got["status"] == want["status"] == "completed"
    assert got["value"] == pytest.approx(want["value"], abs=1e-6)  # the optimized_metric returned to sweepers
    for key in ("val/mIoU", "val/loss", "val/pixAcc", "best/val/mIoU"):
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], abs=1e-6), key
    assert Path(got["metrics"]["best_model_path"]).parent == run / "checkpoints"
    assert Path(got["metrics"]["best_model_path"]).name == Path(want["metrics"]["best_model_path"]).name
    cut_rows, full_rows = val_rows(run / "csv" / "metrics.csv"), val_rows(full_run / "csv" / "metrics.csv")
    assert [r["epoch"] for r in cut_rows] == [0, 1, 2]  # epoch 0 from before the kill, kept
    for a, b in zip(cut_rows, full_rows, strict=True):
        assert a["val/mIoU"] == pytest.approx(b["val/mIoU"], abs=1e-6) and a["step"] == b["step"]
    steps = [int(float(r["step"])) for r in read_csv_metrics(run / "csv" / "metrics.csv") if r.get("train/loss")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # replayed steps logged once


def _all_finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


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


def test_a_sweep_records_a_diverged_job_as_failed_and_goes_on(tmp_path):
    """The diverged job fails alone; the summary lists both jobs with their status. An override holding a path
    (paths.data_dir) no longer nests the job folders: '/' is replaced in their names."""
    shrink = [o.split("=")[0] for o in RUN]
    args = [
        "-m",
        *(o for o in RUN if not o.startswith("trainer.max_epochs")),
        "optimizer=sgd",
        "optimizer.lr=1e12,1e-2",
        "trainer.max_epochs=2",
        f"paths.data_dir={tmp_path}/data",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(shrink)},optimizer]",
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    results = sorted(sweep.rglob("result.json"), key=lambda p: p.relative_to(sweep).as_posix())
    assert len(results) == 2 and all(p.parent.parent == sweep for p in results)  # a path override nests nothing
    assert [json.loads(p.read_text())["status"] for p in results] == ["failed", "completed"]
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize_runs.py"), str(sweep)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "failed: NonFiniteLossError" in table and "completed" in table
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["1", "0"]  # both jobs, best first


def test_a_broken_val_split_fails_in_the_sanity_check(tmp_path):
    """Two val batches run before training: a corrupt val mask stops the run before the first training step."""
    from tests.data import trees

    root = trees.camvid_tree(tmp_path / "camvid", n=4)
    (root / "valannot" / "0001TP_000000.png").write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    cfg = __import__("tests.conftest", fromlist=["compose_config"]).compose_config(
        "train",
        [
            "data=camvid",
            f"data.root={root}",
            "data.batch_size=2",
            "data.val_batch_size=1",
            "data.num_workers=0",
            "data.train_transform.crop_size=[16,16]",
            "model.base_width=4",
            "model.depth=2",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "callbacks.progress_bar=null",
            "extras.print_config=false",
            "trainer.log_every_n_steps=1",
            "test=false",
        ],
        output_dir=run,
    )
    with pytest.raises(SegkitError, match=r"cannot read mask .*valannot/0001TP_000000.png"):
        train(cfg)
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("*.ckpt"))
    rows = read_csv_metrics(run / "csv" / "metrics.csv") if (run / "csv" / "metrics.csv").exists() else []
    assert not [r for r in rows if r.get("train/loss")]  # no training step ran


def test_a_train_split_smaller_than_a_batch_says_so(tiny_cfg):
    cfg = tiny_cfg(
        "data.dataset.num_samples={train: 3, val: 4, test: 4}", "data.batch_size=4", "trainer.fast_dev_run=true"
    )
    with pytest.raises(
        SegkitError,
        match=r"train split 'train' has 3 images, fewer than one batch of "
        r"data.batch_size=4.*lower data.batch_size",
    ):
        train(cfg)


def test_garbage_ckpt_path_is_one_line(tiny_cfg, tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(os.urandom(256))
    with pytest.raises(SegkitError, match="garbage.ckpt' is not a torch.save file") as err:
        train(tiny_cfg("debug=fdr", f"ckpt_path={tmp_path / 'garbage.ckpt'}"))
    assert "\n" not in str(err.value)


def test_a_truncated_class_weight_cache_is_rebuilt(tiny_cfg, tmp_path):
    datamodule = build_datamodule(tiny_cfg())
    dataset = datamodule.raw_dataset("train")
    fresh = cached_counts(dataset, datamodule.labels, "synthetic-train", cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache" / "class_counts").glob("*.json")
    cache.write_text(cache.read_text()[: len(cache.read_text()) // 2])  # a write cut short
    again = cached_counts(dataset, datamodule.labels, "synthetic-train", cache_dir=tmp_path / "cache")
    assert again.pixels.tolist() == fresh.pixels.tolist() and json.loads(cache.read_text())["images"] == 16
    assert not list(cache.parent.glob(".*.tmp"))  # the rewrite went through a temporary file


def test_two_runs_started_together_get_their_own_directories(tmp_path):
    args = [*TINY, "debug=fdr", "model.base_width=4", "model.depth=2"]
    procs = [_cli(args, tmp_path, wait=False) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = _run_dirs(tmp_path)
    assert len(runs) == 2 and all((r / "result.json").is_file() for r in runs)


def test_checkpoints_carry_the_cuda_rng_state(monkeypatch):
    """On a GPU the CUDA generators are saved and restored with the others (mocked here: no GPU on CI)."""
    from functools import partial

    from segkit.models.module import SegmentationModule

    module = SegmentationModule(
        torch.nn.Conv2d(3, 2, 1), torch.nn.CrossEntropyLoss(), partial(torch.optim.SGD, lr=0.1), 2
    )
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["rng_states"]["cuda"] is states
    module.on_load_checkpoint(checkpoint)
    assert restored == [states]
