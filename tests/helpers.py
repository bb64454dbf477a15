"""Callbacks and utilities the tests plug into real runs through config overrides."""

from __future__ import annotations

import csv
from pathlib import Path

from pytorch_lightning import Callback


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
