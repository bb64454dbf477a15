"""``last.ckpt`` that is the run's latest state, for resuming."""

from __future__ import annotations

from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning import callbacks as pl_callbacks
from pytorch_lightning.trainer.states import TrainerFn

from segkit import SegkitError


class ModelCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with ``save_last`` writing ``last.ckpt`` at every save point.

    Lightning 2.6 writes ``last.ckpt`` only when a top-k checkpoint was written at the same step. A run whose
    score stopped improving therefore kept the ``last.ckpt`` of its best epoch. Resuming from it went back to that
    epoch, and the annealed weights a time-budgeted run ends with were never saved. Here, every validation (or
    train-epoch end, where Lightning saves there) also writes ``last.ckpt`` unless it was written at that step.
    The class keeps Lightning's name, so its state key, and resuming older checkpoints, are unchanged.
    ``save_last='link'`` is refused: its link points at the last top-k file, the stale state this class avoids
    (and segkit's checkpoint loading follows no links)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last == "link":
            raise SegkitError(
                "callbacks.model_checkpoint.save_last=link links last.ckpt to the best checkpoint, not the latest "
                "state; use save_last=true"
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step  # top-k (and last with it) written at this step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
