"""BiSeNet V2 (Yu, Gao, Gong, Wang, Shen & Sang, IJCV 2021): a bilateral network for real-time segmentation.

Two branches split the work: the detail branch (wide, shallow, 1/8) keeps spatial detail, the semantic
branch (narrow, deep, 1/32: stem block, gather-and-expand layers, context embedding) gathers context.
Bilateral guided aggregation lets each branch gate the other at its own resolution before they are summed.
The booster heads classify four semantic-branch stages (``aux2``..``aux5``, strides 4..32) in train mode
only, so they strengthen training at no inference cost; all outputs are at input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBN, ConvBNReLU, FCNHead, crop_to, pad_to_multiple, resize_to


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """The paper's conv-BN(-ReLU) unit in one call, ``relu=False`` for the linear projections."""
    block = ConvBNReLU if relu else ConvBN
    return block(in_channels, out_channels, kernel_size, stride, groups=groups)


class DetailBranch(nn.Module):
    """Three stages of plain 3x3 convs (64, 64, 128 wide), each starting with stride 2: 1/8, 128 channels."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _conv_bn(in_channels, 64, stride=2),
            _conv_bn(64, 64),
            _conv_bn(64, 64, stride=2),
            _conv_bn(64, 64),
            _conv_bn(64, 64),
            _conv_bn(64, 128, stride=2),
            _conv_bn(128, 128),
            _conv_bn(128, 128),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class StemBlock(nn.Module):
    """Strided conv, then a conv path and a max-pool path concatenated: 1/4 resolution cheaply."""

    def __init__(self, in_channels: int, channels: int = 16) -> None:
        super().__init__()
        self.conv = _conv_bn(in_channels, channels, stride=2)
        self.conv_path = nn.Sequential(
            _conv_bn(channels, channels // 2, 1), _conv_bn(channels // 2, channels, stride=2)
        )
        self.pool_path = nn.MaxPool2d(3, stride=2, padding=1)
        self.fuse = _conv_bn(2 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.conv_path(x), self.pool_path(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expand layer: 3x3 conv gathers, a depthwise conv expands ``expansion`` times (strided, with
    a depthwise-separable shortcut, when ``stride`` is 2), a 1x1 conv projects back; residual sum, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6) -> None:
        super().__init__()
        mid = in_channels * expansion
        layers = [_conv_bn(in_channels, in_channels)]
        if stride == 2:
            layers += [
                _conv_bn(in_channels, mid, stride=2, groups=in_channels, relu=False),
                _conv_bn(mid, mid, groups=mid),
            ]
        else:
            layers += [_conv_bn(in_channels, mid, groups=in_channels)]
        layers += [_conv_bn(mid, out_channels, 1, relu=False)]
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 2 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                _conv_bn(in_channels, in_channels, stride=stride, groups=in_channels, relu=False),
                _conv_bn(in_channels, out_channels, 1, relu=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pooling added back to every position, then a 3x3 conv: image-level context."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(channels), _conv_bn(channels, channels, 1))
        self.conv = _conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x + self.gap(x))


class SemanticBranch(nn.Module):
    """Stem (1/4, 16) -> GE stages (1/8 32, 1/16 64, 1/32 128) -> context embedding; returns every stage."""

    def __init__(self, in_channels: int, expansion: int = 6) -> None:
        super().__init__()
        self.stem = StemBlock(in_channels, 16)
        self.stage3 = nn.Sequential(GatherExpand(16, 32, 2, expansion), GatherExpand(32, 32, 1, expansion))
        self.stage4 = nn.Sequential(GatherExpand(32, 64, 2, expansion), GatherExpand(64, 64, 1, expansion))
        self.stage5 = nn.Sequential(
            GatherExpand(64, 128, 2, expansion), *(GatherExpand(128, 128, 1, expansion) for _ in range(3))
        )
        self.context = ContextEmbedding(128)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s2 = self.stem(x)
        s3 = self.stage3(s2)
        s4 = self.stage4(s3)
        s5 = self.stage5(s4)
        return self.context(s5), [s2, s3, s4, s5]


class BilateralGuidedAggregation(nn.Module):
    """Each branch gates the other (sigmoid) at its own resolution, so the detail branch learns which
    detail matters semantically and the semantic branch gets detail where it is coarse; then summed."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        c = channels
        self.detail_keep = nn.Sequential(_conv_bn(c, c, groups=c, relu=False), nn.Conv2d(c, c, 1, bias=False))
        self.detail_down = nn.Sequential(_conv_bn(c, c, stride=2, relu=False), nn.AvgPool2d(3, 2, 1))
        self.semantic_up = _conv_bn(c, c, relu=False)
        self.semantic_keep = nn.Sequential(_conv_bn(c, c, groups=c, relu=False), nn.Conv2d(c, c, 1, bias=False))
        self.fuse = _conv_bn(c, c)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        fine = self.detail_keep(detail) * torch.sigmoid(resize_to(self.semantic_up(semantic), size))
        coarse = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(fine + resize_to(coarse, size))


class SegmentHead(nn.Module):
    """The FCN head with ``mid_channels`` (the main head and the boosters), under ``layers`` so BiSeNetV2
    checkpoints keep their keys."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = FCNHead(in_channels, num_classes, dropout, inter_channels=mid_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BiSeNetV2(SegmentationNet):
    """BiSeNet V2; ``aux_heads`` adds the four booster heads (train mode only), each trained with loss weight 1 as
    in the paper (Sec. 3.4, the booster training strategy). Trained from scratch, it has no pretrained trunk
    (``backbone`` is None); ``forward`` is its own: the boosters read the semantic branch's stages."""

    default_aux_weights = {"aux2": 1.0, "aux3": 1.0, "aux4": 1.0, "aux5": 1.0}

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        aux_heads: bool = True,
        head_channels: int = 1024,
        booster_channels: int = 128,
        expansion: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.detail = DetailBranch(in_channels)
        self.semantic = SemanticBranch(in_channels, expansion)
        self.aggregation = BilateralGuidedAggregation(128)
        self.head = SegmentHead(128, head_channels, num_classes, dropout)
        self.aux_heads = nn.ModuleDict(
            {
                f"aux{i}": SegmentHead(c, booster_channels, num_classes, dropout)
                for i, c in zip((2, 3, 4, 5), (16, 32, 64, 128))
            }
            if aux_heads
            else {}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        padded, size = pad_to_multiple(x, 32)
        full = padded.shape[-2:]
        semantic, stages = self.semantic(padded)
        out = crop_to(resize_to(self.head(self.aggregation(self.detail(padded), semantic)), full), size)
        if not (self.training and self.aux_heads):
            return out
        result = {"out": out}
        for (name, head), feat in zip(self.aux_heads.items(), stages):
            result[name] = crop_to(resize_to(head(feat), full), size)
        return result
