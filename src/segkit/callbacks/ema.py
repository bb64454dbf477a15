"""An exponential moving average of the weights: Lightning's ``EMAWeightAveraging`` with a faster update."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import EMAWeightAveraging as LightningEMA
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMAWeightAveraging(LightningEMA):
    """Lightning's EMA callback, with its arguments, behaviour and checkpoint state (the same class name, so the
    same state key), whose update runs one foreach kernel per dtype over all tensors (torch's
    ``get_ema_multi_avg_fn``) instead of Lightning's loop over them: 4.2 ms against 10-14 ms a step for
    SegFormer-B0 on a 2-core CPU (docs/measurements.md). Validation and checkpoints use the averaged weights."""

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            use_buffers=use_buffers,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
            **kwargs,
        )
        self._kwargs.pop("avg_fn", None)  # torch's AveragedModel takes one of the two
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
