"""Segmentation losses. Each takes logits B x K x H x W and targets B x H x W and honours ``ignore_index``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with optional class weights (a list of K floats) and label smoothing."""

    def __init__(
        self, ignore_index: int = 255, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        if class_weights is not None and isinstance(class_weights, str):
            raise SegkitError(
                f"loss.class_weights={class_weights!r} needs the class-weights computation; give a list of floats or null"
            )
        weight = torch.as_tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise SegkitError(
                f"loss.class_weights has {self.weight.numel()} entries but the model predicts {logits.shape[1]} classes"
            )
        return F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )
