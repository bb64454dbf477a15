"""Small building blocks shared by several nets (conv-BN-ReLU, the FCN head, ASPP).

Layouts follow torchvision's segmentation heads, so nets built from them match torchvision's
parameter counts (and could load its weights) where the architecture is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: BN follows) -> BatchNorm -> ReLU, "same" padding for odd kernels."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Atrous depthwise-separable conv (DeepLabv3+): a depthwise ``kernel_size`` conv at ``dilation``, a 1x1
    pointwise conv, then BatchNorm and ReLU, as segmentation_models_pytorch builds it; for 2048 input channels it
    has ~1/9 of a full 3x3 conv's weights and FLOPs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, 1, padding, dilation, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FCNHead(nn.Sequential):
    """3x3 conv to ``in_channels // 4``, BN, ReLU, dropout, 1x1 classifier: torchvision's FCN/auxiliary head."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        inter = in_channels // 4
        super().__init__(ConvBNReLU(in_channels, inter, 3), nn.Dropout(dropout), nn.Conv2d(inter, num_classes, 1))


class ASPPPooling(nn.Module):
    """Image-level features: global average, 1x1 conv-BN-ReLU, broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x)).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1x1 branch, one 3x3 branch per rate, image pooling,
    concatenated and projected to ``out_channels``. ``separable`` makes the atrous branches depthwise-separable
    (DeepLabv3+)."""

    def __init__(
        self,
        in_channels: int,
        rates: tuple[int, ...] = (12, 24, 36),
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: bool = False,
    ) -> None:
        super().__init__()
        atrous = SeparableConvBNReLU if separable else ConvBNReLU
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [atrous(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNReLU(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) to ``size``; a no-op when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
