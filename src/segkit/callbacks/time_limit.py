"""Validate the weights a time-budgeted run ends with, however rarely it validates on the way."""

from __future__ import annotations

import time
from typing import Any

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, Timer


class ValidateAtTimeLimit(Callback):
    """With ``trainer.max_time`` and ``check_val_every_n_epoch`` > 1, Lightning stops mid-epoch when the time is up
    and validates only if that epoch was a validation epoch, so a run could end without scoring (or checkpointing
    as best) its last, annealed weights. Shortly before the limit (two steps' time), this switches validation to
    every epoch, so the stop validates. Nothing changes for runs without a time limit or validating every epoch."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._step_seconds = 0.0
        self._switched = False

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if self._last is not None:
            self._step_seconds = max(self._step_seconds * 0.9, now - self._last)  # a slow step counts at once
        self._last = now
        every = trainer.check_val_every_n_epoch
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or not every or every <= 1:
            return
        remaining = timer.time_remaining()
        switch = remaining is not None and remaining <= max(0.2, 2 * self._step_seconds)
        if trainer.world_size > 1:  # rank 0 decides for all, as Lightning's Timer does: ranks must validate together
            switch = bool(trainer.strategy.broadcast(switch))
        if switch:
            trainer.check_val_every_n_epoch = 1
            self._switched = True

    def on_validation_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self._last = None  # validation time is not a training step's

    def on_validation_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Validating every epoch makes ModelCheckpoint save at the end of the training epoch, which a mid-epoch
        stop never reaches: after the switch, it saves at this validation's end (it runs after this callback)."""
        if self._switched:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback._save_on_train_epoch_end = False
