"""U-Net (Ronneberger et al., 2015) with batch norm, configurable width and depth."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from segkit import SegkitError
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, crop_to, pad_to_multiple


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU, flattened into one Sequential so the keys stay ``<block>.0`` ... ``<block>.5``."""
    return nn.Sequential(*ConvBNReLU(cin, cout, 3), *ConvBNReLU(cout, cout, 3))


def _whole(value: object) -> bool:
    """A positive whole number (not a bool, a fraction or a string): a factor or a channel count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class UNet(SegmentationNet):
    """Encoder of ``depth`` poolings, widths ``base_width * 2**i`` (or one per level from ``widths``, e.g. a wider
    full-resolution level); decoder by bilinear or transposed upsampling.

    Inputs of any size are padded to a multiple of ``2**depth`` and the output is cropped back. Trained from
    scratch, it has no pretrained trunk (``backbone`` is None): the optimizer tunes all of it as the head.

    ``pixel_shuffle=f`` (f > 1) runs the whole U-Net at 1/f of the input resolution at almost the cost of a
    U-Net fed a 1/f-size image, but without throwing the input's detail away: the stem takes the input's f x f
    pixel blocks as channels (``pixel_unshuffle``), and the head predicts ``f*f`` logits per cell, rearranged
    into a full-resolution map (``pixel_shuffle``, the dense upsampling convolution of DUC, Wang et al. 2018).
    Thin objects that an image resize would blur (poles, signs) keep their pixels in the input and in the
    labels the net is trained against.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_width: int = 64,
        depth: int = 4,
        bilinear: bool = False,
        dropout: float = 0.0,
        pixel_shuffle: int = 1,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not _whole(pixel_shuffle):
            raise SegkitError(f"model.pixel_shuffle={pixel_shuffle}; use 1 (off) or a factor such as 2")
        if widths is None:
            widths = [base_width * 2**i for i in range(depth + 1)]
        else:
            given = widths
            ok = isinstance(widths, Sequence) and not isinstance(widths, str) and len(widths) == depth + 1
            widths = list(widths) if ok else []
            if not ok or not all(_whole(w) for w in widths):
                raise SegkitError(
                    f"model.widths={given!r}: give a list of depth + 1 = {depth + 1} positive whole widths, one per "
                    f"level (or set model.depth to the list's length - 1, or model.widths=null for base_width * 2**i)"
                )
        self.depth, self.shuffle = depth, int(pixel_shuffle)
        self.stem = double_conv(in_channels * self.shuffle**2, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(widths[i], widths[i + 1])) for i in range(depth)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in reversed(range(depth)):
            if bilinear:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                        nn.Conv2d(widths[i + 1], widths[i], 1, bias=False),
                    )
                )
            else:
                self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.fuse.append(double_conv(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], num_classes * self.shuffle**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 2**self.depth * self.shuffle)
        if self.shuffle > 1:
            x = F.pixel_unshuffle(x, self.shuffle)
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self.dropout(skips.pop())
        for up, fuse in zip(self.up, self.fuse):
            y = fuse(torch.cat([skips.pop(), up(y)], dim=1))
        y = self.head(y)
        if self.shuffle > 1:
            y = F.pixel_shuffle(y, self.shuffle)
        return crop_to(y, size)
