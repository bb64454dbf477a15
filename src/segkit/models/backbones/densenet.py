"""DenseNet trunks: dense blocks 1..4 at strides 4..32."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from segkit.models.backbones.stages import Backbone, check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

DENSENET_ARCHS = ("densenet121", "densenet161", "densenet169", "densenet201")


def build_densenet(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> Backbone:
    """Dense blocks 1..3 (before the transition that halves channels and resolution) and block 4 after its
    BatchNorm and ReLU, as the classifier sees it: strides 4, 8, 16, 32."""
    check_stride(name, output_stride, (32,))
    f = torchvision_model(name, pretrained=pretrained, weights_path=weights_path).features
    stages = OrderedDict(
        stem=nn.Sequential(adapt_first_conv(f.conv0, in_channels), f.norm0, f.relu0, f.pool0),
        block1=f.denseblock1,
        transition1=f.transition1,
        block2=f.denseblock2,
        transition2=f.transition2,
        block3=f.denseblock3,
        transition3=f.transition3,
        block4=f.denseblock4,
        norm=nn.Sequential(f.norm5, nn.ReLU(inplace=True)),
    )
    channels = [t.norm.num_features for t in (f.transition1, f.transition2, f.transition3)] + [f.norm5.num_features]
    return Backbone(stages, ["block1", "block2", "block3", "norm"], channels, [4, 8, 16, 32])
