"""ENet (Paszke et al., 2016): a ~0.37M-parameter encoder-decoder built for real-time segmentation.

The encoder is heavy and the decoder light (the paper's argument: upsampling only refines detail). Downsampling
bottlenecks keep their max-pooling indices so the matching upsampling bottlenecks can max-unpool with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError
from segkit.models.base import SegmentationNet
from segkit.models.blocks import crop_to, pad_to_multiple

STEM_CHANNELS = 16


def conv_bn_prelu(
    cin: int,
    cout: int,
    kernel: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    stride: int = 1,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    )


class InitialBlock(nn.Module):
    """A stride-2 3x3 conv concatenated with the max-pooled input: 16 channels at half resolution.

    With RGB input that is the paper's 13 filters + 3 pooled channels; other inputs keep the 16 by giving the
    convolution ``16 - in_channels`` filters, so the rest of the network (and its unpooling indices) is unchanged.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels >= STEM_CHANNELS:
            raise SegkitError(
                f"ENet's initial block concatenates the pooled input into {STEM_CHANNELS} channels, so in_channels="
                f"{in_channels} is too many; use fewer than {STEM_CHANNELS} input channels or another model"
            )
        self.conv = nn.Conv2d(in_channels, STEM_CHANNELS - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(STEM_CHANNELS)
        self.act = nn.PReLU(STEM_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class Bottleneck(nn.Module):
    """Residual bottleneck: 1x1 reduce (to a quarter), a middle conv, 1x1 expand, spatial dropout.

    ``kind``: ``regular`` (3x3), ``dilated`` (3x3 with ``dilation``) or ``asymmetric`` (5x1 then 1x5).
    """

    def __init__(self, channels: int, kind: str = "regular", dilation: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        mid = channels // 4
        if kind == "asymmetric":
            middle = nn.Sequential(
                nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                conv_bn_prelu(mid, mid, (1, 5), padding=(0, 2)),
            )
        else:
            middle = conv_bn_prelu(mid, mid, 3, padding=dilation, dilation=dilation)
        self.branch = nn.Sequential(
            conv_bn_prelu(channels, mid),
            middle,
            nn.Conv2d(mid, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


class DownBottleneck(nn.Module):
    """Halves resolution: the main path max-pools (keeping indices) and zero-pads channels; the branch uses a
    strided 2x2 conv instead of the 1x1 reduction."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.1) -> None:
        super().__init__()
        mid = cout // 4
        self.extra = cout - cin
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.branch = nn.Sequential(
            conv_bn_prelu(cin, mid, 2, stride=2),
            conv_bn_prelu(mid, mid, 3, padding=1),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = self.pool(x)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra))
        return self.act(main + self.branch(x)), indices


class UpBottleneck(nn.Module):
    """Doubles resolution: the main path is a 1x1 conv then max-unpooling with the encoder's indices; the branch
    upsamples with a 3x3 transposed conv."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.1) -> None:
        super().__init__()
        mid = cin // 4
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.unpool = nn.MaxUnpool2d(2)
        self.reduce = conv_bn_prelu(cin, mid)
        self.up = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.up_act = nn.Sequential(nn.BatchNorm2d(mid), nn.PReLU(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Dropout2d(dropout))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        main = self.unpool(self.main(x), indices)
        branch = self.expand(self.up_act(self.up(self.reduce(x))))
        return self.act(main + branch)


MIDDLE_STAGE = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 1),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 1),
    ("dilated", 16),
)


def middle_stage(channels: int, dropout: float) -> nn.Sequential:
    """Stages 2 and 3: regular, dilated 2, asymmetric, dilated 4, regular, dilated 8, asymmetric, dilated 16."""
    return nn.Sequential(*(Bottleneck(channels, kind, dilation, dropout) for kind, dilation in MIDDLE_STAGE))


class ENet(SegmentationNet):
    """ENet: initial block, stages 1-3 (encoder, 1/8 resolution), stages 4-5 (decoder), a full conv to classes.

    Any input size: padded to a multiple of 8 and cropped back. ``dropout`` is the spatial dropout after stage 1
    (``dropout_stage1`` in stage 1), as in the paper. Trained from scratch, it has no pretrained trunk
    (``backbone`` is None).
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, dropout_stage1: float = 0.01, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.initial = InitialBlock(in_channels)
        self.down1 = DownBottleneck(STEM_CHANNELS, 64, dropout_stage1)
        self.stage1 = nn.Sequential(*(Bottleneck(64, dropout=dropout_stage1) for _ in range(4)))
        self.down2 = DownBottleneck(64, 128, dropout)
        self.stage2 = middle_stage(128, dropout)
        self.stage3 = middle_stage(128, dropout)
        self.up4 = UpBottleneck(128, 64, dropout)
        self.stage4 = nn.Sequential(Bottleneck(64, dropout=dropout), Bottleneck(64, dropout=dropout))
        self.up5 = UpBottleneck(64, STEM_CHANNELS, dropout)
        self.stage5 = Bottleneck(STEM_CHANNELS, dropout=dropout)
        self.classifier = nn.ConvTranspose2d(STEM_CHANNELS, num_classes, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 8)
        y = self.initial(x)
        y, idx1 = self.down1(y)
        y, idx2 = self.down2(self.stage1(y))
        y = self.stage3(self.stage2(y))
        y = self.stage4(self.up4(y, idx2))
        y = self.stage5(self.up5(y, idx1))
        return crop_to(self.classifier(y), size)
