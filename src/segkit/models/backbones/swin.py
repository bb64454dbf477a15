"""Swin Transformer trunks (Liu et al., 2021; V2, 2022): the four stages at strides 4, 8, 16, 32 as NCHW maps."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones.stages import Backbone, check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

SWIN_ARCHS = ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")


class SwinStage(nn.Module):
    """One stage on channels-last (B x H x W x C) maps: the patch merging that halves the resolution (stages 2-4),
    the transformer blocks, and ``norm``, the LayerNorm of the map the stage returns (``SwinBackbone`` applies it
    to the returned copy only: the next stage reads the stream before it, as in the classifier)."""

    def __init__(self, blocks: nn.Module, norm: nn.LayerNorm, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = blocks
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class SwinBackbone(Backbone):
    """A Backbone whose stages pass channels-last maps to each other and return each stage's map normalised by
    its LayerNorm and permuted to NCHW, as mmsegmentation's Swin does for dense prediction (the stages' residual
    streams are not normalised; the classifier normalises only the last one, before pooling).

    Any input size works: the input is padded right and bottom to a multiple of the patch size (torchvision's
    patch embedding would drop the remainder), torchvision's patch merging pads odd maps and its window attention
    pads maps to a multiple of the window, so an H x W input gives maps of ceil(H / 4) x ceil(W / 4), then halved
    (rounding up) per stage."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        patch = self["stem"][0].stride
        x = F.pad(x, (0, -x.shape[-1] % patch[1], 0, -x.shape[-2] % patch[0]))
        out = []
        for name, stage in self.items():
            x = stage(x)
            if name in self.return_layers:
                out.append(stage.norm(x).permute(0, 3, 1, 2).contiguous())
        return out


def build_swin(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None) -> Backbone:
    """torchvision's Swin (V1 or V2) ``features`` as ``stem`` (patch embedding) and ``stage1..stage4``
    (``SwinStage``: 96, 192, 384, 768 channels for swin_t). Stage 4's LayerNorm is the classifier's final norm
    (pretrained with it); stages 1-3 get new ones (ones and zeros), as mmsegmentation's Swin starts them."""
    check_stride(name, output_stride, (32,))
    net = torchvision_model(name, pretrained=pretrained, weights_path=weights_path)
    f = net.features
    f[0][0] = adapt_first_conv(f[0][0], in_channels)
    stages = OrderedDict(stem=f[0])
    channels = []
    for i in (1, 2, 3, 4):
        width = f[0][0].out_channels * 2 ** (i - 1)
        norm = net.norm if i == 4 else nn.LayerNorm(width, eps=net.norm.eps)
        stages[f"stage{i}"] = SwinStage(f[2 * i - 1], norm, f[2 * i - 2] if i > 1 else None)
        channels.append(width)
    return SwinBackbone(stages, ["stage1", "stage2", "stage3", "stage4"], channels, [4, 8, 16, 32])
