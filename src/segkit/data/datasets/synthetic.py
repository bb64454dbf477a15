"""Procedural scenes of textured shapes: the bundled dataset that needs no download.

Every object's colour is random, so a model has to learn shape and texture, not colour: discs are
flat, boxes striped, triangles checkered, rings flat but hollow, ellipses dotted; they overlap and sit
on a noisy gradient background. Scene ``i`` of a split is a pure function of ``(seed, split, i)``.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np
from torch.utils.data import Dataset

from segkit import SegkitError
from segkit.data.labels import LabelTable
from segkit.data.transforms import MAX_SIDE

CLASS_NAMES = ("background", "disc", "box", "triangle", "ring", "dotted_ellipse")


MAX_SAMPLES = 100_000  # per split; each sample is generated on demand


class SyntheticShapes(Dataset):
    def __init__(
        self,
        split: str,
        labels: LabelTable,
        num_samples: dict | int = 256,
        height: int = 128,
        width: int = 128,
        max_objects: int = 6,
        noise: float = 12.0,
        seed: int = 0,
    ) -> None:
        if tuple(labels.names) != CLASS_NAMES:
            raise SegkitError(f"synthetic data needs the 'synthetic' label table with classes {list(CLASS_NAMES)}")
        if isinstance(num_samples, int):
            self.length = num_samples
        else:
            if split not in num_samples:
                raise SegkitError(f"data.dataset.num_samples has no entry for split '{split}'; add one")
            self.length = int(num_samples[split])
        if not 0 <= self.length <= MAX_SAMPLES:
            raise SegkitError(f"data.dataset.num_samples: {self.length} for '{split}'; use 0 to {MAX_SAMPLES}")
        for key, value, high in (
            ("height", height, MAX_SIDE),
            ("width", width, MAX_SIDE),
            ("max_objects", max_objects, 256),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= high:
                raise SegkitError(f"data.dataset.{key}={value!r}; use a whole number from 1 to {high}")
        self.split, self.labels = split, labels
        self.height, self.width, self.max_objects, self.noise = height, width, max_objects, noise
        self.base_seed = zlib.crc32(f"{seed}/{split}".encode())

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.base_seed, index])
        return render_scene(rng, self.height, self.width, self.max_objects, self.noise)


def render_scene(rng: np.random.Generator, h: int, w: int, max_objects: int, noise: float):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    t = (np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h)[..., None]
    image = c0 * (1 - t) + c1 * t
    mask = np.zeros((h, w), dtype=np.int64)
    side = min(h, w)
    for _ in range(int(rng.integers(2, max_objects + 1))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        r = rng.uniform(0.09, 0.22) * side
        angle = rng.uniform(0, 180)
        shape = np.zeros((h, w), dtype=np.uint8)
        center = (int(cx), int(cy))
        if cls == 1:
            cv2.circle(shape, center, int(r), 1, -1)
        elif cls == 2:
            box = cv2.boxPoints(((cx, cy), (2 * r, r * rng.uniform(0.8, 1.6)), angle))
            cv2.fillPoly(shape, [box.astype(np.int32)], 1)
        elif cls == 3:
            a = np.deg2rad(angle) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
            tri = np.stack([cx + 1.3 * r * np.cos(a), cy + 1.3 * r * np.sin(a)], 1)
            cv2.fillPoly(shape, [tri.astype(np.int32)], 1)
        elif cls == 4:
            cv2.circle(shape, center, int(r), 1, max(2, int(r * 0.35)))
        else:
            cv2.ellipse(shape, (center, (int(2.2 * r), int(1.2 * r)), angle), 1, -1)
        inside = shape.astype(bool)
        color = rng.uniform(0, 255, size=3)
        contrast = (color + 128) % 256  # every channel 128 levels away: textures never fade out
        texture = _texture(cls, xx, yy, rng)[..., None]
        image[inside] = (color * texture + (1 - texture) * contrast)[inside]
        mask[inside] = cls
    image = cv2.GaussianBlur(image, (3, 3), 0.7)
    image += rng.normal(0, noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _texture(cls: int, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 pattern per class: 1 = the object's colour, 0 = its contrasting colour."""
    period = rng.uniform(0.07, 0.11) * min(xx.shape)
    phase = rng.uniform(0, period)
    if cls == 2:  # stripes
        return (((yy + phase) // (period / 2)) % 2).astype(np.float32)
    if cls == 3:  # checker
        return ((((xx + phase) // (period / 2)) + ((yy + phase) // (period / 2))) % 2).astype(np.float32)
    if cls == 5:  # dots
        d = np.hypot((xx + phase) % period - period / 2, (yy + phase) % period - period / 2)
        return (d > period / 4).astype(np.float32)
    return np.ones_like(xx)
