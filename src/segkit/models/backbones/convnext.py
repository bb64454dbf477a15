"""ConvNeXt trunks (Liu et al., 2022): the four stages at strides 4, 8, 16, 32."""

from __future__ import annotations

from collections import OrderedDict

from segkit.models.backbones.stages import Backbone, check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

CONVNEXT_ARCHS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")


def build_convnext(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> Backbone:
    """torchvision's ConvNeXt ``features`` as ``stem, stage1, downsample2, stage2, ..., stage4``, returning
    stage1..stage4 (96, 192, 384, 768 channels for the tiny model). The maps are the stages' residual streams as
    the classifier computes them, without the extra per-stage LayerNorm some dense-prediction ports add: every
    decoder here projects each map with its own (normalised) lateral convolution first."""
    check_stride(name, output_stride, (32,))
    f = torchvision_model(name, pretrained=pretrained, weights_path=weights_path).features
    f[0][0] = adapt_first_conv(f[0][0], in_channels)
    stages = OrderedDict(stem=f[0], stage1=f[1])
    for i in (2, 3, 4):
        stages[f"downsample{i}"] = f[2 * i - 2]
        stages[f"stage{i}"] = f[2 * i - 1]
    channels = [f[0][0].out_channels] + [f[2 * i - 2][1].out_channels for i in (2, 3, 4)]
    return Backbone(stages, ["stage1", "stage2", "stage3", "stage4"], channels, [4, 8, 16, 32])
