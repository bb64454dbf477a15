"""Segmentation scores from one dataset-level confusion matrix.

The matrix is a torchmetrics state (summed across processes under DDP); ground-truth ignore pixels are
dropped before counting. Classes absent from both truth and prediction are left out of the means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """``confusion[t, p]`` = pixels of true class t predicted as p -> pixAcc, mAcc, mIoU, fwIoU, per-class IoU/acc.

    Per-class accuracy is NaN where the class never occurs in the truth; IoU is NaN where the class
    occurs in neither truth nor prediction. Means skip NaNs.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    gt = confusion.sum(1)
    pred = confusion.sum(0)
    total = confusion.sum()
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=confusion.device)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    freq = gt / total.clamp(min=1)
    present = union > 0
    return {
        "pixAcc": tp.sum() / total.clamp(min=1),
        "mAcc": _nanmean(acc),
        "mIoU": _nanmean(iou),
        "fwIoU": (freq[present] * iou[present]).sum(),
        "IoU": iou,
        "Acc": acc,
    }


MEAN_SCORES = ("mIoU", "pixAcc", "mAcc", "fwIoU")


def flat_scores(scores: dict[str, torch.Tensor], class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """``scores_from_confusion``'s scores under the names training logs and eval reports: ``<prefix>/mIoU``,
    ``<prefix>/pixAcc``, ``<prefix>/mAcc``, ``<prefix>/fwIoU`` and ``<prefix>/IoU/<class>``."""
    out = {f"{prefix}/{k}": float(scores[k]) for k in MEAN_SCORES}
    for name, value in zip(class_names, scores["IoU"].tolist(), strict=True):
        out[f"{prefix}/IoU/{name}"] = value
    return out


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    valid = ~torch.isnan(x)
    return x[valid].mean() if valid.any() else torch.zeros((), dtype=x.dtype, device=x.device)


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Accumulates the confusion matrix of argmaxed predictions. ``compute()`` returns it, as its parent does;
    ``scores()`` turns it into the score dict (``scores_from_confusion``)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        # validate_args=False is several times faster; inputs are already class indices.
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: B x H x W class indices (or B x K x H x W scores, argmaxed here); ``target``: B x H x W."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        super().update(preds, target)

    def scores(self) -> dict[str, torch.Tensor]:
        """pixAcc, mAcc, mIoU, fwIoU and per-class IoU/Acc of the accumulated (process-summed) matrix."""
        return scores_from_confusion(self.compute())

    def named_scalars(self, prefix: str) -> dict[str, float]:
        """Flat ``{prefix/mIoU: ..., prefix/IoU/<class>: ...}`` of the accumulated state (``flat_scores``), for
        loggers."""
        return flat_scores(self.scores(), self.class_names, prefix)
