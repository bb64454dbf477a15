"""Helpers shared by nets: padding to a stride multiple and cropping back, bilinear kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (bottom/right) up to a multiple; returns the padded tensor and the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
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


def bilinear_upsampler(channels: int, stride: int) -> nn.ConvTranspose2d:
    """A learnable x``stride`` upsampler initialised to exact bilinear interpolation (output = stride * input)."""
    up = nn.ConvTranspose2d(channels, channels, 2 * stride, stride=stride, padding=stride // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * stride))
    return up
