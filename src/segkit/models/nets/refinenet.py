"""RefineNet, 4-cascade (Lin, Milan, Shen & Reid, CVPR 2017) on a torchvision ResNet (or any trunk).

Each backbone stage (strides 4, 8, 16, 32) feeds one RefineNet block; the block at stride 32 refines the
deepest features alone, and each lower block fuses its stage with the refined output of the block above.
A block is: two residual conv units (RCUs) per input path, multi-resolution fusion (3x3 conv per path to
the smallest width, upsampled to the largest resolution, summed), chained residual pooling and one output
RCU. The final stride-4 map goes through two more RCUs and a 1x1 classifier, then is upsampled x4.

Widths follow the paper: 512 for the stride-32 path, 256 elsewhere. Chained residual pooling uses four
pool-conv stages (``crp_stages``), as in the released RefineNet code; the CVPR figure draws two.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import TRUNKS, pyramid_indices
from segkit.models.base import SegmentationNet
from segkit.models.blocks import resize_to


def _conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """ReLU-conv-ReLU-conv plus identity: adapts pretrained features to the segmentation task without
    breaking the gradient path to the backbone (the original ResNet unit, minus batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), _conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ChainedResidualPooling(nn.Module):
    """A chain of 5x5 max-pool + 3x3 conv stages, each output added to the input: context from growing
    windows, weighted by learnt convolutions, while the identity keeps the fine detail."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(5, stride=1, padding=2), _conv3x3(channels, channels, bias=False))
            for _ in range(stages)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out, path = x, x
        for stage in self.stages:
            path = stage(path)
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """Refines one or more input paths (highest resolution first in ``forward``) into one map of ``channels``."""

    def __init__(self, in_channels: list[int], channels: int, crp_stages: int = 4) -> None:
        super().__init__()
        self.rcus = nn.ModuleList(nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in in_channels)
        self.fuse = nn.ModuleList(_conv3x3(c, channels) for c in in_channels) if len(in_channels) > 1 else None
        self.crp = ChainedResidualPooling(channels, crp_stages)
        self.out_rcu = ResidualConvUnit(channels)

    def forward(self, *paths: torch.Tensor) -> torch.Tensor:
        paths = [rcu(p) for rcu, p in zip(self.rcus, paths)]
        if self.fuse is None:
            x = paths[0]
        else:
            size = paths[0].shape[-2:]
            x = self.fuse[0](paths[0])
            for conv, p in zip(self.fuse[1:], paths[1:]):
                x = x + resize_to(conv(p), size)
        return self.out_rcu(self.crp(x))


class RefineNet(SegmentationNet):
    """4-cascade RefineNet; ``backbone`` is any trunk (ResNet-101 in the paper): its maps at strides 4, 8, 16,
    32 (``pyramid_indices``) feed the four blocks."""

    input_multiple = 32
    trunks = TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        pretrained: bool = False,
        weights_path: str | None = None,
        features: int = 256,
        top_features: int = 512,
        crp_stages: int = 4,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        self.pyramid_levels = pyramid_indices(self.backbone)
        c1, c2, c3, c4 = (self.backbone.channels[i] for i in self.pyramid_levels)
        self.dropout = nn.Dropout2d(dropout)
        # dimension adaptation from the backbone widths to the RefineNet widths
        self.adapt = nn.ModuleList(
            [
                _conv3x3(c1, features, bias=False),
                _conv3x3(c2, features, bias=False),
                _conv3x3(c3, features, bias=False),
                _conv3x3(c4, top_features, bias=False),
            ]
        )
        self.refine4 = RefineNetBlock([top_features], top_features, crp_stages)
        self.refine3 = RefineNetBlock([features, top_features], features, crp_stages)
        self.refine2 = RefineNetBlock([features, features], features, crp_stages)
        self.refine1 = RefineNetBlock([features, features], features, crp_stages)
        self.head = nn.Sequential(
            ResidualConvUnit(features), ResidualConvUnit(features), nn.Conv2d(features, num_classes, 1)
        )

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = [features[i] for i in self.pyramid_levels]
        feats = features[:2] + [self.dropout(f) for f in features[2:]]
        f1, f2, f3, f4 = (adapt(f) for adapt, f in zip(self.adapt, feats))
        r = self.refine4(f4)
        r = self.refine3(f3, r)
        r = self.refine2(f2, r)
        r = self.refine1(f1, r)
        return self.head(r)
