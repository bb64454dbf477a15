"""PASCAL VOC 2012 segmentation, optionally augmented with SBD (the 10,582-image ``train_aug``).

VOC masks are palette PNGs. OpenCV expands a palette to colours, so they are decoded back to palette
indices through the VOC palette (no PIL in the loading path); 8-bit index PNGs (e.g. SegmentationClassAug)
are read as they are. SBD masks are MATLAB files (``cls/<id>.mat``, ``GTcls.Segmentation``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import SegkitError
from segkit.data.datasets.base import PairedFilesDataset, check_pairs_exist, read_mask, require_dir
from segkit.data.labels import LabelTable
from segkit.visualize import voc_palette

LAYOUT = """  <root>/JPEGImages/<id>.jpg
  <root>/SegmentationClass/<id>.png                    (palette PNGs, 255 = border)
  <root>/ImageSets/Segmentation/{train,val,trainval}.txt
  (<root> is VOC2012/, or VOCdevkit/ or its parent holding VOCdevkit/VOC2012)
  train_aug also needs SBD (data.dataset.sbd_root): <sbd_root>/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}
  seg11valid needs <root>/ImageSets/Segmentation/seg11valid.txt (the 736-image list of the FCN paper)"""

_PALETTE = voc_palette(256).astype(np.int64)
_PALETTE_CODES = (_PALETTE[:, 0] << 16) | (_PALETTE[:, 1] << 8) | _PALETTE[:, 2]
_ORDER = np.argsort(_PALETTE_CODES)


def decode_voc_palette(rgb: np.ndarray, source: str = "mask") -> np.ndarray:
    """H x W x 3 RGB (an expanded palette PNG) -> H x W uint8 palette indices."""
    rgb = rgb.astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    sorted_codes = _PALETTE_CODES[_ORDER]
    pos = np.minimum(np.searchsorted(sorted_codes, codes), 255)
    if (sorted_codes[pos] != codes).any():
        bad = rgb[sorted_codes[pos] != codes][0].tolist()
        raise SegkitError(f"{source}: colour {bad} is not in the VOC palette; masks must be VOC palette PNGs")
    return _ORDER[pos].astype(np.uint8)


def read_voc_mask(path: Path) -> np.ndarray:
    if path.suffix == ".mat":
        return read_sbd_mat(path)
    mask = read_mask(path, color=True)
    return decode_voc_palette(mask, str(path)) if mask.ndim == 3 else mask


def read_sbd_mat(path: Path) -> np.ndarray:
    """An SBD ``cls/*.mat`` file -> H x W uint8 class ids (0 background, 1..20)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise SegkitError(f"cannot read SBD mask '{path}' (expected a .mat with GTcls.Segmentation): {e}") from None


class VOCSegmentation(PairedFilesDataset):
    """Splits: any ``ImageSets/Segmentation/<split>.txt`` (train, val, trainval, seg11valid), or ``train_aug``.

    ``train_aug`` = VOC train + SBD train + SBD val, minus VOC val (10,582 images); masks from
    ``SegmentationClass`` where VOC has one, from SBD otherwise. A ready ``train_aug.txt`` list with
    ``SegmentationClassAug`` masks is used as it is.
    """

    def __init__(self, root: str | Path, split: str, labels: LabelTable, sbd_root: str | Path | None = None) -> None:
        root = _voc_dir(Path(root).expanduser())
        lists = root / "ImageSets" / "Segmentation"
        require_dir(lists, "VOC ImageSets/Segmentation", LAYOUT)
        if split == "train_aug" and not (lists / "train_aug.txt").is_file():
            pairs = self._train_aug(root, sbd_root)
        else:
            list_file = lists / f"{split}.txt"
            if not list_file.is_file():
                raise SegkitError(
                    f"VOC split '{split}': list file '{list_file}' does not exist.\nExpected layout:\n{LAYOUT}"
                )
            mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
            pairs = [(root / "JPEGImages" / f"{i}.jpg", root / mask_dir / f"{i}.png") for i in _read_ids(list_file)]
        check_pairs_exist(pairs, f"VOC {split}")
        super().__init__(pairs, labels, name=f"VOC {split}")

    @staticmethod
    def _train_aug(root: Path, sbd_root: str | Path | None) -> list[tuple[Path, Path]]:
        if sbd_root is None:
            raise SegkitError(
                "VOC split 'train_aug' needs SBD: set data.dataset.sbd_root=/path/to/benchmark_RELEASE/dataset"
                f"\nExpected layout:\n{LAYOUT}"
            )
        sbd = Path(sbd_root).expanduser()
        require_dir(sbd / "cls", "SBD cls folder", LAYOUT)
        lists = root / "ImageSets" / "Segmentation"
        voc_val = set(_read_ids(lists / "val.txt"))
        ids = _read_ids(lists / "train.txt") + _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt")
        pairs, seen = [], set()
        for i in ids:
            if i in seen or i in voc_val:
                continue
            seen.add(i)
            voc_mask = root / "SegmentationClass" / f"{i}.png"
            if voc_mask.is_file():
                pairs.append((root / "JPEGImages" / f"{i}.jpg", voc_mask))
            else:
                image = root / "JPEGImages" / f"{i}.jpg"
                pairs.append((image if image.is_file() else sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat"))
        return pairs

    def read_raw_mask(self, path: Path) -> np.ndarray:
        return read_voc_mask(path)


def _voc_dir(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    require_dir(root, "VOC root", LAYOUT)
    raise SegkitError(f"VOC root '{root}' has no JPEGImages/.\nExpected layout:\n{LAYOUT}")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise SegkitError(f"list file '{path}' does not exist.\nExpected layout:\n{LAYOUT}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
