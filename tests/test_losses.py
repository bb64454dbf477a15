"""Each loss against values worked out by hand on a few pixels, and ignore pixels leaving the result unchanged."""

from __future__ import annotations

import math

import hydra
import pytest
import torch
import torch.nn.functional as F

from segkit import SegkitError
from segkit.losses import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    WeightedSumLoss,
)
from tests.conftest import CONF_DIR, compose_config

IGNORE = 255


def two_class_pixels(probs_of_class1: list[float], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1 x 2 x 1 x N logits whose softmax gives class 1 the probabilities listed (class 0 the rest)."""
    p = torch.tensor(probs_of_class1, dtype=torch.float64)  # exact logits, then float32 like a net
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None, :, None, :].float()
    return logits, torch.tensor(labels)[None, None, :]


def with_ignored_pixel(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pixels plus one confidently wrong pixel marked ignore: must not change any loss."""
    extra = torch.tensor([[50.0], [-50.0]], dtype=logits.dtype)[None, :, None, :]
    return torch.cat([logits, extra], dim=3), torch.cat([target, torch.tensor([[[IGNORE]]])], dim=2)


LOGITS, TARGET = two_class_pixels([0.8, 0.4, 0.1], [1, 1, 0])  # p_true = 0.8, 0.4, 0.9


def test_cross_entropy_weights_and_smoothing():
    expected = -(math.log(0.8) + math.log(0.4) + math.log(0.9)) / 3
    assert CrossEntropyLoss()(LOGITS, TARGET).item() == pytest.approx(expected)
    weighted = -(2 * math.log(0.8) + 2 * math.log(0.4) + 1 * math.log(0.9)) / (2 + 2 + 1)
    assert CrossEntropyLoss(class_weights=[1.0, 2.0])(*with_ignored_pixel(LOGITS, TARGET)).item() == pytest.approx(
        weighted
    )
    # smoothing 0.2 over 2 classes: target distribution (0.9, 0.1)
    smooth = -sum(0.9 * math.log(pt) + 0.1 * math.log(1 - pt) for pt in (0.8, 0.4, 0.9)) / 3
    assert CrossEntropyLoss(label_smoothing=0.2)(LOGITS, TARGET).item() == pytest.approx(smooth)


def test_bce_on_one_hot_targets():
    # per pixel, sigmoid outputs are the raw logits (0 and logit(p)) against one-hot targets
    sig = torch.sigmoid(LOGITS[0, :, 0, :]).T.tolist()  # pixel -> (s0, s1)
    one_hot = [(0, 1), (0, 1), (1, 0)]
    terms = [
        -(t * math.log(s) + (1 - t) * math.log(1 - s))
        for (s0, s1), (t0, t1) in zip(sig, one_hot, strict=True)
        for s, t in ((s0, t0), (s1, t1))
    ]
    expected = sum(terms) / 6
    assert BCEWithLogitsLoss()(*with_ignored_pixel(LOGITS, TARGET)).item() == pytest.approx(expected)


def test_focal():
    expected = -sum((1 - pt) ** 2 * math.log(pt) for pt in (0.8, 0.4, 0.9)) / 3
    assert FocalLoss(gamma=2.0)(*with_ignored_pixel(LOGITS, TARGET)).item() == pytest.approx(expected)
    ce = CrossEntropyLoss()(LOGITS, TARGET).item()
    assert FocalLoss(gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(ce)
    alpha = -(0.75 * 0.04 * math.log(0.8) + 0.75 * 0.36 * math.log(0.4) + 0.25 * 0.01 * math.log(0.9)) / 3
    assert FocalLoss(alpha=[0.25, 0.75])(LOGITS, TARGET).item() == pytest.approx(alpha)


def test_dice():
    # class 1: p = (0.8, 0.4, 0.1), g = (1, 1, 0); class 0: p = (0.2, 0.6, 0.9), g = (0, 0, 1)
    dice1 = (2 * 1.2 + 1) / (1.3 + 2 + 1)
    dice0 = (2 * 0.9 + 1) / (1.7 + 1 + 1)
    loss = DiceLoss(smooth=1.0)(*with_ignored_pixel(LOGITS, TARGET))
    assert loss.item() == pytest.approx(1 - (dice0 + dice1) / 2)
    three_classes = torch.cat([LOGITS, torch.full_like(LOGITS[:, :1], -30.0)], dim=1)  # class 2 absent, p ~ 0
    only_present = DiceLoss(smooth=1.0, present_only=True)(three_classes, TARGET)
    assert only_present.item() == pytest.approx(1 - (dice0 + dice1) / 2, abs=1e-6)


def test_dice_absent_classes_add_no_loss_by_default():
    """K=150 with 2 classes present (ADE20K-like): the default scores the 2 present classes only; averaging
    over all 150 would let the 148 absent ones decide the loss."""
    torch.manual_seed(0)
    logits = torch.randn(2, 150, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8)) * 7  # classes 0 and 7
    probs = logits.softmax(1)
    by_hand = []
    for c in (0, 7):
        g = (target == c).float()
        by_hand.append((2 * (probs[:, c] * g).sum() + 1) / (probs[:, c].sum() + g.sum() + 1))
    expected = 1 - torch.stack(by_hand).mean()
    assert DiceLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert DiceLoss(present_only=False)(logits, target).item() != pytest.approx(expected.item(), rel=1e-2)
    for choice in ("dice", "ce_dice"):
        loss = hydra.utils.instantiate(compose_config("train", [f"loss={choice}"]).loss, ignore_index=255)
        dice = loss if isinstance(loss, DiceLoss) else next(m for m in loss.modules() if isinstance(m, DiceLoss))
        assert dice.present_only, choice


def test_lovasz_softmax():
    # class 1: errors |g - p| = (0.2, 0.6, 0.1); sorted 0.6 (fg), 0.2 (fg), 0.1 (bg)
    # Jaccard after each prefix: 1 - (2-1)/(2+0) = 0.5, 1 - 0/2 = 1, 1 - 0/3 = 1 -> gradient (0.5, 0.5, 0)
    loss1 = 0.6 * 0.5 + 0.2 * 0.5 + 0.1 * 0.0
    # class 0: errors (0.2, 0.6, 0.1) with g = (0, 0, 1); sorted 0.6 (bg), 0.2 (bg), 0.1 (fg)
    # Jaccard: 1 - 1/2 = 0.5, 1 - 1/3 = 2/3, 1 - 0/3 = 1 -> gradient (0.5, 1/6, 1/3)
    loss0 = 0.6 * 0.5 + 0.2 / 6 + 0.1 / 3
    loss = LovaszSoftmaxLoss()(*with_ignored_pixel(LOGITS, TARGET))
    assert loss.item() == pytest.approx((loss0 + loss1) / 2)
    perfect = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert LovaszSoftmaxLoss()(perfect, torch.tensor([[[0, 1]]])).item() == pytest.approx(0.0, abs=1e-6)


def test_ohem_keeps_hard_pixels():
    # p_true = 0.8, 0.4, 0.9: threshold 0.7 keeps only the 0.4 pixel
    only_hard = OhemCrossEntropyLoss(thresh=0.7, min_kept=1)(*with_ignored_pixel(LOGITS, TARGET))
    assert only_hard.item() == pytest.approx(-math.log(0.4))
    # min_kept 2 raises the threshold to the 2nd smallest probability (0.8)
    two = OhemCrossEntropyLoss(thresh=0.7, min_kept=2)(LOGITS, TARGET)
    assert two.item() == pytest.approx(-(math.log(0.4) + math.log(0.8)) / 2)
    # fewer valid pixels than min_kept: all of them count, as plain cross-entropy
    everything = OhemCrossEntropyLoss(thresh=0.7, min_kept=1000)(LOGITS, TARGET)
    assert everything.item() == pytest.approx(CrossEntropyLoss()(LOGITS, TARGET).item())


def test_weighted_sum_dict_and_list_forms():
    ce, dice = CrossEntropyLoss()(LOGITS, TARGET).item(), DiceLoss()(LOGITS, TARGET).item()
    summed = WeightedSumLoss({"ce": CrossEntropyLoss, "dice": DiceLoss}, {"dice": 0.5}, ignore_index=IGNORE)
    assert summed(*with_ignored_pixel(LOGITS, TARGET)).item() == pytest.approx(ce + 0.5 * dice)
    assert all(term.ignore_index == IGNORE for term in summed.losses.values())
    listed = WeightedSumLoss([CrossEntropyLoss, DiceLoss], [2.0, 1.0], ignore_index=IGNORE)
    assert listed(LOGITS, TARGET).item() == pytest.approx(2 * ce + dice)
    with pytest.raises(SegkitError, match="not in loss.losses"):
        WeightedSumLoss({"ce": CrossEntropyLoss}, {"dcie": 1.0})


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml")))
def test_every_loss_config_ignores_and_backpropagates(choice, tmp_path):
    cfg = compose_config("train", [f"loss={choice}"], output_dir=tmp_path)
    loss = hydra.utils.instantiate(cfg.loss, ignore_index=IGNORE)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6))
    target[:, :2] = IGNORE
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    assert logits.grad[:, :, :2].abs().max() == 0  # ignore pixels get no gradient
    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn(2, 3, 2, 6) * 10
    assert loss(changed, target).item() == pytest.approx(value.item(), rel=1e-5)


def test_out_of_range_target_is_a_clear_error():
    with pytest.raises(SegkitError, match="outside 0..1"):
        DiceLoss()(LOGITS, torch.tensor([[[1, 2, 0]]]))


def test_lovasz_per_image_is_the_mean_of_the_images_one_by_one():
    """``per_image=True`` as in Berman et al.'s reference: the loss of each image alone, averaged over the images
    (one with only ignore pixels left out); the batch form pools the pixels first and gives another number."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 6)
    target = torch.randint(0, 3, (4, 5, 6))
    target[0, :2] = IGNORE
    target[1] = torch.where(target[1] == 2, 0, target[1])  # class 2 absent from image 1: "present" skips it there
    target[3] = IGNORE
    for classes in ("present", "all"):
        per_image = LovaszSoftmaxLoss(classes=classes, per_image=True)(logits, target)
        one_by_one = [LovaszSoftmaxLoss(classes=classes)(logits[b : b + 1], target[b : b + 1]) for b in range(3)]
        assert per_image.item() == pytest.approx(torch.stack(one_by_one).mean().item(), rel=1e-6)
        assert per_image.item() != pytest.approx(LovaszSoftmaxLoss(classes=classes)(logits, target).item(), rel=1e-3)
    only_ignore = torch.full((2, 5, 6), IGNORE)
    assert LovaszSoftmaxLoss(per_image=True)(logits[:2], only_ignore).item() == 0.0
    cfg = compose_config("train", ["loss=lovasz", "loss.per_image=true"])
    assert hydra.utils.instantiate(cfg.loss, ignore_index=IGNORE).per_image


def two_images(p_true: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """B x 2 x 1 x N logits whose softmax gives the true class (1) of every pixel the probabilities listed."""
    logits, target = zip(*(two_class_pixels(p, [1] * len(p)) for p in p_true), strict=True)
    return torch.cat(logits), torch.cat(target)


def test_ohem_min_kept_per_image():
    """An easy image beside a hard one: counted over the batch, the hard image's pixels satisfy min_kept and the
    easy image drops out; counted per image (mmseg's meaning, the default), each keeps its min_kept hardest."""
    easy, hard = [0.99, 0.98, 0.97, 0.96, 0.95], [0.1, 0.2, 0.3, 0.4, 0.5]
    logits, target = two_images([easy, hard])
    per_image = OhemCrossEntropyLoss(thresh=0.7, min_kept=2)
    assert per_image.per_image
    kept = [0.96, 0.95, *hard]  # image 0: its 2 hardest; image 1: all 5 below the threshold
    assert per_image(logits, target).item() == pytest.approx(-sum(map(math.log, kept)) / len(kept), rel=1e-5)
    per_batch = OhemCrossEntropyLoss(thresh=0.7, min_kept=2, per_image=False)
    assert per_batch(logits, target).item() == pytest.approx(-sum(map(math.log, hard)) / len(hard), rel=1e-5)
    assert per_batch.hard_pixels(logits, target).sum((1, 2)).tolist() == [0, 5]


def test_ohem_keeps_at_least_min_kept_pixels_of_each_image():
    """Mostly easy images (3 pixels below thresh in images 0 and 3): per image each keeps its 20 hardest (all 8
    valid ones of image 1, none of the all-ignore image 2); over the batch only 20 in all."""
    torch.manual_seed(0)
    target = torch.randint(0, 3, (4, 8, 8))
    logits = torch.randn(4, 3, 8, 8) + 4 * F.one_hot(target, 3).permute(0, 3, 1, 2)
    target[1, :7] = IGNORE
    target[2] = IGNORE
    loss = OhemCrossEntropyLoss(ignore_index=IGNORE, thresh=0.7, min_kept=20)
    kept = loss.hard_pixels(logits, target)
    assert not kept[target == IGNORE].any()
    counts = kept.sum((1, 2)).tolist()
    assert counts[0] >= 20 and counts[1:3] == [8, 0] and counts[3] >= 20
    assert OhemCrossEntropyLoss(ignore_index=IGNORE, thresh=0.7, min_kept=0).hard_pixels(logits, target).sum() < 20
    batch_kept = OhemCrossEntropyLoss(ignore_index=IGNORE, thresh=0.7, min_kept=20, per_image=False)
    counts = batch_kept.hard_pixels(logits, target).sum((1, 2)).tolist()
    assert sum(counts) >= 20 and min(counts[0], counts[3]) < 20
    cfg = compose_config("train", ["loss=ohem"])
    assert hydra.utils.instantiate(cfg.loss, ignore_index=IGNORE).per_image  # the config keeps mmseg's meaning
