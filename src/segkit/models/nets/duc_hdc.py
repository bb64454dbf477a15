"""DUC-HDC: "Understanding Convolution for Semantic Segmentation" (Wang et al., 2018).

Hybrid Dilated Convolution: a dilated ResNet at output stride 8 whose consecutive 3x3 convolutions use
dilation rates with no common factor (layer3 cycles 1/2/5/9, layer4 5/9/17) instead of one fixed rate, so
the stacked receptive field has no holes ("gridding"). Dense Upsampling Convolution: rather than
interpolating stride-8 scores, a convolution predicts all 8 x 8 sub-pixel scores per cell (K * 64
channels) and PixelShuffle lays them out at full resolution, so the upsampling itself is learned.

The DUC head follows the authors' code (TuSimple-DUC, ``tusimple_duc/networks/network_duc_hdc.py``): the K * 64
scores are the sum of four 3x3 convolutions dilated 6/12/18/24 (the ASPP of the paper's DeepLab-v2 baseline,
widened to K * 64 outputs), each with a bias and with no BatchNorm or ReLU before the reshape.
``duc_dilations=(1,)`` is one plain 3x3 conv; ``duc_norm=True`` puts BN + ReLU between
the conv and the pixel shuffle, the form of common PyTorch ports (not in the authors' code).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from segkit import SegkitError
from segkit.models.backbones import RESNET_ARCHS
from segkit.models.base import SegmentationNet

LAYER3_DILATIONS = (1, 2, 5, 9)
LAYER4_DILATIONS = (5, 9, 17)
OUTPUT_STRIDE = 8
DUC_DILATIONS = (6, 12, 18, 24)


def apply_hybrid_dilation(layer: nn.Sequential, rates: tuple[int, ...]) -> None:
    """Give the 3x3 convolutions of each block of ``layer`` the next rate of ``rates`` (cycling)."""
    for i, block in enumerate(layer):
        rate = rates[i % len(rates)]
        convs = (block.conv1, block.conv2) if isinstance(block, BasicBlock) else (block.conv2,)
        for conv in convs:
            conv.dilation = (rate, rate)
            conv.padding = (rate, rate)


class DenseUpsamplingConv(nn.Module):
    """DUC: ``sum_r conv3x3_r(x)`` -> K * s^2 channels (one conv per rate of ``dilations``), optional BN + ReLU,
    then ``PixelShuffle(s)``: channel ``k * s^2 + i * s + j`` of a cell becomes class k at sub-pixel (i, j)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        scale: int,
        dilations: Sequence[int] = DUC_DILATIONS,
        norm: bool = False,
    ) -> None:
        super().__init__()
        if not dilations:
            raise SegkitError("model.duc_dilations is empty; give at least one rate, e.g. [1] or [6, 12, 18, 24]")
        channels = num_classes * scale**2
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, channels, 3, padding=d, dilation=d, bias=not norm) for d in dilations
        )
        self.norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) if norm else nn.Identity()
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.convs[0](x)
        for conv in self.convs[1:]:
            scores = scores + conv(x)
        return self.shuffle(self.norm(scores))


class DUCHDC(SegmentationNet):
    """ResNet-HDC at output stride 8 + a dense upsampling convolution head (see ``DenseUpsamplingConv``).

    Args:
        duc_dilations: rates of the summed 3x3 convs of the DUC head; (6, 12, 18, 24) as in the authors' code,
            (1,) for one plain conv.
        duc_norm: BN + ReLU after the DUC conv, before the pixel shuffle (off in the authors' code).
    """

    input_multiple = OUTPUT_STRIDE
    trunks = RESNET_ARCHS  # hybrid dilation rewrites layer3 and layer4

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        pretrained: bool = False,
        weights_path: str | None = None,
        duc_dilations: Sequence[int] = DUC_DILATIONS,
        duc_norm: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, OUTPUT_STRIDE, pretrained, weights_path)
        apply_hybrid_dilation(self.backbone.layer3, LAYER3_DILATIONS)
        apply_hybrid_dilation(self.backbone.layer4, LAYER4_DILATIONS)
        self.duc = DenseUpsamplingConv(
            self.backbone.channels[3], num_classes, OUTPUT_STRIDE, tuple(duc_dilations), duc_norm
        )

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.duc(features[3])
