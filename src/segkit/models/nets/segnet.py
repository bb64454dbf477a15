"""SegNet (Badrinarayanan, Kendall & Cipolla, 2017): a VGG16-BN encoder and a mirrored decoder.

The decoder upsamples with max-unpooling by the encoder's own pooling indices (no learned
upsampling), which puts each activation back where the maximum came from and keeps boundaries
sharp for a fraction of the memory of FCN's skip features. Each decoder stage mirrors its encoder
stage (same number of conv-BN-ReLU layers, channels reversed); the last layer is a 3x3 classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones import vgg_conv_stages
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, crop_to, pad_to_multiple

SEGNET_ENCODERS = ("vgg16_bn", "vgg19_bn", "vgg13_bn", "vgg11_bn")


class SegNet(SegmentationNet):
    """SegNet; ``backbone`` names the torchvision VGG-BN encoder (``pretrained``/``weights_path`` for it), kept as
    the net's ``backbone``: its five conv stages, which the forward pass pools itself to keep the indices."""

    trunks = SEGNET_ENCODERS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "vgg16_bn",
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = vgg_conv_stages(self.build_trunk(backbone, in_channels, 32, pretrained, weights_path))
        self.decoder = nn.ModuleList(_mirror(stage) for stage in reversed(self.backbone))
        last = self.decoder[-1]
        last[-1] = nn.Conv2d(last[-1][0].in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 2 ** len(self.backbone))
        indices = []
        for stage in self.backbone:
            x, idx = F.max_pool2d(stage(x), 2, 2, return_indices=True)
            indices.append(idx)
        for stage, idx in zip(self.decoder, reversed(indices)):
            x = stage(F.max_unpool2d(x, idx, 2, 2))
        return crop_to(x, size)


def _mirror(stage: nn.Sequential) -> nn.Sequential:
    """Conv-BN-ReLU layers with the encoder stage's convolutions in reverse order, in/out channels swapped."""
    convs = [m for m in stage if isinstance(m, nn.Conv2d)]
    return nn.Sequential(*(ConvBNReLU(c.out_channels, c.in_channels, 3) for c in reversed(convs)))
