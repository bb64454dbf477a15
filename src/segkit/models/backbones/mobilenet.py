"""MobileNetV2/V3 trunks: the last block at each stride, dilated MobileNetV3 for output stride 16."""

from __future__ import annotations

from segkit.models.backbones.stages import Backbone, check_stride, last_block_per_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

MOBILENET_ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def build_mobilenet(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> Backbone:
    """torchvision MobileNetV2/V3 ``features`` under their own indices, returning the last block at each stride
    (2, 4, 8, 16, 32 for V2/V3). ``output_stride=16`` asks torchvision for its dilated MobileNetV3 (the
    DeepLabv3/LR-ASPP trunk), whose last stage then stays at stride 16."""
    allowed = (32, 16) if name.startswith("mobilenet_v3") else (32,)
    check_stride(name, output_stride, allowed)
    kwargs = {"dilated": True} if output_stride == 16 else {}
    features = torchvision_model(name, pretrained=pretrained, weights_path=weights_path, **kwargs).features
    features[0][0] = adapt_first_conv(features[0][0], in_channels)
    return last_block_per_stride(features)
