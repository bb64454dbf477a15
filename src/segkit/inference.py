"""How a trained net is applied to whole images: as is, resized, in sliding windows, or at several scales.

Each mode is a small callable ``mode(net, images) -> probabilities`` (B x K x H x W softmax at the input
size), built from ``conf/inference/*.yaml`` with Hydra. Probabilities rather than logits are what
overlapping windows and test-time augmentations average, so modes compose: ``MultiScale(base=SlidingWindow())``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from segkit.models.blocks import main_logits, resize_to

Inference = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def resolve_device(device: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA request without a GPU is an error."""
    from segkit import SegkitError

    name = str(device or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SegkitError(f"device={name} but no CUDA GPU is available; use device=cpu")
    return torch.device(name)


def net_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The main-head logits of a net that returns a tensor or a dict with ``out`` (auxiliary heads dropped)."""
    return main_logits(net(images))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def at_label_size(
    scores: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(scores, masks)`` pairs at the masks' own resolution, ready to argmax and score.

    ``scores`` (B x K x h x w logits or probabilities of a possibly resized input) are resized bilinearly to the
    masks where sizes differ, as mmseg and the official benchmark scripts do, so a net that saw a downscaled image
    is still scored against every labelled pixel. ``masks`` is a B x H x W tensor or a list of H_i x W_i tensors
    (a batch of mixed original sizes): one pair for the batch, or one per image.
    """
    if isinstance(masks, torch.Tensor):
        return [(resize_to(scores, tuple(masks.shape[-2:])), masks)]
    return [(resize_to(scores[i : i + 1], tuple(m.shape[-2:])), m[None]) for i, m in enumerate(masks)]


class WholeImage:
    """The net sees the full image once (nets accept any size)."""

    def __call__(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return net_logits(net, images).float().softmax(1)

    def __repr__(self) -> str:
        return "WholeImage()"


class Resized:
    """The image is resized to ``size`` (H, W) for the net, e.g. the resolution it was trained at; the
    logits are resized back, so predictions are always at the input size. ``size=None``: the net's own eval size
    (its input spec's, filled in by ``mode_for``)."""

    def __init__(self, size: int | Sequence[int] | None = None) -> None:
        self.size = None if size is None else _pair(size)

    def __call__(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            raise ValueError("Resized() needs a size: give inference.size=[h, w] or let mode_for fill in the net's")
        logits = net_logits(net, resize_to(images, self.size))
        return resize_to(logits.float(), tuple(images.shape[-2:])).softmax(1)

    def __repr__(self) -> str:
        return f"Resized(size={self.size})"


def mode_for(spec, chosen: Inference | None = None) -> Inference:
    """How a net with input spec ``spec`` is applied: ``chosen`` (an ``inference=`` choice) if given, else the way
    training validated it (``spec.inference()``: resized to its eval size, or whole images). A ``Resized`` without
    a size takes the spec's eval size (the whole image where the net has none)."""
    if chosen is None:
        return spec.inference()
    if isinstance(chosen, Resized) and chosen.size is None:
        return spec.inference()
    return chosen


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Offsets of windows of length ``crop`` covering ``0..size`` with step ``stride``; the last one ends at the
    border (so it may overlap its neighbour more)."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, stride))
    if starts[-1] != size - crop:
        starts.append(size - crop)
    return starts


class SlidingWindow:
    """Crops of ``crop`` (H, W) every ``stride`` pixels, ``batch_size`` windows per forward pass; the softmax of
    overlapping windows is averaged. Windows are clipped to the image, so a crop at least as large as the
    image is exactly whole-image inference.

    Used for large images (Cityscapes at 1024x2048) that a net trained on crops should see at full resolution.
    """

    def __init__(
        self, crop: int | Sequence[int] = 512, stride: int | Sequence[int] | None = None, batch_size: int = 4
    ) -> None:
        self.crop = _pair(crop)
        self.stride = (
            _pair(stride) if stride is not None else (max(1, self.crop[0] * 2 // 3), max(1, self.crop[1] * 2 // 3))
        )
        if min(self.crop) < 1 or min(self.stride) < 1:
            raise ValueError(f"crop {self.crop} and stride {self.stride} must be positive")
        self.batch_size = max(1, int(batch_size))

    def __call__(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        ch, cw = min(self.crop[0], h), min(self.crop[1], w)
        boxes = [(y, x) for y in window_starts(h, ch, self.stride[0]) for x in window_starts(w, cw, self.stride[1])]
        probs: torch.Tensor | None = None
        counts = torch.zeros(1, 1, h, w, device=images.device)
        per_pass = max(1, self.batch_size // b)
        for i in range(0, len(boxes), per_pass):
            chunk = boxes[i : i + per_pass]
            windows = torch.cat([images[..., y : y + ch, x : x + cw] for y, x in chunk])
            out = net_logits(net, windows).float().softmax(1)
            if probs is None:
                probs = torch.zeros(b, out.shape[1], h, w, device=images.device)
            for (y, x), window_probs in zip(chunk, out.split(b), strict=True):
                probs[..., y : y + ch, x : x + cw] += window_probs
                counts[..., y : y + ch, x : x + cw] += 1
        assert probs is not None
        return probs / counts

    def __repr__(self) -> str:
        return f"SlidingWindow(crop={self.crop}, stride={self.stride}, batch_size={self.batch_size})"


class MultiScale:
    """Test-time augmentation: ``base`` inference at each scale of the image (and its horizontal mirror when
    ``flip``), probabilities resized back to the input size and averaged. Scale 1 without flip is ``base``."""

    def __init__(
        self,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        flip: bool = True,
        base: Inference | None = None,
    ) -> None:
        if not scales:
            raise ValueError("MultiScale needs at least one scale")
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.base = base if base is not None else WholeImage()

    def __call__(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        total: torch.Tensor | None = None
        n = 0
        for scale in self.scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            scaled = resize_to(images, size)
            for flipped in (False, True) if self.flip else (False,):
                x = scaled.flip(-1) if flipped else scaled
                probs = self.base(net, x)
                probs = resize_to(probs.flip(-1) if flipped else probs, (h, w))
                total = probs if total is None else total + probs
                n += 1
        assert total is not None
        return total / n

    def __repr__(self) -> str:
        return f"MultiScale(scales={list(self.scales)}, flip={self.flip}, base={self.base!r})"


@torch.inference_mode()
def predict_probs(
    net: nn.Module, images: torch.Tensor, mode: Inference | None = None, precision: str = "fp32"
) -> torch.Tensor:
    """``mode(net, images)`` in eval mode without gradients, under autocast for ``fp16``/``bf16``."""
    mode = mode or WholeImage()
    net.eval()
    dtype = {"fp32": None, "32": None, "fp16": torch.float16, "16": torch.float16, "bf16": torch.bfloat16}
    if str(precision) not in dtype:
        raise ValueError(f"precision={precision!r}; use fp32, fp16 or bf16")
    if dtype[str(precision)] is None:
        return mode(net, images)
    with torch.autocast(device_type=images.device.type, dtype=dtype[str(precision)]):
        return mode(net, images).float()
