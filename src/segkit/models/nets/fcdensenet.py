"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jegou et al., 2017): DenseNet blocks in a U-shaped net.

On the way up only the feature maps a dense block *created* are upsampled (not its whole concatenated input);
otherwise the channel count would explode with depth. That is what keeps FC-DenseNet103 at ~9.4M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.base import SegmentationNet
from segkit.models.blocks import crop_to, pad_to_multiple

VARIANTS: dict[str, dict] = {
    "56": {"growth_rate": 12, "down_layers": (4, 4, 4, 4, 4), "bottleneck_layers": 4},
    "67": {"growth_rate": 16, "down_layers": (5, 5, 5, 5, 5), "bottleneck_layers": 5},
    "103": {"growth_rate": 16, "down_layers": (4, 5, 7, 10, 12), "bottleneck_layers": 15},
}


class DenseLayer(nn.Sequential):
    """BN-ReLU-3x3 conv to ``growth_rate`` maps, then dropout."""

    def __init__(self, cin: int, growth_rate: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, growth_rate, 3, padding=1, bias=False),
            nn.Dropout2d(dropout),
        )


class DenseBlock(nn.Module):
    """Each layer sees the block input and every earlier layer's output; returns only the new maps
    (``num_layers * growth_rate`` channels). Callers concatenate the input back where the paper does."""

    def __init__(self, cin: int, num_layers: int, growth_rate: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth_rate, growth_rate, dropout) for i in range(num_layers))
        self.out_channels = num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            new.append(layer(torch.cat([x, *new], dim=1)))
        return torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    """BN-ReLU-1x1 conv (same width)-dropout-2x2 max pool."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )


class FCDenseNet(SegmentationNet):
    """FC-DenseNet: 3x3 stem, dense blocks + transitions down, a bottleneck block, and the mirrored up path
    (3x3 stride-2 transposed conv on the previous block's new maps, concatenated with the skip).

    ``variant`` 56/67/103 sets ``growth_rate``, ``down_layers`` and ``bottleneck_layers`` (any given explicitly
    override it). Inputs of any size are padded to a multiple of ``2**len(down_layers)`` and cropped back. Trained
    from scratch, it has no pretrained trunk (``backbone`` is None).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        variant: str | int = "103",
        growth_rate: int | None = None,
        down_layers: Sequence[int] | None = None,
        bottleneck_layers: int | None = None,
        stem_channels: int = 48,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if str(variant) not in VARIANTS:
            raise SegkitError(f"model.variant={variant}: choose one of {sorted(VARIANTS, key=int)}")
        preset = VARIANTS[str(variant)]
        growth_rate = growth_rate or preset["growth_rate"]
        down_layers = tuple(down_layers or preset["down_layers"])
        bottleneck_layers = bottleneck_layers or preset["bottleneck_layers"]
        self.multiple = 2 ** len(down_layers)

        self.stem = nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)
        channels = stem_channels
        skip_channels = []
        self.down_blocks, self.transitions_down = nn.ModuleList(), nn.ModuleList()
        for n in down_layers:
            self.down_blocks.append(DenseBlock(channels, n, growth_rate, dropout))
            channels += n * growth_rate
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, dropout))

        self.bottleneck = DenseBlock(channels, bottleneck_layers, growth_rate, dropout)
        new_channels = bottleneck_layers * growth_rate
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for n, skip in zip(reversed(down_layers), reversed(skip_channels)):
            self.transitions_up.append(
                nn.ConvTranspose2d(new_channels, new_channels, 3, stride=2, padding=1, output_padding=1, bias=False)
            )
            channels = skip + new_channels
            self.up_blocks.append(DenseBlock(channels, n, growth_rate, dropout))
            new_channels = n * growth_rate
        self.head = nn.Conv2d(channels + new_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.multiple)
        y = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down):
            y = torch.cat([y, block(y)], dim=1)
            skips.append(y)
            y = down(y)
        new = self.bottleneck(y)
        for up, block in zip(self.transitions_up, self.up_blocks):
            y = torch.cat([up(new), skips.pop()], dim=1)
            new = block(y)
        return crop_to(self.head(torch.cat([y, new], dim=1)), size)
