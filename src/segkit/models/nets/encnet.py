"""EncNet: "Context Encoding for Semantic Segmentation" (Zhang et al., 2018), with optional JPU (FastFCN).

The Context Encoding Module summarises the whole scene as soft-assigned residuals to K learned codewords;
that summary (a) rescales the feature channels (which classes are plausible here) and (b) feeds the
Semantic Encoding loss head, which predicts the classes present in the image (B x K logits, trained
with BCE by ``SegmentationModule``), a cheap global signal that small objects otherwise lack. An FCN head
on layer3 adds the usual auxiliary loss. With ``jpu=True`` the backbone runs at stride 32 and Joint
Pyramid Upsampling (Wu et al., 2019) rebuilds stride-8 features from layer2-4, much cheaper than dilation.

The conv between the features and the Context Encoding Module is 3x3 on the dilated backbone (EncNet) and 1x1
after JPU (FastFCN's ``EncHead``: JPU's dilated branches already mix space, the 1x1 only fuses their 4 x 512
channels); ``head_kernel_size`` overrides either.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import RESNET_ARCHS
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, FCNHead, resize_to


class Encoding(nn.Module):
    """Encoding layer: B x D x H x W -> B x K x D, the aggregated residuals of all pixels to K codewords.

    ``e_k = sum_i a_ik (x_i - c_k)`` with ``a_ik = softmax_k(-s_k * |x_i - c_k|^2)``; ``s_k > 0`` are learned
    smoothing factors. Computed as ``A^T X - (sum_i a_ik) c_k`` so no N x K x D tensor is materialised.
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(num_codes * channels)
        self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-bound, bound))
        self.smoothing = nn.Parameter(torch.empty(num_codes).uniform_(0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x.flatten(2).transpose(1, 2)  # B x N x D
        codes = self.codewords
        dist = (feats.pow(2).sum(-1, keepdim=True) - 2 * feats @ codes.t() + codes.pow(2).sum(-1)).clamp_min(0)
        assign = torch.softmax(-self.smoothing * dist, dim=-1)  # B x N x K
        return assign.transpose(1, 2) @ feats - assign.sum(1).unsqueeze(-1) * codes


class ContextEncoding(nn.Module):
    """Encoding -> per-channel attention ``x * (1 + sigmoid(fc(e)))``; also returns the encoding ``e`` (B x D)."""

    def __init__(self, channels: int, num_codes: int = 32) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(channels, channels, 1)
        self.encoding = Encoding(channels, num_codes)
        self.norm = nn.Sequential(nn.BatchNorm1d(num_codes), nn.ReLU(inplace=True))
        self.attention = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.norm(self.encoding(self.reduce(x))).mean(1)
        gamma = self.attention(encoded)[:, :, None, None]
        return F.relu(x + x * gamma), encoded


class SeparableConv(nn.Sequential):
    """Dilated depthwise 3x3 + BN + pointwise 1x1, as JPU uses to look at several scales cheaply."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class JointPyramidUpsampling(nn.Module):
    """JPU: layer2/3/4 (strides 8/16/32) -> 3 x ``width`` maps at stride 8 -> dilations 1/2/4/8 -> 4 x ``width``."""

    def __init__(self, in_channels: list[int], width: int = 512, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNReLU(c, width) for c in in_channels)
        joint = width * len(in_channels)
        self.dilated = nn.ModuleList(
            nn.Sequential(SeparableConv(joint, width, d), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for d in dilations
        )
        self.out_channels = width * len(dilations)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        maps = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [resize_to(m, size) for m in maps[1:]]
        joint = torch.cat(maps, dim=1)
        return torch.cat([branch(joint) for branch in self.dilated], dim=1)


class EncNet(SegmentationNet):
    """Dilated ResNet (or ResNet + JPU) -> 3x3 (after JPU: 1x1) conv -> Context Encoding -> classifier.

    Train mode returns ``{"out", "aux", "se"}`` (``aux``/``se`` when enabled, the ``out`` tensor when neither is);
    eval mode the ``out`` tensor. ``forward`` is its own: the ``se`` head reads the Context Encoding, not the trunk.
    ``head_kernel_size``: the kernel of that conv; ``None`` follows the reference (1 with JPU, 3 without).
    The FCN head on layer3 (``aux``) and the SE-loss (``se``) are trained with loss weight 0.2 each, as in the paper.
    """

    default_aux_weights = {"aux": 0.2, "se": 0.2}
    trunks = RESNET_ARCHS  # dilated to output stride 8, or four stages for JPU

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        jpu: bool = False,
        aux: bool = True,
        se: bool = True,
        num_codes: int = 32,
        head_channels: int = 512,
        dropout: float = 0.1,
        pretrained: bool = False,
        weights_path: str | None = None,
        head_kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        if head_kernel_size is None:
            head_kernel_size = 1 if jpu else 3
        if head_kernel_size < 1 or head_kernel_size % 2 == 0:
            raise SegkitError(f"model.head_kernel_size={head_kernel_size}; use an odd size (1 or 3) or null")
        self.backbone = self.build_trunk(backbone, in_channels, 32 if jpu else 8, pretrained, weights_path)
        channels = self.backbone.channels
        self.jpu = JointPyramidUpsampling(channels[1:], head_channels) if jpu else None
        top = self.jpu.out_channels if jpu else channels[3]
        self.head = ConvBNReLU(top, head_channels, head_kernel_size)
        self.context = ContextEncoding(head_channels, num_codes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_channels, num_classes, 1))
        heads: dict[str, nn.Module] = {}
        if se:
            heads["se"] = nn.Linear(head_channels, num_classes)
        if aux:
            heads["aux"] = FCNHead(channels[2], num_classes, dropout, channel_dropout=True)
        self.aux_heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        top = self.jpu(feats[1:]) if self.jpu is not None else feats[3]
        attended, encoded = self.context(self.head(top))
        out = resize_to(self.classifier(attended), size)
        if not (self.training and self.aux_heads):
            return out
        outputs = {"out": out}
        if "aux" in self.aux_heads:
            outputs["aux"] = resize_to(self.aux_heads["aux"](feats[2]), size)
        if "se" in self.aux_heads:
            outputs["se"] = self.aux_heads["se"](encoded)
        return outputs
