"""LinkNet (Chaurasia & Culurciello, 2017): a ResNet encoder whose features are ADDED to the decoder's.

Adding (not concatenating) the encoder features keeps the decoder as narrow as the encoder, which is what makes
LinkNet light (~11.5M parameters with ResNet-18) yet able to recover the spatial detail lost by downsampling.
The decoder is sized by the encoder's maps at strides 4, 8, 16, 32 (``pyramid_indices``), so every trunk fits.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import TRUNKS, pyramid_indices
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU


def bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class DecoderBlock(nn.Module):
    """1x1 conv to a quarter, 3x3 full (transposed) conv x``stride``, 1x1 conv to ``cout``; BN-ReLU after each."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        mid = cin // 4
        if stride == 2:
            middle = nn.Sequential(
                nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False), *bn_relu(mid)
            )
        else:
            middle = ConvBNReLU(mid, mid, 3)
        self.body = nn.Sequential(ConvBNReLU(cin, mid, 1), middle, ConvBNReLU(mid, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LinkNet(SegmentationNet):
    """ResNet-18/34 encoder (stride 32; any trunk's maps at strides 4..32), four decoder blocks with additive
    links, and the paper's final block (3x3 full conv x2, 3x3 conv, 2x2 full conv x2 to classes).

    torchvision's ``layer1`` (any trunk's stride-4 map) is not downsampled (the paper's encoder block 1 is), so
    decoder block 1 keeps its resolution and the final block's two x2 steps restore the stem's stride 4. Inputs of
    any size are padded to a multiple of 32 and the output cropped back.
    """

    input_multiple = 32
    trunks = TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet18",
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        self.pyramid_levels = pyramid_indices(self.backbone)
        c1, c2, c3, c4 = (self.backbone.channels[i] for i in self.pyramid_levels)
        self.decoders = nn.ModuleList(
            [
                DecoderBlock(c4, c3),
                DecoderBlock(c3, c2),
                DecoderBlock(c2, c1),
                DecoderBlock(c1, 64, stride=1),
            ]
        )
        self.final = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1, bias=False),
            *bn_relu(32),
            ConvBNReLU(32, 32, 3),
            nn.ConvTranspose2d(32, num_classes, 2, stride=2),
        )

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        *skips, y = (features[i] for i in self.pyramid_levels)
        for decoder in self.decoders:
            y = decoder(y)
            if skips:
                y = y + skips.pop()
        return self.final(y)
