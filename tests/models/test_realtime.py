"""Real-time nets - BiSeNetV2 and ICNet: their auxiliary outputs (booster heads, cascade label guidance), parameter
counts against the papers, and learning on a fixed batch (ICNet on ResNet-18: the cascade is the same)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from segkit.models.nets.bisenetv2 import BiSeNetV2
from segkit.models.nets.icnet import ICNet
from tests.models.net_checks import QUICK_LEARNING, check_learns, check_output_shapes, count_params

ICNET_AUX = {"aux_sub4": 0.4, "aux_sub24": 0.4}
BISENET_AUX = {"aux2": 1.0, "aux3": 1.0, "aux4": 1.0, "aux5": 1.0}

# The nets without their auxiliary heads (no config selects these); the configs' nets are in the contract test.
VARIANTS = {
    "icnet_no_aux": partial(ICNet, backbone="resnet18", aux_heads=False),
    "bisenetv2_no_aux": partial(BiSeNetV2, aux_heads=False),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_output_shapes(name):
    check_output_shapes(VARIANTS[name])


@pytest.mark.parametrize("name", ["icnet", "bisenetv2"])
def test_aux_outputs_in_train_mode_only(name):
    make, names = {"icnet": (partial(ICNet, backbone="resnet18"), ICNET_AUX), "bisenetv2": (BiSeNetV2, BISENET_AUX)}[
        name
    ]
    net = make(num_classes=3)
    x = torch.randn(2, 3, 45, 70)
    out = net.train()(x)
    assert set(out) == {"out", *names}
    assert out["out"].shape == (2, 3, 45, 70)
    # BiSeNetV2's boosters are scored at full size; ICNet's cascade guidance at the branches' own 1/16 and 1/8
    sizes = {"icnet": {"aux_sub4": (3, 5), "aux_sub24": (6, 9)}}.get(name, {})
    assert all(v.shape == (2, 3, *sizes.get(k, (45, 70))) for k, v in out.items())
    with torch.no_grad():
        assert isinstance(net.eval()(x), torch.Tensor)


def test_icnet_learns():
    torch.manual_seed(0)
    check_learns(ICNet(num_classes=4, backbone="resnet18"), lr=1e-3, aux_weights=ICNET_AUX, **QUICK_LEARNING)


def test_bisenetv2_learns():
    torch.manual_seed(0)
    check_learns(BiSeNetV2(num_classes=4), lr=1e-3, aux_weights=BISENET_AUX, **QUICK_LEARNING)


def test_bisenetv2_params_match_published():
    """BiSeNetV2 has 3.4M parameters at inference (Yu et al., IJCV 2021): counted at 19 (Cityscapes) classes
    without the booster heads, which are dropped after training."""
    with torch.device("meta"):
        assert count_params(BiSeNetV2(num_classes=19, aux_heads=False)) == pytest.approx(3.4e6, rel=0.05)
        assert count_params(BiSeNetV2(num_classes=21)) == 3_649_017


def test_icnet_params_pinned():
    """No published figure for this build (ICNet's paper prunes its ResNet-50): pinned at 21 classes."""
    with torch.device("meta"):
        assert count_params(ICNet(num_classes=21)) == 24_589_535
