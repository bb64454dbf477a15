"""ICNet (Zhao, Qi, Shen, Shi & Jia, ECCV 2018): real-time segmentation by an image cascade on one shared trunk.

The trunk runs once, on the 1/2-resolution image, up to conv3_1 (the first block of ``layer2``: 1/16 of the input);
that map is the *sub2* branch, and the same map, bilinearly halved to 1/32, continues through the rest of the trunk
(conv3_2 onwards, dilated conv4/conv5) and the summed pyramid pooling to become the *sub4* branch. The
full-resolution image only meets three light strided convs (*sub1*, 1/8). Cascade feature fusion (CFF) units merge
sub4 into sub2 and the result into sub1; the classifier then scores the fused map upsampled x2 (1/4), and the
prediction is upsampled x4. The layout follows the authors' released Caffe model (``hszhao/ICNet``,
``icnet_cityscapes.prototxt``); mmseg splits the trunk after the whole of conv3 instead.

Cascade label guidance: in train mode each CFF also classifies its upsampled coarse input, ``aux_sub4`` at 1/16
and ``aux_sub24`` at 1/8 of the input, returned at those resolutions so that ``SegmentationModule`` scores them
against labels downsampled to each branch's own resolution, as the reference training does. ``out`` stays at
input resolution (the net contract), so the main loss sees the full-resolution labels.

The backbone is the unpruned torchvision ResNet-50 (so ImageNet weights load); the released ICNet halves
its kernels after training, which this class does not do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones import RESNET_ARCHS
from segkit.models.base import SegmentationNet
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
    """Upsample the coarse map x2, dilated 3x3 conv; project the fine map by 1x1; sum and ReLU. Returns the fused
    map and the upsampled coarse map, which the net's guidance head scores (cascade label guidance)."""

    def __init__(self, low_channels: int, high_channels: int, out_channels: int) -> None:
        super().__init__()
        self.low = ConvBN(low_channels, out_channels, 3, dilation=2)
        self.high = ConvBN(high_channels, out_channels, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = resize_to(low, high.shape[-2:])
        return F.relu(self.low(low) + self.high(high)), low


class ICNet(SegmentationNet):
    """ICNet on a dilated torchvision ResNet (``backbone``, ResNet-50 in the paper).

    ``default_aux_weights`` are the cascade label guidance weights of sub4 and sub24 (the main sub124 output
    weighs 1.0): 0.16 / 0.4 / 1.0 as ``LAMBDA1..3`` in ``hellochick/ICNet-tensorflow`` (``train.py``), the
    reproduction trained from the authors' released Caffe model, whose repository ships no training code. mmseg
    and GluonCV use 0.4 / 0.4 / 1.0 (``aux_weights={aux_sub4: 0.4}`` trains that way). Its guidance heads are 1x1
    classifiers of each CFF's upsampled coarse input (``aux_heads``); ``forward`` is its own, the cascade.
    """

    default_aux_weights = {"aux_sub4": 0.16, "aux_sub24": 0.4}
    trunks = RESNET_ARCHS  # the cascade splits layer2

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
        self.backbone = self.build_trunk(backbone, in_channels, 8, pretrained, weights_path)
        _, c2, _, c4 = self.backbone.channels
        self.sub1 = nn.Sequential(
            ConvBNReLU(in_channels, 32, stride=2), ConvBNReLU(32, 32, stride=2), ConvBNReLU(32, 64, stride=2)
        )
        self.pyramid = SumPyramidPooling()
        self.sub4_reduce = ConvBNReLU(c4, branch_channels, kernel_size=1)
        self.cff24 = CascadeFeatureFusion(branch_channels, c2, fusion_channels)
        self.cff12 = CascadeFeatureFusion(fusion_channels, 64, fusion_channels)
        guidance = {"aux_sub4": branch_channels, "aux_sub24": fusion_channels}
        self.aux_heads = nn.ModuleDict(
            {name: nn.Conv2d(c, num_classes, 1) for name, c in guidance.items()} if aux_heads else {}
        )
        self.classifier = nn.Conv2d(fusion_channels, num_classes, 1)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sub1, sub2, sub4) feature maps of a padded input at 1/8, 1/16 and 1/32 of its size; the trunk runs
        once, on the 1/2-resolution image, and the sub4 branch continues from the sub2 branch's conv3_1."""
        h, w = x.shape[-2:]
        bb = self.backbone
        conv3_1 = bb.layer2[0](bb.layer1(bb.stem(resize_to(x, (h // 2, w // 2)))))
        deep = resize_to(conv3_1, (h // 32, w // 32))
        deep = bb.layer4(bb.layer3(bb.layer2[1:](deep)))
        return self.sub1(x), conv3_1, self.sub4_reduce(self.pyramid(deep))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        padded, size = pad_to_multiple(x, 32)
        h, w = padded.shape[-2:]
        sub1, sub2, sub4 = self.branches(padded)
        sub24, sub4_up = self.cff24(sub4, sub2)
        sub124, sub24_up = self.cff12(sub24, sub1)
        sub124 = resize_to(sub124, (h // 4, w // 4))
        out = crop_to(resize_to(self.classifier(sub124), (h, w)), size)
        if not (self.training and self.aux_heads):
            return out
        heads = self.aux_heads
        return {
            "out": out,
            "aux_sub4": _crop_scaled(heads["aux_sub4"](sub4_up), size, 16),
            "aux_sub24": _crop_scaled(heads["aux_sub24"](sub24_up), size, 8),
        }


def _crop_scaled(x: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """The part of a stride-``stride`` map that covers an input of ``size`` (before padding)."""
    return crop_to(x, (math.ceil(size[0] / stride), math.ceil(size[1] / stride)))
