"""EfficientNet trunks (Tan & Le, 2019 and 2021): the last block at each stride, as for MobileNet."""

from __future__ import annotations

from segkit.models.backbones.stages import Backbone, check_stride, last_block_per_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

EFFICIENTNET_ARCHS = tuple(f"efficientnet_b{i}" for i in range(8)) + tuple(
    f"efficientnet_v2_{size}" for size in ("s", "m", "l")
)


def build_efficientnet(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> Backbone:
    """torchvision's EfficientNet(V2) ``features`` under their own indices, returning the last block at each
    stride (2, 4, 8, 16, 32; the last one is the classifier's 1x1 head conv, as MobileNet's)."""
    check_stride(name, output_stride, (32,))
    features = torchvision_model(name, pretrained=pretrained, weights_path=weights_path).features
    features[0][0] = adapt_first_conv(features[0][0], in_channels)
    return last_block_per_stride(features)
