"""Class weights for imbalanced datasets, from pixel counts over the train split.

- ENet (Paszke et al. 2016): ``w_c = 1 / ln(c + p_c)``, ``p_c`` = class c's share of labelled pixels, ``c = 1.02``
  as in the paper; a larger ``c`` flattens the weights (``class_weights: {method: enet, c: 1.1}``): on CamVid
  1.02 weighs pole 7.8x building, 1.1 weighs it 2.8x.
- Median frequency (Eigen & Fergus 2015): ``w_c = median(f) / f_c``, ``f_c`` = class c's pixels over the
  labelled pixels of the images where c appears (not over all pixels of the split, so a class that fills the few
  images it appears in does not count as rare). A class absent from the split gets weight 0.

Ignore pixels count nowhere. Counting reads every train mask once, so the counts are cached on disk,
keyed by dataset, root, split and label table (``SEGKIT_CACHE_DIR``, default ``~/.cache/segkit``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from segkit import SegkitError
from segkit.data.labels import LabelTable
from segkit.files import atomic_write_text

log = logging.getLogger("segkit")
METHODS = ("enet", "median_freq")


@dataclass(frozen=True)
class ClassCounts:
    """``pixels[c]``: labelled pixels of class c; ``image_pixels[c]``: all labelled pixels of images holding c."""

    pixels: np.ndarray
    image_pixels: np.ndarray
    images: int

    @property
    def share(self) -> np.ndarray:
        total = self.pixels.sum()
        return self.pixels / total if total else np.zeros_like(self.pixels, dtype=np.float64)


def count_pixels(dataset: Dataset, num_classes: int, ignore_index: int = 255, limit: int | None = None) -> ClassCounts:
    """Pixel counts per train id over (the first ``limit`` samples of) an untransformed dataset."""
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if n == 0:
        raise SegkitError("class weights: the train split has no images")
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    read_mask = getattr(dataset, "mask", None)
    for i in range(n):
        mask = read_mask(i) if read_mask is not None else dataset[i][1]
        mask = np.asarray(mask).ravel()
        counts = np.bincount(mask[mask != ignore_index], minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0) * counts.sum()
    return ClassCounts(pixels, image_pixels, n)


def enet_weights(counts: ClassCounts, c: float = 1.02) -> np.ndarray:
    return 1.0 / np.log(c + counts.share)


def median_freq_weights(counts: ClassCounts) -> np.ndarray:
    """Eigen & Fergus (2015): ``w_c = median_c(f_c) / f_c`` with ``f_c = pixels of c / labelled pixels of the
    images that contain c`` - the denominator is ``counts.image_pixels[c]``, not the split's total, as in their
    definition ("the total number of pixels in images where c is present"); ignore pixels count in neither. The
    median is taken over the classes present in the split; absent classes get weight 0."""
    present = counts.pixels > 0
    freq = np.zeros(len(counts.pixels), dtype=np.float64)
    freq[present] = counts.pixels[present] / counts.image_pixels[present]
    if not present.any():
        raise SegkitError("class weights: the train split has no labelled pixels")
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def weights_from_counts(counts: ClassCounts, method: str, c: float = 1.02) -> np.ndarray:
    if method == "enet":
        if c <= 1.0:
            raise SegkitError(f"class_weights.c={c}; ENet weights need c > 1 (1.02 in the paper)")
        return enet_weights(counts, c)
    if method == "median_freq":
        return median_freq_weights(counts)
    raise SegkitError(f"loss.class_weights={method!r}; use one of {list(METHODS)}, a list of floats, or null")


def cached_counts(dataset: Dataset, labels: LabelTable, key: str, cache_dir: str | Path | None = None) -> ClassCounts:
    """``count_pixels`` once per (``key``, table); later calls read the JSON cache."""
    directory = Path(cache_dir or os.environ.get("SEGKIT_CACHE_DIR") or Path.home() / ".cache" / "segkit")
    digest = hashlib.sha1(f"{key}|{len(dataset)}|{labels.fingerprint()}".encode()).hexdigest()[:16]  # type: ignore[arg-type]
    path = directory / "class_counts" / f"{_slug(key)}-{labels.name}-{digest}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            counts = ClassCounts(
                np.array(data["pixels"], dtype=np.int64),
                np.array(data["image_pixels"], dtype=np.int64),
                int(data["images"]),
            )
            if len(counts.pixels) == labels.num_classes:
                return counts
        except (ValueError, KeyError, TypeError, OSError):  # truncated or foreign file: count again
            log.warning(f"class weights: the cache '{path}' is unreadable; counting the train split again")
    counts = count_pixels(dataset, labels.num_classes, labels.ignore_index)
    try:
        atomic_write_text(
            path,
            json.dumps(
                {
                    "key": key,
                    "table": labels.name,
                    "classes": list(labels.names),
                    "pixels": counts.pixels.tolist(),
                    "image_pixels": counts.image_pixels.tolist(),
                    "images": counts.images,
                },
                indent=1,
            ),
        )
    except OSError as e:
        log.warning(f"class weights: could not write the cache '{path}' ({e}); they will be counted again next run")
    return counts


def class_weights(datamodule, method: str, cache_dir: str | Path | None = None, c: float = 1.02) -> list[float]:
    """``enet`` (with its constant ``c``) or ``median_freq`` weights over the datamodule's train split, one per
    class."""
    if method not in METHODS:
        raise SegkitError(f"loss.class_weights={method!r}; use one of {list(METHODS)}, a list of floats, or null")
    split = datamodule.splits.get("train")
    key = f"{datamodule.name}|{datamodule.root}|{split}"
    counts = cached_counts(datamodule.raw_dataset("train"), datamodule.labels, key, cache_dir)
    weights = weights_from_counts(counts, method, c)
    log.info(
        f"class weights ({method}, {counts.images} train images): "
        + ", ".join(f"{n}={w:.3f}" for n, w in zip(datamodule.class_names, weights, strict=True))
    )
    return [float(w) for w in weights]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.split("|")[0])[:40]
