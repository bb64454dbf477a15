"""ICNet (Zhao, Qi, Shen, Shi & Jia, ECCV 2018): real-time segmentation by an image cascade.

Only the 1/4-resolution copy of the image goes through the whole dilated ResNet-50 and pyramid pooling
(features at 1/32 of the input); the 1/2-resolution copy goes through the shallow layers only, sharing
their weights (1/16); the full-resolution image through three light strided convs (1/8). Cascade feature
fusion (CFF) units merge them coarse to fine. Cascade label guidance: in train mode each CFF's coarse input
is also classified (``aux_sub4`` from the 1/4 branch, ``aux_sub24`` from the fused 1/4+1/2 branches), all
returned at input resolution so the training module weights them (0.4 each in the paper).

The backbone is the unpruned torchvision ResNet-50 (so ImageNet weights load); the released ICNet halves
its kernels after training, which this class does not do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones import build_backbone
from segkit.models.blocks import ConvBN, ConvBNReLU, crop_to, pad_to_multiple, resize_to


class SumPyramidPooling(nn.Module):
    """ICNet's pyramid pooling: average-pooled maps (bins 1/2/3/6) upsampled and *added* to the input,
    cheaper than PSPNet's concatenation and reduction."""

    def __init__(self, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for b in self.bins:
            out = out + resize_to(F.adaptive_avg_pool2d(x, b), x.shape[-2:])
        return out


class CascadeFeatureFusion(nn.Module):
    """Upsample the coarse map x2, dilated 3x3 conv; project the fine map by 1x1; sum and ReLU.
    ``classifier`` scores the upsampled coarse map for cascade label guidance."""

    def __init__(
        self, low_channels: int, high_channels: int, out_channels: int, num_classes: int, aux_head: bool
    ) -> None:
        super().__init__()
        self.low = ConvBN(low_channels, out_channels, 3, dilation=2)
        self.high = ConvBN(high_channels, out_channels, 1)
        self.classifier = nn.Conv2d(low_channels, num_classes, 1) if aux_head else None

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        low = resize_to(low, high.shape[-2:])
        fused = F.relu(self.low(low) + self.high(high))
        aux = self.classifier(low) if self.classifier is not None and self.training else None
        return fused, aux


class ICNet(nn.Module):
    """ICNet on a dilated torchvision ResNet (``backbone``, ResNet-50 in the paper)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights_path: str | None = None,
        aux_heads: bool = True,
        branch_channels: int = 256,
        fusion_channels: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels, 8, pretrained, weights_path)
        _, c2, _, c4 = self.backbone.channels
        self.sub1 = nn.Sequential(
            ConvBNReLU(in_channels, 32, stride=2), ConvBNReLU(32, 32, stride=2), ConvBNReLU(32, 64, stride=2)
        )
        self.pyramid = SumPyramidPooling()
        self.sub4_reduce = ConvBNReLU(c4, branch_channels, kernel_size=1)
        self.cff24 = CascadeFeatureFusion(branch_channels, c2, fusion_channels, num_classes, aux_heads)
        self.cff12 = CascadeFeatureFusion(fusion_channels, 64, fusion_channels, num_classes, aux_heads)
        self.classifier = nn.Conv2d(fusion_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        padded, size = pad_to_multiple(x, 32)
        h, w = padded.shape[-2:]
        half = resize_to(padded, (h // 2, w // 2))
        quarter = resize_to(padded, (h // 4, w // 4))
        bb = self.backbone
        sub2 = bb.layer2(bb.layer1(bb.stem(half)))
        sub4 = self.sub4_reduce(self.pyramid(bb(quarter)[3]))
        sub1 = self.sub1(padded)
        sub24, aux_sub4 = self.cff24(sub4, sub2)
        sub124, aux_sub24 = self.cff12(sub24, sub1)
        sub124 = resize_to(sub124, (h // 4, w // 4))
        out = crop_to(resize_to(self.classifier(sub124), (h, w)), size)
        if aux_sub4 is None:
            return out
        return {
            "out": out,
            "aux_sub4": crop_to(resize_to(aux_sub4, (h, w)), size),
            "aux_sub24": crop_to(resize_to(aux_sub24, (h, w)), size),
        }
