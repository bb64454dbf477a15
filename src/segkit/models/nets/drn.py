"""DRN-C-26 (Yu, Koltun & Funkhouser, 2017, "Dilated Residual Networks") for segmentation.

A ResNet that stops downsampling at stride 8 and dilates instead (levels 5-6, dilation 2 and 4), so the head sees
fine feature maps without losing receptive field. Dilation alone leaves gridding artifacts; DRN-C removes them with
a 7x7 stride-1 stem and two "degridding" levels (7-8: dilation 2 then 1) WITHOUT residual connections, so the
aliased signal cannot bypass them.

Parameters (measured): levels 1-8 hold 20,613,584; adding the ImageNet classifier's 1000-way 1x1 conv gives
21,126,584, the published DRN-C-26 figure of 21.1M. At 21 classes this segmentation net has 20,624,357
(20,737,253 with ``learned_upsampling``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, bilinear_upsampler

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
BLOCKS = (1, 1, 2, 2, 2, 2, 1, 1)


class BasicBlock(nn.Module):
    """Two 3x3 convs with dilations ``(d1, d2)``; a residual shortcut unless ``residual`` is false."""

    def __init__(
        self, cin: int, cout: int, stride: int = 1, dilation: tuple[int, int] = (1, 1), residual: bool = True
    ) -> None:
        super().__init__()
        d1, d2 = dilation
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=d1, dilation=d1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=d2, dilation=d2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut = nn.Identity()
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            y = y + self.shortcut(x)
        return self.relu(y)


def level(cin: int, cout: int, blocks: int, stride: int = 1, dilation: int = 1, residual: bool = True) -> nn.Sequential:
    """One DRN level of ``blocks`` basic blocks; only the first may change stride or width."""
    layers = [BasicBlock(cin, cout, stride, (dilation, dilation), residual)]
    layers += [BasicBlock(cout, cout, dilation=(dilation, dilation), residual=residual) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DRNC26Backbone(nn.Module):
    """Levels 1-8 of DRN-C-26: 7x7 stem, strides 2/2/2 at levels 2-4 (output stride 8), dilation 2 and 4 at
    levels 5-6, degridding levels 7-8 (dilation 2, 1) without residuals. ``channels``: the eight level widths."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = CHANNELS) -> None:
        super().__init__()
        if len(channels) != len(CHANNELS):
            raise SegkitError(f"model.channels={list(channels)}: give {len(CHANNELS)} widths, one per DRN level")
        c = list(channels)
        self.stem = ConvBNReLU(in_channels, c[0], 7)
        self.levels = nn.Sequential(
            level(c[0], c[0], BLOCKS[0]),
            level(c[0], c[1], BLOCKS[1], stride=2),
            level(c[1], c[2], BLOCKS[2], stride=2),
            level(c[2], c[3], BLOCKS[3], stride=2),
            level(c[3], c[4], BLOCKS[4], dilation=2),
            level(c[4], c[5], BLOCKS[5], dilation=4),
            level(c[5], c[6], BLOCKS[6], dilation=2, residual=False),
            level(c[6], c[7], BLOCKS[7], dilation=1, residual=False),
        )
        self.out_channels = c[7]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(self.stem(x))


class DRNC26(SegmentationNet):
    """DRN-C-26 with a 1x1 segmentation head at stride 8, upsampled x8 to the input size.

    ``learned_upsampling``: a transposed conv initialised to bilinear interpolation and trained, instead of fixed
    bilinear interpolation. ``channels`` (default: the paper's 16-32-64-128-256-512-512-512) allows narrower nets.
    Inputs of any size are padded to a multiple of 8 and the output cropped back.
    """

    input_multiple = 8

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        learned_upsampling: bool = False,
        channels: Sequence[int] = CHANNELS,
    ) -> None:
        super().__init__()
        self.backbone = DRNC26Backbone(in_channels, channels)
        self.head = nn.Conv2d(self.backbone.out_channels, num_classes, 1)
        self.upsample = bilinear_upsampler(num_classes, 8) if learned_upsampling else None

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        y = self.head(features)
        return self.upsample(y) if self.upsample is not None else y
