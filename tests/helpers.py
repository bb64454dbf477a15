"""Callbacks and utilities the tests plug into real runs through config overrides."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from pytorch_lightning import Callback

from tests.conftest import ROOT, TINY

# A short run: 3 epochs of tiny synthetic batches, 2 val batches, no test split, a U-Net 4 wide and 2 deep.


class StopAfterEpoch(Callback):
    """Simulates an interrupted run: stop cleanly after ``epochs`` epochs (checkpoints already written)."""

    def __init__(self, epochs: int = 1) -> None:
        self.epochs = epochs

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def read_csv_metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def val_rows(path: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in r.items() if v} for r in read_csv_metrics(path) if r.get("val/mIoU")]


class PauseAtStep(Callback):
    """Writes ``flag`` when training reaches ``step`` (mid-epoch) and then waits, so a test can ``kill -9`` the
    process at a known point."""

    def __init__(self, step: int, flag: str, seconds: float = 120.0) -> None:
        self.step, self.flag, self.seconds = step, flag, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import time

            Path(self.flag).write_text(str(trainer.global_step))
            time.sleep(self.seconds)


class RaiseLearningRate(Callback):
    """From ``epoch`` on, every optimiser step uses ``lr``: a run that diverges after good epochs."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch >= self.epoch:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr


class SleepEachStep(Callback):
    """Makes every training step ``seconds`` slower: a stand-in for a slower machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        time.sleep(self.seconds)


class LearningRateTrace(Callback):
    """Records (share of trainer.max_time spent, lr) into lr_trace.json: the share when a step ends (the moment the
    scheduler then updates the lr) paired with the lr the next step starts with."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.pending: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from pytorch_lightning.callbacks import Timer

        timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
        elapsed, remaining = timer.time_elapsed(), timer.time_remaining() or 0.0
        self.pending = elapsed / (elapsed + remaining)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.pending is not None:
            self.points.append((self.pending, trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        if self.pending is not None:
            self.points.append((self.pending, trainer.optimizers[0].param_groups[0]["lr"]))
        Path(trainer.default_root_dir, "lr_trace.json").write_text(json.dumps(self.points))


SHORT_RUN = [
    *TINY,
    "trainer.max_epochs=3",
    "trainer.limit_val_batches=2",
    "test=false",
    "callbacks.early_stopping=null",
    "model.base_width=4",
    "model.depth=2",
]


def train_cli(args: list[str], cwd: Path, wait: bool = True, **kwargs):
    """``python src/train.py <args>`` in ``cwd`` (its logs/ under it); ``wait=False`` returns the running process."""
    env = {**os.environ, "SEGKIT_ROOT": str(cwd), "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def run_dirs(root: Path) -> list[Path]:
    """The run folders ``train_cli`` made under ``root``."""
    return sorted((root / "logs" / "train" / "runs").iterdir())


def spec_of(num_classes: int, **input_cfg):
    """An input spec for ``num_classes`` classes named ``c0, c1, ...`` (a ``SegmentationModule`` needs one)."""
    from segkit.data.input_spec import InputSpec
    from segkit.data.labels import load_table

    table = load_table({"name": "test", "classes": [{"name": f"c{i}", "ids": [i]} for i in range(num_classes)]})
    return InputSpec.from_config(input_cfg, table, 3)


class UserNet(torch.nn.Module):
    """A user's own net, outside segkit (``model._target_: tests.helpers.UserNet``): a plain ``nn.Module``."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(width, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
