"""Any folder of images and masks: ``images/`` and ``masks/`` paired by file stem.

Splits come from list files (``<root>/<split>.txt``, one stem or file name per line) or, without them,
from a shuffle with a fixed seed cut by ratio, so the same folder always splits the same way. Masks may
hold ids or RGB colours; the label table says which (``source_colors`` / ``rgb_masks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from segkit import SegkitError
from segkit.data.datasets.base import PairedFilesDataset, list_images, require_dir
from segkit.data.labels import LabelTable

LAYOUT = """  <root>/images/<name>.{png,jpg,...}
  <root>/masks/<name>.png                  (same stem; ids, or RGB colours listed in the label table)
  <root>/{train,val,test}.txt              (optional: one name per line; else split by data.dataset.ratios)"""


class ImageMaskFolder(PairedFilesDataset):
    def __init__(
        self,
        split: str,
        labels: LabelTable,
        root: str | Path | None = None,
        ratios: Mapping[str, float] | None = None,
        split_seed: int = 0,
        images: str = "images",
        masks: str = "masks",
    ) -> None:
        if root is None:
            raise SegkitError(f"data=folder needs data.root=/path/to/folder.\nExpected layout:\n{LAYOUT}")
        root = Path(root).expanduser()
        require_dir(root, "folder dataset root", LAYOUT)
        image_dir, mask_dir = root / images, root / masks
        require_dir(image_dir, "image folder", LAYOUT)
        require_dir(mask_dir, "mask folder", LAYOUT)
        by_stem = {p.stem: p for p in list_images(image_dir)}
        masks_by_stem = {p.stem: p for p in list_images(mask_dir)}
        stems = self._split(root, split, sorted(by_stem), ratios or {"train": 0.8, "val": 0.2}, split_seed)
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise SegkitError(
                f"{root / f'{split}.txt'}: {len(unknown)} name(s) have no image in {image_dir}, "
                f"first: {', '.join(unknown[:5])}"
            )
        missing = [str(by_stem[s]) for s in stems if s not in masks_by_stem]
        if missing:
            raise SegkitError(
                f"folder dataset {split}: {len(missing)} image(s) have no mask with the same stem in "
                f"{mask_dir}, first: {', '.join(missing[:5])}"
            )
        pairs = [(by_stem[s], masks_by_stem[s]) for s in stems]
        super().__init__(pairs, labels, name=f"folder {split}")

    @staticmethod
    def _split(root: Path, split: str, stems: list[str], ratios: Mapping[str, float], seed: int) -> list[str]:
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            return [Path(line.strip()).stem for line in list_file.read_text().splitlines() if line.strip()]
        if split not in ratios:
            raise SegkitError(
                f"folder dataset: no list file '{list_file}' and no ratio for split '{split}' in "
                f"data.dataset.ratios={dict(ratios)}.\nExpected layout:\n{LAYOUT}"
            )
        if not stems:
            raise SegkitError(f"folder dataset: no images in '{root}'.\nExpected layout:\n{LAYOUT}")
        order = np.random.default_rng(seed).permutation(len(stems))
        total = sum(float(v) for v in ratios.values())
        start = 0.0
        for name, ratio in ratios.items():
            end = start + float(ratio) / total
            if name == split:
                lo, hi = round(start * len(stems)), round(end * len(stems))
                return sorted(stems[i] for i in order[lo:hi])
            start = end
        raise AssertionError("unreachable")
