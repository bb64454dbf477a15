"""Semantic FPN: the Panoptic-FPN semantic head (Kirillov, Girshick, He & Dollár, CVPR 2019) on any trunk.

A feature pyramid (Lin et al., 2017: 1x1 lateral convs, nearest-neighbour top-down pathway, 3x3 output
convs, ``pyramid_channels`` wide) gives P2..P5 at strides 4..32. ``output_convs=False`` drops the four 3x3
output convs (2.4M parameters, most of their cost on the stride-4 level): the layout of
segmentation_models_pytorch's FPN, whose semantic head follows the pyramid's sums directly. The semantic head brings every level to
stride 4 with stages of 3x3 conv - GroupNorm - ReLU (``head_channels`` wide) each followed by a 2x bilinear
upsample (P2 gets one stage without upsampling), sums them, classifies with a 1x1 conv and upsamples x4.
It is the light, all-scales decoder the paper proposed as a strong baseline for dense prediction. The pyramid
takes the trunk's maps at strides 4..32 (``pyramid_indices``), so every trunk fits, those that also return a
stride-2 map (VGG, MobileNet, EfficientNet) included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones import TRUNKS, pyramid_indices
from segkit.models.base import SegmentationNet


class FeaturePyramid(nn.Module):
    """Top-down pathway with lateral connections: every level gets the semantics of the deepest one."""

    def __init__(self, in_channels: list[int], channels: int = 256, output_convs: bool = True) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) if output_convs else nn.Identity() for _ in in_channels
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        return [conv(p) for conv, p in zip(self.output, laterals)]


def _upsample_stage(in_channels: int, out_channels: int, upsample: bool, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SemanticHead(nn.Module):
    """Merges pyramid levels at strides ``4 * 2**i`` into one stride-4 map of ``channels``."""

    def __init__(self, num_levels: int, in_channels: int = 256, channels: int = 128, groups: int = 32) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            stages = [_upsample_stage(in_channels, channels, level > 0, groups)]
            stages += [_upsample_stage(channels, channels, True, groups) for _ in range(level - 1)]
            self.levels.append(nn.Sequential(*stages))

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        out = self.levels[0](pyramid[0])
        for level, p in zip(self.levels[1:], pyramid[1:]):
            out = out + level(p)
        return out


class SemanticFPN(SegmentationNet):
    """Semantic FPN on any trunk (ResNet-50 in the paper's ablations), its maps at strides 4, 8, 16, 32."""

    input_multiple = 32
    trunks = TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights_path: str | None = None,
        pyramid_channels: int = 256,
        head_channels: int = 128,
        groups: int = 32,
        output_convs: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        self.pyramid_levels = pyramid_indices(self.backbone)
        channels = [self.backbone.channels[i] for i in self.pyramid_levels]
        self.pyramid = FeaturePyramid(channels, pyramid_channels, output_convs)
        self.head = SemanticHead(len(channels), pyramid_channels, head_channels, groups)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.head(self.pyramid([features[i] for i in self.pyramid_levels])))
