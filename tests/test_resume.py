"""Resuming a run: exact after kill -9 in its own folder, from its last checkpoint, with every random generator (CUDA too); a wrong ckpt_path is one line."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from segkit import SegkitError
from segkit.tasks.train import train
from tests.helpers import SHORT_RUN, read_csv_metrics, run_dirs, train_cli, val_rows


def test_resume_after_kill_9_continues_the_same_run_exactly(tmp_path):
    """Killed mid-epoch, then resumed from last.ckpt: the same run directory, the best checkpoint and its score
    kept, the CSV history continued, and the same final metrics and returned value as an uninterrupted run."""
    full_root, cut_root = tmp_path / "full", tmp_path / "cut"
    full_root.mkdir(), cut_root.mkdir()
    flag = tmp_path / "paused"
    proc = train_cli(
        [
            *SHORT_RUN,
            "+callbacks.pause._target_=tests.helpers.PauseAtStep",
            "+callbacks.pause.step=6",
            f"+callbacks.pause.flag={flag}",
        ],
        cut_root,
        wait=False,
    )
    full = train_cli(SHORT_RUN, full_root)  # the uninterrupted twin runs meanwhile
    assert full.returncode == 0, full.stderr[-3000:]
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert flag.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "never paused"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 1 (4 steps per epoch): last.ckpt is from the end of epoch 0
    proc.wait()
    (run,) = run_dirs(cut_root)
    assert not (run / "result.json").exists()
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["epoch"] == 0 and before["global_step"] == 4

    resumed = train_cli([*SHORT_RUN, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cut_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_dirs(cut_root) == [run]  # no new run directory: the run continued in its own
    (full_run,) = run_dirs(full_root)
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


def test_garbage_ckpt_path_is_one_line(tiny_cfg, tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(os.urandom(256))
    with pytest.raises(SegkitError, match="garbage.ckpt' is not a torch.save file") as err:
        train(tiny_cfg("debug=fdr", f"ckpt_path={tmp_path / 'garbage.ckpt'}"))
    assert "\n" not in str(err.value)


def test_checkpoints_carry_the_cuda_rng_state(monkeypatch):
    """On a GPU the CUDA generators are saved and restored with the others (mocked here: no GPU on CI)."""
    from functools import partial

    from segkit.data.input_spec import InputSpec
    from segkit.data.labels import LabelTable
    from segkit.models.module import SegmentationModule

    table = LabelTable(names=("a", "b"), colors=((0, 0, 0), (9, 9, 9)), source_ids=((0,), (1,)))
    module = SegmentationModule(
        torch.nn.Conv2d(3, 2, 1), torch.nn.CrossEntropyLoss(), partial(torch.optim.SGD, lr=0.1), InputSpec(table)
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


@pytest.mark.parametrize("every, epochs, best, last", [(1, 3, 0, 2), (2, 4, 1, 3)])
def test_last_checkpoint_is_the_latest_state_when_the_best_is_older(tiny_cfg, tmp_path, every, epochs, best, last):
    """The best checkpoint by a score that only worsens (the epoch, mode min) stays the first validated one;
    last.ckpt holds the final step all the same, whether the checkpoint saves at the train epoch's end (validation
    every epoch) or at validation's end (every second epoch, as the CamVid recipes' every third). Lightning 2.6's
    own ModelCheckpoint leaves it at the best epoch's step, and resuming from it would go back in time."""
    train(
        tiny_cfg(
            f"trainer.max_epochs={epochs}",
            f"trainer.check_val_every_n_epoch={every}",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "callbacks.model_checkpoint.monitor=epoch",
            "callbacks.model_checkpoint.mode=min",
            "test=false",
            "callbacks.early_stopping=null",
        )
    )
    folder = tmp_path / "checkpoints"
    assert [p.name for p in folder.glob("epoch_*.ckpt")] == [next(folder.glob(f"epoch_{best:03d}-*.ckpt")).name]
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (last, 2 * epochs)


def test_a_linked_last_checkpoint_is_refused_in_one_line(tiny_cfg):
    with pytest.raises(SegkitError, match="save_last=link links last.ckpt to the best checkpoint.*use save_last=true"):
        train(tiny_cfg("callbacks.model_checkpoint.save_last=link"))
