"""The training targets of auxiliary heads, derived from a batch's masks: the masks at a coarser head's own size
(ICNet's cascade label guidance) and which classes each image holds (EncNet's SE-loss)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segkit import SegkitError


def aux_stride(label_size: Sequence[int], output_size: Sequence[int]) -> int | None:
    """The power-of-two stride ``s`` at which a map of ``output_size`` covers a ``label_size`` input (``ceil(H /
    s)`` x ``ceil(W / s)`` cells, as a net that pads its input to a multiple of its stride and crops back gives),
    or None."""
    (height, width), target, stride = label_size, tuple(output_size), 1
    while stride <= max(height, width):
        if (-(-height // stride), -(-width // stride)) == target:
            return stride
        stride *= 2
    return None


def masks_at_size(masks: torch.Tensor, size: Sequence[int], ignore_index: int = 255) -> torch.Tensor:
    """B x H x W train ids at the size of a coarser auxiliary output (ICNet's cascade label guidance): the label at
    the centre of each ``stride`` x ``stride`` cell the output predicts, the cells past the mask's edge padded with
    ``ignore_index`` as the net padded its input, so labels are never interpolated nor shifted. The masks themselves
    when already that size; a size that is no power-of-two fraction of the mask is an error."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    stride = aux_stride(masks.shape[-2:], size)
    if stride is None:
        raise SegkitError(
            f"an auxiliary output of size {tuple(size)} does not cover the {tuple(masks.shape[-2:])} mask at a "
            "power-of-two stride; a net's auxiliary maps must be its input size or ceil(size / 2**k) (crop them back "
            "as segkit.models.nets.icnet does)"
        )
    height, width = size
    padded = F.pad(
        masks, (0, width * stride - masks.shape[-1], 0, height * stride - masks.shape[-2]), value=ignore_index
    )
    return padded[..., stride // 2 :: stride, stride // 2 :: stride]


def class_presence(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B x H x W train ids -> B x K floats, 1 where the class occurs in that image (ignore pixels skipped)."""
    valid = (masks >= 0) & (masks < num_classes)
    flat = torch.where(valid, masks, torch.full_like(masks, num_classes)).flatten(1)
    counts = torch.zeros(masks.shape[0], num_classes + 1, device=masks.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float32)
    )
    return (counts[:, :num_classes] > 0).float()
