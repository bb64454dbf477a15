"""Albumentations pipelines, built from a few config values.

Masks enter as uint8 train ids (``ignore_index`` for void), so padding and rotation fill with ignore
and resizing uses nearest neighbour; the wrapper turns them into int64 tensors afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from segkit import SegkitError
from segkit.data.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizeChannels(A.ImageOnlyTransform):
    """``(x / 255 - mean) / std`` over however many channels the image has (3 for RGB, 4 for RGB-D).

    The first C entries of ``mean``/``std`` are used, so one config with a depth entry serves both
    the RGB and the RGB-D run of a dataset.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, p: float = 1.0):
        super().__init__(p=p)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        channels = 1 if img.ndim == 2 else img.shape[2]
        if channels > min(len(self.mean), len(self.std)):
            raise SegkitError(
                f"the image has {channels} channels but mean/std give {len(self.mean)}/{len(self.std)}; "
                f"add an entry per channel to data.input.mean and data.input.std"
            )
        mean = np.asarray(self.mean[:channels], dtype=np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(self.std[:channels], dtype=np.float32) * 255.0)
        if img.dtype == np.uint8 and img.ndim == 3 and channels <= 4:  # a 256-entry lookup: ~6x faster than math
            lut = (np.arange(256, dtype=np.float32)[:, None] - mean) * inv_std
            return cv2.LUT(img, np.ascontiguousarray(lut.reshape(256, 1, channels)))
        return (img.astype(np.float32) - mean) * inv_std

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std")


class FocusCrop(A.CropNonEmptyMaskIfExists):
    """A random ``height`` x ``width`` crop around a pixel of one of ``classes`` (train ids), chosen uniformly among
    their pixels at a random place in the window; a plain random crop when none of them is in the image.

    Used with probability ``focus_p`` in place of the random crop (``train_transforms(focus_classes=...)``), it
    shows the net its thin or rare classes (pole, sign, pedestrian) more often than their share of the pixels.
    """

    def __init__(self, height: int, width: int, classes: Sequence[int], p: float = 1.0) -> None:
        super().__init__(height, width, p=p)
        self.classes = [int(c) for c in classes]

    def _preprocess_mask(self, mask: np.ndarray) -> np.ndarray:
        if self.height > mask.shape[0] or self.width > mask.shape[1]:
            raise ValueError(f"crop ({self.height}, {self.width}) is larger than the image {mask.shape[:2]}")
        return np.isin(mask, self.classes)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "classes")


def check_focus_classes(transform: Callable, num_classes: int, table: str) -> None:
    """``focus_classes`` are train ids of the table; one it does not have would silently never draw a crop."""
    for step in getattr(transform, "transforms", []):
        check_focus_classes(step, num_classes, table)  # FocusCrop sits inside OneOf
        unknown = [c for c in getattr(step, "classes", None) or [] if not 0 <= c < num_classes]
        if type(step).__name__ == "FocusCrop" and unknown:
            raise SegkitError(
                f"data.train_transform.focus_classes has {unknown}, not a train id of label table '{table}' "
                f"(0-{num_classes - 1}); list train ids, e.g. [2] for CamVid's pole"
            )


MAX_SIDE = 8192  # pixels; larger sizes are typos (or hostile stored configs) that would allocate gigabytes


def check_number(key: str, value: Any, low: float, high: float, what: str) -> None:
    """A real number from ``low`` to ``high`` (not a bool, nan or text); one line naming the key and the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= float(value) <= high
    if not ok:
        raise SegkitError(f"{key}={value!r}; use {what} from {low:g} to {high:g}")


def check_size(key: str, size: Sequence[int] | None) -> None:
    """``[height, width]`` of positive whole numbers up to ``MAX_SIDE``, or None; one line naming the key."""
    if size is None:
        return
    ok = isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size):
        raise SegkitError(f"{key}={size!r}; give [height, width] in pixels, each from 1 to {MAX_SIDE}")


def train_transforms(
    crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    rotate: float = 0.0,
    base_size: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
    crop: str = "scale",
    area_range: Sequence[float] = (0.25, 1.0),
    ratio_range: Sequence[float] = (0.75, 1.3333),
    focus_classes: Sequence[int] | None = None,
    focus_p: float = 0.5,
) -> A.Compose:
    """Resize to ``base_size`` (optional), random scale, pad with ignore, random crop, flip, jitter, normalise.

    ``crop='resized'`` swaps scale + pad + crop for RandomResizedCrop to ``crop_size`` (a crop of
    ``area_range`` of the image with aspect ``ratio_range``, resized): the other seed recipe's pipeline.
    ``focus_classes`` (train ids): with probability ``focus_p`` the random crop is a ``FocusCrop`` that holds a
    pixel of one of them.
    """
    if crop not in ("scale", "resized"):
        raise SegkitError(f"data.train_transform.crop={crop!r}; use 'scale' (scale+pad+crop) or 'resized'")
    if focus_classes and (crop != "scale" or crop_size is None):
        raise SegkitError(
            "data.train_transform.focus_classes needs crop=scale and data.input.crop_size=[h, w] to place"
        )
    if focus_classes and int(ignore_index) in [int(c) for c in focus_classes]:
        raise SegkitError(
            f"data.train_transform.focus_classes holds the ignore id {int(ignore_index)}; list train ids of classes"
        )
    check_number("data.train_transform.focus_p", focus_p, 0.0, 1.0, "a probability")
    check_number("data.train_transform.hflip", hflip, 0.0, 1.0, "a probability")
    check_number("data.train_transform.color_jitter", color_jitter, 0.0, 1.0, "a jitter strength")
    check_number("data.train_transform.rotate", rotate, 0.0, 180.0, "a largest angle in degrees")
    check_size("data.input.crop_size", None if crop_size is None else list(crop_size))
    check_size("data.train_transform.base_size", None if base_size is None else list(base_size))
    if crop == "resized" and crop_size is None:
        raise SegkitError("data.train_transform.crop=resized needs a crop size: set data.input.crop_size=[h, w]")
    steps: list[A.BasicTransform] = []
    if base_size is not None:
        steps.append(
            A.Resize(
                int(base_size[0]),
                int(base_size[1]),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if crop == "resized":
        steps.append(
            A.RandomResizedCrop(
                size=(int(crop_size[0]), int(crop_size[1])),
                scale=(float(area_range[0]), float(area_range[1])),
                ratio=(float(ratio_range[0]), float(ratio_range[1])),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
        crop_size = None
    elif (lo, hi) != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(lo - 1.0, hi - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    if rotate:
        steps.append(A.Rotate(limit=rotate, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index, p=0.5))
    if crop_size is not None:
        h, w = int(crop_size[0]), int(crop_size[1])
        steps.append(
            A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index)
        )
        if focus_classes and focus_p > 0:
            p = float(focus_p)
            steps.append(A.OneOf([FocusCrop(h, w, focus_classes, p=p), A.RandomCrop(h, w, p=1.0 - p)], p=1.0))
        else:
            steps.append(A.RandomCrop(h, w))
    if hflip:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter:
        steps.append(
            A.ColorJitter(
                brightness=color_jitter,
                contrast=color_jitter,
                saturation=color_jitter,
                hue=min(0.5, color_jitter / 4),
                p=0.8,
            )
        )
    steps += [NormalizeChannels(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)
