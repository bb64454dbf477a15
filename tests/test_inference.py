"""Inference modes agree with whole-image inference where they must, and cover every pixel otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from segkit.data.input_spec import InputSpec
from segkit.data.labels import load_table
from segkit.inference import MultiScale, Resized, SlidingWindow, WholeImage, mode_for, predict_probs, window_starts
from segkit.models.nets.unet import UNet
from segkit.visualize import colorize, confusion_figure, draw_legend, normalize_confusion, overlay
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(num_classes=5, in_channels=3, base_width=4, depth=2).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 37, 53)


def test_window_starts_cover_the_image_and_end_at_the_border():
    assert window_starts(10, 20, 5) == [0]
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]


def test_sliding_window_covering_the_image_equals_whole(net, images):
    whole = predict_probs(net, images, WholeImage())
    for crop in ([37, 53], [64, 64], 200):
        slide = predict_probs(net, images, SlidingWindow(crop=crop, stride=16, batch_size=3))
        torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


def test_sliding_window_overlaps_average_to_probabilities(net, images):
    probs = predict_probs(net, images, SlidingWindow(crop=[16, 24], stride=[10, 15], batch_size=5))
    assert probs.shape == (2, 5, 37, 53)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53), rtol=0, atol=1e-5)
    whole = predict_probs(net, images, WholeImage())
    assert not torch.allclose(probs, whole, atol=1e-4)  # windows really are smaller than the image


def test_sliding_window_batching_does_not_change_the_result(net, images):
    one = predict_probs(net, images, SlidingWindow(crop=16, stride=12, batch_size=1))
    many = predict_probs(net, images, SlidingWindow(crop=16, stride=12, batch_size=64))
    torch.testing.assert_close(one, many, rtol=0, atol=1e-6)


def test_multiscale_at_scale_one_without_flip_equals_base(net, images):
    whole = predict_probs(net, images, WholeImage())
    torch.testing.assert_close(predict_probs(net, images, MultiScale(scales=[1.0], flip=False)), whole, rtol=0, atol=0)
    slide = SlidingWindow(crop=20, stride=10)
    torch.testing.assert_close(
        predict_probs(net, images, MultiScale([1.0], flip=False, base=slide)),
        predict_probs(net, images, slide),
        rtol=0,
        atol=0,
    )


def test_flip_tta_averages_the_mirrored_prediction(net, images):
    whole = predict_probs(net, images, WholeImage())
    mirrored = predict_probs(net, images.flip(-1), WholeImage()).flip(-1)
    flip = predict_probs(net, images, MultiScale(scales=[1.0], flip=True))
    torch.testing.assert_close(flip, (whole + mirrored) / 2, rtol=0, atol=1e-6)


def test_multiscale_and_resize_return_input_size(net, images):
    for mode in (MultiScale(scales=[0.5, 1.75], flip=True), Resized(size=[32, 32])):
        probs = predict_probs(net, images, mode)
        assert probs.shape == (2, 5, 37, 53)
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["whole", "resize", "slide", "tta", "tta_slide"])
def test_every_inference_config_instantiates_and_runs(name, net):
    """Through ``mode_for`` as eval and predict build it: ``resize`` takes the net's eval size from its spec."""
    cfg = compose_config("eval", [f"inference={name}"])
    spec = InputSpec.from_config({"eval_size": [16, 20]}, load_table("synthetic"), 3)
    mode = mode_for(spec, instantiate(cfg.inference))
    probs = predict_probs(net, torch.randn(1, 3, 24, 40), mode)
    assert probs.shape == (1, 5, 24, 40)
    if name == "resize":
        assert repr(mode) == "Resized(size=(16, 20))"


def test_visualize_helpers():
    ids = np.array([[0, 1], [2, 255]])
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    rgb = colorize(ids, colors)
    assert rgb.dtype == np.uint8 and rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 1].tolist() == [0, 0, 0]
    image = np.full((2, 2, 3), 100, np.uint8)
    assert overlay(image, rgb, alpha=0.0).tolist() == image.tolist()
    assert overlay(image, rgb, alpha=1.0).tolist() == rgb.tolist()
    big = np.zeros((120, 200, 3), np.uint8)
    legend = draw_legend(big, ["road", "car", "sky"], colors, classes=[0, 2])
    assert legend.shape == big.shape and legend[:40, :40].any() and not big.any()
    norm = normalize_confusion(np.array([[3, 1], [0, 0]]))
    assert norm.tolist() == [[0.75, 0.25], [0.0, 0.0]]
    fig = confusion_figure(np.array([[3, 1], [2, 5]]), ["a", "b"])
    assert fig.axes
