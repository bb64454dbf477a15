"""A CSV logger whose history survives a resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its writer starts, so a run resumed from
``last.ckpt`` in the same directory would lose every epoch before the interruption. ``ResumableCSVLogger`` keeps
those rows and, once the trainer has restored the checkpoint, drops the rows logged after it (the steps an
interrupted epoch logged and the resumed run replays), so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from segkit import SegkitError


class _ContinuingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def save(self) -> None:
        """Lightning's save, refused when a link was planted at the log's files since the run started (the run
        folder was checked for links before it began; this closes the window after)."""
        for path in (self.metrics_file_path, os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)):
            if os.path.islink(path):
                raise SegkitError(f"'{path}' became a symbolic link during the run; segkit will not write through it")
        super().save()

    def drop_rows_from(self, step: int, epoch: int) -> None:
        """Forget rows of steps the resumed run will log again: train rows from ``step`` on, epoch rows from
        ``epoch`` on (and any row still buffered)."""
        self.metrics = []
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if not _replayed(r, step, epoch)]
        if len(kept) == len(rows):
            return
        tmp = f"{self.metrics_file_path}.tmp"
        with self._fs.open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)


def _replayed(row: dict[str, Any], step: int, epoch: int) -> bool:
    try:
        row_step = int(float(row.get("step") or -1))
        row_epoch = int(float(row.get("epoch") or -1))
    except ValueError:
        return False
    return row_step >= step or row_epoch >= epoch


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` when a run is resumed in its own directory."""

    @property
    def experiment(self) -> _ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
