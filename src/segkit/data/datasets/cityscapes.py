"""Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine``/``gtCoarse`` label images.

Masks are the official ``*_labelIds.png`` (0..33) remapped by the chosen label table, so one set of
files serves the 19-class, category and custom tables. Precomputed ``*_labelTrainIds.png`` are
accepted too: they are lifted back to a labelId per trainId first (ids the trainId files dropped to
255 come back as 0, "unlabeled"); a table that needs one of the dropped labels (parking, caravan, ...) is
refused with that file named, rather than silently relabelling those pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from segkit import SegkitError
from segkit.data.datasets.base import PairedFilesDataset, check_pairs_exist, read_mask, require_dir
from segkit.data.labels import LabelTable

# The official definitions (cityscapesScripts helpers/labels.py): name, labelId, trainId, category, categoryId.
LABELS: tuple[tuple[str, int, int, str, int], ...] = (
    ("unlabeled", 0, 255, "void", 0),
    ("ego vehicle", 1, 255, "void", 0),
    ("rectification border", 2, 255, "void", 0),
    ("out of roi", 3, 255, "void", 0),
    ("static", 4, 255, "void", 0),
    ("dynamic", 5, 255, "void", 0),
    ("ground", 6, 255, "void", 0),
    ("road", 7, 0, "flat", 1),
    ("sidewalk", 8, 1, "flat", 1),
    ("parking", 9, 255, "flat", 1),
    ("rail track", 10, 255, "flat", 1),
    ("building", 11, 2, "construction", 2),
    ("wall", 12, 3, "construction", 2),
    ("fence", 13, 4, "construction", 2),
    ("guard rail", 14, 255, "construction", 2),
    ("bridge", 15, 255, "construction", 2),
    ("tunnel", 16, 255, "construction", 2),
    ("pole", 17, 5, "object", 3),
    ("polegroup", 18, 255, "object", 3),
    ("traffic light", 19, 6, "object", 3),
    ("traffic sign", 20, 7, "object", 3),
    ("vegetation", 21, 8, "nature", 4),
    ("terrain", 22, 9, "nature", 4),
    ("sky", 23, 10, "sky", 5),
    ("person", 24, 11, "human", 6),
    ("rider", 25, 12, "human", 6),
    ("car", 26, 13, "vehicle", 7),
    ("truck", 27, 14, "vehicle", 7),
    ("bus", 28, 15, "vehicle", 7),
    ("caravan", 29, 255, "vehicle", 7),
    ("trailer", 30, 255, "vehicle", 7),
    ("train", 31, 16, "vehicle", 7),
    ("motorcycle", 32, 17, "vehicle", 7),
    ("bicycle", 33, 18, "vehicle", 7),
)

LAYOUT = """  <root>/leftImg8bit/{train,val,test,train_extra}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      (data.dataset.mode=fine)
  <root>/gtCoarse/{train,val,train_extra}/<city>/<...>_gtCoarse_labelIds.png          (data.dataset.mode=coarse)
  (*_labelTrainIds.png from createTrainIdLabelImgs.py are used when *_labelIds.png are absent)"""

_TRAIN_TO_LABEL = np.zeros(256, dtype=np.uint8)
for _name, _label_id, _train_id, _cat, _cat_id in LABELS:
    if _train_id != 255:
        _TRAIN_TO_LABEL[_train_id] = _label_id


class Cityscapes(PairedFilesDataset):
    """One split of Cityscapes.

    Args:
        mode: ``fine`` (gtFine) or ``coarse`` (gtCoarse; the only annotation of ``train_extra``).
        target: ``auto`` (labelIds, else labelTrainIds), ``labelIds`` or ``labelTrainIds``.
    """

    def __init__(
        self, root: str | Path, split: str, labels: LabelTable, mode: str = "fine", target: str = "auto"
    ) -> None:
        root = Path(root).expanduser()
        if mode not in ("fine", "coarse"):
            raise SegkitError(f"data.dataset.mode={mode!r}; use 'fine' or 'coarse'")
        if target not in ("auto", "labelIds", "labelTrainIds"):
            raise SegkitError(f"data.dataset.target={target!r}; use auto, labelIds or labelTrainIds")
        if split == "train_extra" and mode == "fine":
            mode = "coarse"  # train_extra has coarse annotation only
        require_dir(root, "Cityscapes root", LAYOUT)
        image_dir = root / "leftImg8bit" / split
        require_dir(image_dir, f"Cityscapes split '{split}'", LAYOUT)
        gt = "gtFine" if mode == "fine" else "gtCoarse"
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise SegkitError(
                f"Cityscapes split '{split}': no *_leftImg8bit.png under '{image_dir}'.\nExpected layout:\n{LAYOUT}"
            )
        stems = [(p.parent.name, p.name[: -len("_leftImg8bit.png")]) for p in images]
        self.train_ids = target == "labelTrainIds" or (
            target == "auto"
            and not _all_exist(root / gt / split / city / f"{stem}_{gt}_labelIds.png" for city, stem in stems[:1])
        )
        suffix = "labelTrainIds" if self.train_ids else "labelIds"
        pairs = [
            (img, root / gt / split / city / f"{stem}_{gt}_{suffix}.png")
            for img, (city, stem) in zip(images, stems, strict=True)
        ]
        check_pairs_exist(pairs, f"Cityscapes {split} ({gt} *_{suffix}.png)")
        if self.train_ids:
            check_train_ids_suffice(labels, pairs[0][1])
        super().__init__(pairs, labels, name=f"Cityscapes {split}")

    def read_raw_mask(self, path: Path) -> np.ndarray:
        mask = read_mask(path)
        return _TRAIN_TO_LABEL[mask] if self.train_ids else mask


def check_train_ids_suffice(labels: LabelTable, example: Path) -> None:
    """``*_labelTrainIds.png`` drop every label without a trainId to 255 (read back as 0, "unlabeled"): a table
    that gives any of those labels another train id than "unlabeled" needs the original labelIds, and is refused."""
    dropped = [(name, label_id) for name, label_id, train_id, _, _ in LABELS if train_id == 255 and label_id != 0]

    def train_id(label_id: int) -> int | None:  # None: the table rejects the id (unknown)
        try:
            return int(labels.remap(np.array([[label_id]]), source="Cityscapes label check")[0, 0])
        except SegkitError:
            return None

    unlabeled = train_id(0)
    wrong = [name for name, label_id in dropped if unlabeled is None or train_id(label_id) != unlabeled]
    if wrong:
        raise SegkitError(
            f"label table '{labels.name}' gives {', '.join(wrong[:6])}{'...' if len(wrong) > 6 else ''} a class, "
            f"but '{example}' is a labelTrainIds file where they are lost; provide the *_labelIds.png files "
            f"(data.dataset.target=labelIds) or use a table that ignores them (cityscapes_19, cityscapes_categories)"
        )


def _all_exist(paths: Iterable[Path]) -> bool:
    return all(p.is_file() for p in paths)


def write_label_ids(train_ids: np.ndarray, path: str | Path, labels: LabelTable) -> Path:
    """Save a prediction (H x W train ids of ``labels``) as an official labelIds PNG for the benchmark server.

    Each train id becomes its class's first labelId (exact for ``cityscapes_19``); ignore becomes 0.
    """
    label_ids = labels.to_source_ids(np.asarray(train_ids), fill=0).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), label_ids):
        raise SegkitError(f"cannot write '{path}'; check the folder is writable")
    return path


def benchmark_name(image_path: str | Path) -> str:
    """``.../berlin_000000_000019_leftImg8bit.png`` -> ``berlin_000000_000019_labelIds.png``, the server's naming."""
    name = Path(image_path).name
    stem = name[: -len("_leftImg8bit.png")] if name.endswith("_leftImg8bit.png") else Path(name).stem
    return f"{stem}_labelIds.png"
