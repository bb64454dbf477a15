"""PSPNet (Zhao et al., 2017): a dilated ResNet (output stride 8) and a pyramid pooling module.

Pooling the last features to 1x1, 2x2, 3x3 and 6x6 grids gives every pixel context at four scales
(the whole image down to sub-regions) before the classifier. An auxiliary FCN head on layer3 adds
deep supervision while training (its loss weight, 0.4 in the paper, sits in the model config). The trunk is one
that dilates: any ResNet, or MobileNetV3 at ``output_stride=16`` (its stride-8 map then feeds the auxiliary head).
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import DILATABLE_TRUNKS
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, FCNHead, resize_to


class PyramidPooling(nn.Module):
    """Average-pool to each ``bins`` grid, 1x1 conv-BN-ReLU, upsample back, concatenate with the input."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch_channels = in_channels // len(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, branch_channels, 1)) for b in bins
        )
        self.out_channels = in_channels + branch_channels * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize_to(branch(x), size) for branch in self.branches], dim=1)


class PSPNet(SegmentationNet):
    """PSPNet on a torchvision ResNet; returns ``{"out", "aux"}`` in train mode (when ``aux``), the logits in eval.

    The auxiliary FCN head on layer3 is trained with loss weight 0.4, as in the paper (deep supervision, Sec. 3.3).
    """

    default_aux_weights = {"aux": 0.4}
    trunks = DILATABLE_TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        output_stride: int = 8,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        aux: bool = True,
        dropout: float = 0.1,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, output_stride, pretrained, weights_path)
        c3, c4 = self.backbone.channels[-2:]
        self.ppm = PyramidPooling(c4, tuple(bins))
        self.head = FCNHead(self.ppm.out_channels, num_classes, dropout, inter_channels=512)
        self.aux_heads = nn.ModuleDict({"aux": FCNHead(c3, num_classes, dropout)} if aux else {})

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.ppm(features[-1]))

    def aux_logits(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: head(features[-2]) for name, head in self.aux_heads.items()}
