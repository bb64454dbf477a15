"""DUC-HDC: "Understanding Convolution for Semantic Segmentation" (Wang et al., 2018).

Hybrid Dilated Convolution: a dilated ResNet at output stride 8 whose consecutive 3x3 convolutions use
dilation rates with no common factor (layer3 cycles 1/2/5/9, layer4 5/9/17) instead of one fixed rate, so
the stacked receptive field has no holes ("gridding"). Dense Upsampling Convolution: rather than
interpolating stride-8 scores, one convolution predicts all 8 x 8 sub-pixel scores per cell (K * 64
channels) and PixelShuffle lays them out at full resolution, so the upsampling itself is learned.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from segkit.models.backbones import build_backbone
from segkit.models.blocks import crop_to, pad_to_multiple

LAYER3_DILATIONS = (1, 2, 5, 9)
LAYER4_DILATIONS = (5, 9, 17)
OUTPUT_STRIDE = 8


def apply_hybrid_dilation(layer: nn.Sequential, rates: tuple[int, ...]) -> None:
    """Give the 3x3 convolutions of each block of ``layer`` the next rate of ``rates`` (cycling)."""
    for i, block in enumerate(layer):
        rate = rates[i % len(rates)]
        convs = (block.conv1, block.conv2) if isinstance(block, BasicBlock) else (block.conv2,)
        for conv in convs:
            conv.dilation = (rate, rate)
            conv.padding = (rate, rate)


class DUCHDC(nn.Module):
    """ResNet-HDC at output stride 8 + a dense upsampling convolution head (conv to K*64, PixelShuffle(8))."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels, OUTPUT_STRIDE, pretrained, weights_path)
        apply_hybrid_dilation(self.backbone.layer3, LAYER3_DILATIONS)
        apply_hybrid_dilation(self.backbone.layer4, LAYER4_DILATIONS)
        self.duc = nn.Sequential(
            nn.Conv2d(self.backbone.channels[3], num_classes * OUTPUT_STRIDE**2, 3, padding=1),
            nn.PixelShuffle(OUTPUT_STRIDE),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, OUTPUT_STRIDE)
        return crop_to(self.duc(self.backbone(x)[3]), size)
