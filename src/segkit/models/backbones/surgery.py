"""First-convolution surgery: a trunk built for RGB takes ``in_channels`` inputs (RGB-D, grey) and keeps its RGB
filters."""

from __future__ import annotations

import torch
from torch import nn

from segkit import SegkitError


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution for ``in_channels`` inputs: RGB filters kept, extra channels get their mean."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        old = conv.weight
        keep = min(in_channels, old.shape[1])
        new.weight[:, :keep] = old[:, :keep]
        if in_channels > keep:
            new.weight[:, keep:] = old.mean(dim=1, keepdim=True)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` found in ``model`` (in module order) for one taking ``in_channels``;
    for wrapped models whose stem has no fixed attribute name (torchvision's segmentation models)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, adapt_first_conv(module, in_channels))
            return model
    raise SegkitError(f"{type(model).__name__} has no Conv2d to adapt to in_channels={in_channels}")
