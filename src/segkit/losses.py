"""Segmentation losses. Each takes logits B x K x H x W and targets B x H x W and honours ``ignore_index``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError

if TYPE_CHECKING:
    from segkit.data.datamodule import SegmentationDataModule


def build_loss(loss_cfg: Any, datamodule: SegmentationDataModule) -> nn.Module:
    """The ``loss`` config as a module for the data: ``ignore_index`` from its label table, and
    ``class_weights: enet | median_freq`` or ``{method: enet, c: 1.1}`` (on the loss, or on a term of a weighted sum
    under ``losses:``) replaced by the weights counted over its train split (cached, see ``segkit.data.class_weights``). The run's config keeps
    the name; only the copy instantiated here holds the numbers."""
    import hydra
    from omegaconf import DictConfig, ListConfig

    from segkit.data.class_weights import METHODS, class_weights

    loss_cfg = loss_cfg.copy()
    terms = loss_cfg.get("losses")
    named = (
        terms.items() if isinstance(terms, DictConfig) else enumerate(terms) if isinstance(terms, ListConfig) else []
    )
    for key, node in [("loss", loss_cfg), *((f"loss.losses.{key}", term) for key, term in named)]:
        name = node.get("class_weights") if isinstance(node, DictConfig) else None
        params: dict[str, Any] = {}
        if isinstance(name, DictConfig):
            params = {k: v for k, v in name.items() if k != "method"}
            if set(params) - {"c"}:
                raise SegkitError(
                    f"{key}.class_weights has keys {sorted(params)}; a mapping takes method (and c for enet)"
                )
            name = name.get("method")
            if not isinstance(name, str):
                raise SegkitError(f"{key}.class_weights needs a method ({list(METHODS)})")
        if isinstance(name, str):
            if name not in METHODS:
                raise SegkitError(
                    f"{key}.class_weights={name!r}; use one of {list(METHODS)}, a list of floats, or null"
                )
            node.class_weights = class_weights(datamodule, name, **params)
    return hydra.utils.instantiate(loss_cfg, ignore_index=datamodule.ignore_index)


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with optional class weights (a list of K floats) and label smoothing."""

    def __init__(
        self, ignore_index: int = 255, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        if class_weights is not None and isinstance(class_weights, str):
            raise SegkitError(
                f"loss.class_weights={class_weights!r}: names (enet, median_freq) are resolved from the train split by "
                f"segkit.losses.build_loss; building the loss directly, pass segkit.data.class_weights' list"
            )
        weight = _float_buffer(class_weights)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise SegkitError(
                f"loss.class_weights has {self.weight.numel()} entries but the model predicts {logits.shape[1]} classes"
            )
        return F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


def _valid_pixels(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits N x K and targets N of the pixels whose target is not ``ignore_index`` (checked to be class ids)."""
    num_classes = logits.shape[1]
    flat = logits.movedim(1, -1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    keep = labels != ignore_index
    labels = labels[keep]
    _check_targets(labels, num_classes, name)
    return flat[keep], labels


def _float_buffer(values: Sequence[float] | None) -> torch.Tensor | None:
    return torch.as_tensor(list(values), dtype=torch.float32) if values is not None else None


def _check_targets(labels: torch.Tensor, num_classes: int, name: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise SegkitError(
            f"loss {name} got target ids outside 0..{num_classes - 1} that are not the ignore index; "
            "check the label table (data.labels) and model num_classes"
        )


class BCEWithLogitsLoss(nn.Module):
    """Per-class binary cross-entropy on one-hot targets: each class is its own sigmoid, as in recipes trained
    with ``BCEWithLogits``; ignore pixels drop out of the mean over (valid pixels x classes)."""

    def __init__(self, ignore_index: int = 255, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        weight = _float_buffer(pos_weight)
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat, labels = _valid_pixels(logits, target, self.ignore_index, "bce")
        if labels.numel() == 0:  # every pixel ignored: a zero that keeps the graph
            return logits.sum() * 0.0
        one_hot = F.one_hot(labels, flat.shape[1]).to(flat.dtype)
        return F.binary_cross_entropy_with_logits(flat, one_hot, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``-alpha_t (1 - p_t)^gamma log p_t`` averaged over valid pixels.
    Down-weights the many easy pixels so rare, hard classes drive the gradient."""

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0, alpha: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma
        self.register_buffer("alpha", _float_buffer(alpha), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat, labels = _valid_pixels(logits, target, self.ignore_index, "focal")
        if not len(labels):
            return logits.sum() * 0.0
        log_pt = F.log_softmax(flat.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
        loss = -((1.0 - log_pt.exp()) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * self.alpha[labels]
        return loss.mean()


class DiceLoss(nn.Module):
    """Soft Dice: ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` per class over the batch, averaged over the
    classes present in the batch's target. Scores overlap directly, so small classes count as much as large ones.

    Classes absent from the target add no loss by default (as in segmentation_models_pytorch's DiceLoss): with
    ``present_only=False`` each absent class adds up to ``1/K`` for any probability it receives, which on
    ADE20K's 150 classes swamps the few classes an image holds.

    Args:
        smooth: the ``s`` above; keeps the ratio defined for classes absent from batch and prediction.
        present_only: average only over classes that occur in the target (the default); ``False`` averages
            over all K classes.
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0, present_only: bool = True) -> None:
        super().__init__()
        self.ignore_index, self.smooth, self.present_only = ignore_index, smooth, present_only

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # on B x K x H x W directly (no one-hot, no gather of valid pixels): ~3x faster than the flat form
        num_classes = logits.shape[1]
        valid = target != self.ignore_index
        labels = target[valid]
        if labels.numel() == 0:
            return logits.sum() * 0.0
        _check_targets(labels, num_classes, "dice")
        probs = F.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
        index = torch.where(valid, target, 0).unsqueeze(1)
        p_true = probs.gather(1, index).flatten()  # 0 at ignored pixels
        intersection = p_true.new_zeros(num_classes).scatter_add(0, index.flatten(), p_true)
        counts = torch.bincount(labels, minlength=num_classes).to(probs.dtype)
        cardinality = probs.sum((0, 2, 3)) + counts
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth)
        if self.present_only:
            dice = dice[counts > 0]
        return 1.0 - dice.mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al., 2018): a convex surrogate of the per-class Jaccard loss, so training
    optimises (a bound on) mIoU directly.

    Args:
        classes: ``present`` averages over classes present in the target, ``all`` over every class.
        per_image: ``False`` computes one loss over all valid pixels of the batch (a bound on the dataset's IoU);
            ``True`` computes it for each image and averages the images, as ``per_image=True`` in the authors'
            reference ``lovasz_softmax`` (a bound on the mean of per-image IoUs, which weighs small images'
            objects more). Images with no valid pixel are left out of that mean.
    """

    def __init__(self, ignore_index: int = 255, classes: str = "present", per_image: bool = False) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise SegkitError(f"loss.classes={classes!r}; choose 'present' or 'all'")
        self.ignore_index, self.classes, self.per_image = ignore_index, classes, per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = zip(logits.split(1), target.split(1)) if self.per_image else [(logits, target)]
        losses = [self._flat_loss(*_valid_pixels(lg, tg, self.ignore_index, "lovasz")) for lg, tg in parts]
        losses = [loss for loss in losses if loss is not None]
        return torch.stack(losses).mean() if losses else logits.sum() * 0.0

    def _flat_loss(self, flat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The loss over N pixels (logits N x K, labels N); ``None`` when no class counts (no valid pixel)."""
        if labels.numel() == 0:
            return None
        probs = F.softmax(flat.float(), dim=1)
        losses = []
        for c in range(probs.shape[1]):
            fg = (labels == c).to(probs.dtype)
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors = (fg - probs[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
        return torch.stack(losses).mean() if losses else None


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


class OhemCrossEntropyLoss(nn.Module):
    """Online hard example mining cross-entropy: average only over pixels whose true-class probability is
    below ``thresh``, but over at least the ``min_kept`` hardest ones, so easy road/sky pixels stop dominating.

    Args:
        thresh: keep pixels with ``p_true < thresh``.
        min_kept: if fewer are below it, raise the threshold to the ``min_kept``-th smallest probability
            (all valid pixels when there are fewer).
        per_image: ``True`` (the default) counts ``min_kept`` per image, as mmsegmentation's ``min_kept`` is
            meant (its configs give a per-image number and scale it by the batch size): each image keeps at least
            its own ``min_kept`` hardest pixels, so a batch of easy images beside one hard image still trains on
            all of them. ``False`` counts it over the whole batch, as the HRNet/OCR reference OHEM does.
        class_weights: per-class weights of the cross-entropy (the mean over kept pixels is not renormalised).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        class_weights: Sequence[float] | None = None,
        per_image: bool = True,
    ) -> None:
        super().__init__()
        self.ignore_index, self.thresh, self.min_kept, self.per_image = ignore_index, thresh, int(min_kept), per_image
        weight = _float_buffer(class_weights)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = self.hard_pixels(logits, target)  # checks the target ids first
        if not keep.any():
            return logits.sum() * 0.0
        labels = torch.where(keep, target, 0)
        pixel_loss = F.cross_entropy(logits, labels, weight=self.weight, reduction="none")
        return pixel_loss[keep].mean()

    @torch.no_grad()
    def hard_pixels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """B x H x W mask of the pixels the loss averages over."""
        valid = target != self.ignore_index
        _check_targets(target[valid], logits.shape[1], "ohem")
        labels = torch.where(valid, target, 0)
        prob = F.softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        keep = torch.zeros_like(valid)
        for part in range(len(target)) if self.per_image else [slice(None)]:
            keep[part] = valid[part] & self._hard(prob[part], prob[part][valid[part]])
        return keep

    def _hard(self, prob: torch.Tensor, valid_prob: torch.Tensor) -> torch.Tensor:
        """Which of ``prob`` count as hard, the threshold raised so at least ``min_kept`` of ``valid_prob`` do."""
        if self.min_kept <= 0:
            return prob < self.thresh
        if valid_prob.numel() == 0:
            return torch.zeros_like(prob, dtype=torch.bool)
        kth = valid_prob.kthvalue(min(self.min_kept, valid_prob.numel())).values
        return prob <= torch.clamp(kth, min=self.thresh)


class WeightedSumLoss(nn.Module):
    """``sum_i w_i * loss_i``: e.g. cross-entropy + Dice. ``losses`` are either built losses or factories
    (Hydra ``_partial_``) that get ``ignore_index`` here, so one ``ignore_index`` reaches every term.

    Args:
        losses: name -> loss (a dict, so ``loss.weights.dice=0.5`` overrides one term) or a list.
        weights: name -> weight (dict) or a list in the order of ``losses``; missing weights are 1.
    """

    def __init__(
        self,
        losses: Mapping[str, nn.Module | Callable[..., nn.Module]] | Sequence[nn.Module | Callable[..., nn.Module]],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        named = dict(losses.items()) if isinstance(losses, Mapping) else {str(i): v for i, v in enumerate(losses)}
        if not named:
            raise SegkitError("loss.losses is empty; list at least one loss")
        if weights is None:
            weights = {}
        elif not isinstance(weights, Mapping):
            weights = list(weights)
            if len(weights) != len(named):
                raise SegkitError(f"loss.weights has {len(weights)} entries for {len(named)} losses")
            weights = dict(zip(named, weights, strict=True))
        unknown = set(weights) - set(named)
        if unknown:
            raise SegkitError(f"loss.weights names {sorted(unknown)}, which are not in loss.losses {sorted(named)}")
        self.losses = nn.ModuleDict(
            {
                name: term if isinstance(term, nn.Module) else term(ignore_index=ignore_index)
                for name, term in named.items()
            }
        )
        self.weights = {name: float(weights.get(name, 1.0)) for name in named}
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
