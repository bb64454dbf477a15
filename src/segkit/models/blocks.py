"""Every layer shared by several nets, written once: conv-BN(-ReLU), the FCN head, ASPP, resizing, padding to a
stride multiple and cropping back, bilinear upsampler kernels, and the main logits of a net's output.

Layouts follow torchvision's segmentation heads, so nets built from them match torchvision's parameter counts
(and could load its weights) where the architecture is the same. The conv blocks are ``nn.Sequential`` with the
convolution at index 0 and the norm at 1, so state-dict keys read ``<block>.0.weight`` / ``<block>.1.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """Conv (no bias: BN follows) -> BatchNorm, "same" padding for odd kernels; the linear projections of
    residual and gating blocks (BiSeNetV2, ICNet's cascade fusion) that must not end in a ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class ConvBNReLU(ConvBN):
    """Conv (no bias) -> BatchNorm -> ReLU, "same" padding for odd kernels: the basic unit of most heads. Takes
    ``ConvBN``'s arguments."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.append(nn.ReLU(inplace=True))


class SeparableConvBNReLU(nn.Sequential):
    """Atrous depthwise-separable conv (DeepLabv3+): a depthwise ``kernel_size`` conv at ``dilation``, a 1x1
    pointwise conv, then BatchNorm and ReLU, as segmentation_models_pytorch builds it; for 2048 input channels it
    has ~1/9 of a full 3x3 conv's weights and FLOPs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, 1, padding, dilation, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FCNHead(nn.Sequential):
    """3x3 conv-BN-ReLU to ``inter_channels`` (default ``in_channels // 4``), dropout, 1x1 classifier:
    torchvision's FCN/auxiliary head, also PSPNet's and BiSeNetV2's heads. ``channel_dropout`` drops whole
    feature maps (``Dropout2d``, as EncNet's reference code) instead of single activations."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.1,
        inter_channels: int | None = None,
        channel_dropout: bool = False,
    ) -> None:
        inter = inter_channels or in_channels // 4
        drop = nn.Dropout2d(dropout) if channel_dropout else nn.Dropout(dropout)
        super().__init__(ConvBNReLU(in_channels, inter, 3), drop, nn.Conv2d(inter, num_classes, 1))


class ASPPPooling(nn.Module):
    """Image-level features: global average, 1x1 conv-BN-ReLU, broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x)).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1x1 branch, one 3x3 branch per rate, image pooling,
    concatenated and projected to ``out_channels``. ``separable`` makes the atrous branches depthwise-separable
    (DeepLabv3+)."""

    def __init__(
        self,
        in_channels: int,
        rates: tuple[int, ...] = (12, 24, 36),
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: bool = False,
    ) -> None:
        super().__init__()
        atrous = SeparableConvBNReLU if separable else ConvBNReLU
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [atrous(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNReLU(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) to ``size``; a no-op when already that size (where bilinear
    interpolation would copy the values anyway)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (bottom/right) up to a multiple; returns the padded tensor and the original size.

    Nets whose strides must divide the input use it with ``crop_to`` to accept any H x W (the net contract)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The top-left ``size`` of ``x``: undoes ``pad_to_multiple``."""
    return x[..., : size[0], : size[1]]


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights that make a ConvTranspose2d(channels, channels, k, stride=k//2) a bilinear upsampler."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = kernel
    return weight


class EdgePaddedConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution of its input extended by one replicated pixel on each side, cropped back by one
    stride. On a zero-padded map a bilinear deconvolution fades the outer ``stride / 2`` output pixels of every edge
    towards zero (they miss a neighbour's contribution); with the edge replicated it equals bilinear interpolation
    (``align_corners=False``) everywhere. The weights are the same tensor, so state dicts do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        out = super().forward(F.pad(x, (1, 1, 1, 1), mode="replicate"))
        return out[..., sh:-sh, sw:-sw]


def bilinear_upsampler(
    channels: int, stride: int, replicate_edges: bool = False, padding: int | None = None
) -> nn.ConvTranspose2d:
    """A learnable x``stride`` upsampler initialised to exact bilinear interpolation (output = stride * input);
    ``replicate_edges`` keeps the border from darkening (``EdgePaddedConvTranspose2d``); ``padding`` defaults to
    ``stride // 2`` (output = stride * input), 0 is Caffe's Deconvolution (the FCN crops its margin itself)."""
    cls = EdgePaddedConvTranspose2d if replicate_edges else nn.ConvTranspose2d
    pad = stride // 2 if padding is None else padding
    up = cls(channels, channels, 2 * stride, stride=stride, padding=pad, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * stride))
    return up


def main_logits(out: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The B x K x H x W logits of a net's output: the tensor itself, or ``out["out"]`` of a net that also
    returns auxiliary outputs (the net contract: ``segkit.models.base.SegmentationNet``)."""
    return out["out"] if isinstance(out, Mapping) else out
