"""UPerNet: its parameter counts against mmsegmentation's layout and the published models, the
segmentation_models_pytorch layout, output shapes on every kind of trunk, the auxiliary head, learning on a fixed
batch and ONNX export with dynamic sizes.

Shapes, learning and export run on ResNet-18 with a narrow head (the head code is the same at any width); the
configs' own trunks and widths are built and run in test_model_contract.py.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from segkit.models.nets.upernet import UPerNet, _bin_averages
from tests.models.net_checks import (
    QUICK_LEARNING,
    check_learns,
    check_output_shapes,
    config_maker,
    count_params,
    on_meta,
)

# Parameters at 150 classes (ADE20K), auxiliary head included, measured; a change here should be deliberate.
PARAMS_150 = {
    "upernet_resnet50": 66_496_876,
    "upernet_convnext_tiny": 60_239_756,
    "upernet_swin_tiny": 59_941_862,
}
# mmsegmentation's UPerNet R50 (ResNetV1c: its deep stem has 19,232 more parameters than torchvision's): 66.5M;
# UPerNet Swin-T 60M (Liu et al., 2021, Table 3); UPerNet ConvNeXt-T 60M (Liu et al., 2022, Table 3). segkit's
# ConvNeXt trunk returns its stages without mmsegmentation's four extra LayerNorms (2 * (96 + 192 + 384 + 768) =
# 2,880 parameters fewer); its Swin trunk has them, as mmsegmentation's. Drop-path rates have no parameters.
PUBLISHED = {"upernet_resnet50": 66.5e6, "upernet_convnext_tiny": 60e6, "upernet_swin_tiny": 60e6}
RESNET50_TRUNK = 23_508_032


@pytest.mark.parametrize("name", PARAMS_150)
def test_param_count_pinned(name):
    assert count_params(on_meta(config_maker(name), num_classes=150, in_channels=3)) == PARAMS_150[name]
    assert abs(PARAMS_150[name] / PUBLISHED[name] - 1) < 0.01


def test_head_is_mmsegmentation_uperhead():
    """The count by hand, layer by layer, of mmsegmentation's UPerHead (512 channels) and its FCN auxiliary head
    (256 channels) on ResNet-50's maps: every conv bias-free with a BatchNorm (2 * C) behind it, the classifiers
    with a bias."""
    widths, c, k, a = (256, 512, 1024, 2048), 512, 150, 256
    ppm = 4 * (widths[-1] * c + 2 * c) + (widths[-1] + 4 * c) * c * 9 + 2 * c  # 4 branches, then the bottleneck
    laterals = sum(w * c + 2 * c for w in widths[:-1])
    fpn_convs = 3 * (c * c * 9 + 2 * c)
    fpn_bottleneck = 4 * c * c * 9 + 2 * c
    classifier = c * k + k
    aux = widths[2] * a * 9 + 2 * a + a * k + k
    head = ppm + laterals + fpn_convs + fpn_bottleneck + classifier + aux
    assert RESNET50_TRUNK + head == PARAMS_150["upernet_resnet50"]
    with torch.device("meta"):
        net = UPerNet(150)
    assert count_params(net.aux_heads) == aux
    assert isinstance(net.aux_heads["aux"][1], torch.nn.Dropout2d) and isinstance(net.classifier[0], torch.nn.Dropout2d)


def test_smp_layout():
    """channels=256, feature_norms=True, dropout=0, aux=False is segmentation_models_pytorch's UPerNet: the same
    parameter tensors, shape for shape."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    with torch.device("meta"):
        ours = UPerNet(21, channels=256, feature_norms=True, dropout=0.0, aux=False)
        theirs = smp.UPerNet(encoder_name="resnet50", encoder_weights=None, classes=21)
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in theirs.parameters())
    assert count_params(ours) == 37_289_813
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in ours.modules()) and not ours.aux_heads


NARROW = {"channels": 32, "aux_channels": 16}


def test_output_shapes():
    """Odd and even sizes, RGB and RGB-D: logits at the input size, the auxiliary map too in train mode."""
    torch.manual_seed(0)
    check_output_shapes(partial(UPerNet, backbone="resnet18", **NARROW))


@pytest.mark.parametrize("trunk", ["convnext_tiny", "swin_t"])
def test_transformer_era_trunks_run(trunk):
    torch.manual_seed(0)
    check_output_shapes(partial(UPerNet, backbone=trunk, **NARROW), sizes=((45, 61),), in_channels=(3,))


def test_aux_head_on_the_stride_16_map():
    """In training mode ``aux`` comes from the stride-16 map, at the input size, trained with weight 0.4;
    ``aux=False`` drops the head and returns the logits alone."""
    net = UPerNet(5, backbone="resnet18", **NARROW).train()
    assert dict(net.default_aux_weights) == {"aux": 0.4} and set(net.aux_heads) == {"aux"}
    seen = []
    net.aux_heads["aux"].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    out = net(torch.randn(2, 3, 64, 96))
    assert set(out) == {"out", "aux"} and out["aux"].shape == out["out"].shape == (2, 5, 64, 96)
    assert seen == [(2, 256, 4, 6)]  # ResNet-18's layer3
    plain = UPerNet(5, backbone="resnet18", aux=False, **NARROW).train()
    assert not plain.aux_heads and not any("aux" in name for name, _ in plain.named_parameters())
    assert isinstance(plain(torch.randn(2, 3, 64, 96)), torch.Tensor)


def test_learns():
    torch.manual_seed(0)
    check_learns(UPerNet(4, backbone="resnet18", channels=64, aux_channels=32), **QUICK_LEARNING)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 12, 13])
def test_export_pooling_bins_match_adaptive_pooling(length):
    x = torch.randn(2, 3, length, length + 4)
    for bins in (1, 2, 3, 6):
        pooled = _bin_averages(length, bins, x) @ x @ _bin_averages(length + 4, bins, x).T
        torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, bins))


def test_onnx_export_with_dynamic_sizes(tmp_path):
    """The pooling pyramid exports with dynamic batch and spatial axes, checked in onnxruntime at a second size."""
    pytest.importorskip("onnxruntime")
    from segkit.exporters import export_onnx

    torch.manual_seed(0)
    result = export_onnx(UPerNet(5, backbone="resnet18", **NARROW), tmp_path / "upernet.onnx", (1, 3, 64, 64))
    assert result.dynamic == "batch+spatial", result.note
    assert max(result.max_abs_diff.values()) < 1e-4, result.summary()
