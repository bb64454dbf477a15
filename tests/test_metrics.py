import math

import pytest
import torch

from segkit.metrics import SegmentationMetrics, scores_from_confusion


def test_scores_from_hand_computed_confusion():
    # rows = truth, cols = prediction
    conf = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = scores_from_confusion(conf)
    assert s["pixAcc"].item() == pytest.approx(7 / 10)
    # class accuracy: 3/4, 4/6; class 2 absent from truth -> excluded
    assert s["mAcc"].item() == pytest.approx((3 / 4 + 4 / 6) / 2)
    # IoU: 3/(4+5-3)=0.5, 4/(6+5-4)=4/7; class 2 absent from both -> NaN, excluded from the mean
    assert s["IoU"][0].item() == pytest.approx(0.5)
    assert s["IoU"][1].item() == pytest.approx(4 / 7)
    assert math.isnan(s["IoU"][2].item())
    assert s["mIoU"].item() == pytest.approx((0.5 + 4 / 7) / 2)
    assert s["fwIoU"].item() == pytest.approx(0.4 * 0.5 + 0.6 * 4 / 7)


def test_class_predicted_but_absent_from_truth_counts_as_zero_iou():
    conf = torch.tensor([[2, 2], [0, 0]])  # class 1 never true, predicted twice
    s = scores_from_confusion(conf)
    assert s["IoU"].tolist() == pytest.approx([0.5, 0.0])
    assert s["mIoU"].item() == pytest.approx(0.25)
    assert s["mAcc"].item() == pytest.approx(0.5)  # only class 0 has truth


def test_metric_ignores_void_pixels_and_accumulates_over_batches():
    m = SegmentationMetrics(num_classes=3, ignore_index=255, class_names=["a", "b", "c"])
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])  # the last pixel is void: its wrong prediction must not count
    m.update(pred, target)
    m.update(torch.tensor([[[2, 2]]]), torch.tensor([[[2, 1]]]))
    s = m.scores()
    # truth 0: [1,1,0]; truth 1: [0,1,1]; truth 2: [0,0,1]
    assert s["pixAcc"].item() == pytest.approx(3 / 5)
    assert s["IoU"].tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert m.compute().tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]  # compute() is the parent's: the matrix
    named = m.named_scalars("val")
    assert named["val/mIoU"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert named["val/IoU/b"] == pytest.approx(1 / 3)


def test_metric_accepts_logits_and_resets():
    m = SegmentationMetrics(num_classes=2)
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 5.0
    m.update(logits, torch.tensor([[[0, 1]]]))
    assert m.scores()["mIoU"].item() == pytest.approx(1.0)
    m.reset()
    m.update(torch.tensor([[[1, 0]]]), torch.tensor([[[0, 1]]]))
    assert m.scores()["mIoU"].item() == pytest.approx(0.0)
