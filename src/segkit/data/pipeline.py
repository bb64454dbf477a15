"""What a split goes through between its dataset and the net: decoded samples kept in memory (optional), the
transform applied to each ``(image, mask)`` item, evaluation batches that may mix image sizes, and those batches taken
apart again into pieces of one size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class DecodedCache(Dataset):
    """``dataset``'s ``(image, mask)`` samples kept in memory once read, up to ``limit_mb`` MiB; samples past the
    limit are read from their files every time. Decoding is most of what loading a training sample costs (a CamVid
    batch of 4: 34 ms from the files, 7 ms from memory, docs/measurements.md), and on a small CPU the process that
    decodes takes time from the net's threads. Masks whose values fit are kept as uint8 and handed back in their own dtype; each
    read returns copies, so nothing downstream can change a kept sample. The memory is per process: each DataLoader
    worker fills its own copy (``data.num_workers=0`` keeps one, in the training process)."""

    def __init__(self, dataset: Dataset, limit_mb: float) -> None:
        self.dataset, self.limit = dataset, int(limit_mb * 2**20)
        self.kept: dict[int, tuple] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's own attributes (pairs, labels, name ...)
        if name in ("dataset", "kept", "limit", "bytes"):  # not yet set (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple:
        kept = self.kept.get(index)
        if kept is None:
            sample = self.dataset[index]
            if self.bytes >= self.limit:
                return sample
            kept = tuple(_compact(a) for a in sample)
            size = sum(a[0].nbytes if isinstance(a, tuple) else getattr(a, "nbytes", 0) for a in kept)
            if self.bytes + size > self.limit:
                return sample
            self.kept[index], self.bytes = kept, self.bytes + size
        return tuple(a[0].astype(a[1]) if isinstance(a, tuple) else _copy(a) for a in kept)

    def mask(self, index: int) -> np.ndarray:
        """The remapped mask alone (class statistics), from memory when kept."""
        read_mask = getattr(self.dataset, "mask", None)
        if index in self.kept or read_mask is None:
            return self[index][1]
        return read_mask(index)


def _compact(value: Any) -> Any:
    """An integer mask whose values fit in a byte as ``(uint8 array, its dtype)``; anything else as it is."""
    wide_ints = isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype.kind in "iu" and value.itemsize > 1
    if wide_ints and (value.size == 0 or (value.min() >= 0 and value.max() <= 255)):
        return value.astype(np.uint8), value.dtype
    return value


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


class TransformedDataset(Dataset):
    """Applies an albumentations pipeline to ``(image, mask)`` and returns ``(float CxHxW, int64 HxW)``.

    Accepts an index or an ``(index, seed)`` pair from ``SeededSampler``; the seed fixes the augmentation.
    With ``full_mask`` (validation and test) the mask is returned as read, at its original size, whatever the
    transform does to the image: scores are computed at the labels' own resolution, the net's logits being
    resized back to the mask (``segkit.inference.at_label_size``). Eval transforms may therefore resize the
    image but must not crop or flip it.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None, full_mask: bool = False) -> None:
        self.dataset, self.transform, self.full_mask = dataset, transform, full_mask

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.dataset[index]
        original = mask
        mask = mask.astype(np.uint8)  # train ids < 256: OpenCV resizes/warps uint8 masks, not int64
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask = torch.as_tensor(np.asarray(original if self.full_mask else mask), dtype=torch.int64)
        return image, mask


def collate_eval(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    """Stacks images and masks where they agree in size; otherwise keeps them as lists, so a batch may mix
    original sizes (full-resolution masks of a resized input, or whole images of different shapes)."""
    images, masks = zip(*batch, strict=True)

    def stack(items: tuple[torch.Tensor, ...]) -> torch.Tensor | list[torch.Tensor]:
        return torch.stack(items) if len({tuple(t.shape) for t in items}) == 1 else list(items)

    return stack(images), stack(masks)


def same_size_groups(images: torch.Tensor | list[torch.Tensor], masks: Any) -> list[tuple[torch.Tensor, Any]]:
    """An evaluation batch (``collate_eval``) in pieces a net can run at once: a stacked batch as is, a list of
    mixed-size images one at a time (each with its mask, both with a batch dimension of 1)."""
    if isinstance(images, torch.Tensor):
        return [(images, masks)]
    return [(image[None], mask[None]) for image, mask in zip(images, masks, strict=True)]
