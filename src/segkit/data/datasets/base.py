"""Image/mask file pairs read with OpenCV and remapped through a label table."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from segkit import SegkitError
from segkit.data.labels import LabelTable

cv2.setNumThreads(0)  # decoding runs inside DataLoader workers; OpenCV's own threads only contend

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SegkitError(
            f"cannot read image '{path}': the file is missing, empty or not an image; replace or remove it"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, color: bool = False) -> np.ndarray:
    """A label file -> H x W integer array, values unchanged (8 or 16 bit).

    With ``color=True`` a 3/4-channel mask (RGB-coded, or a palette PNG that OpenCV expands) comes back
    as H x W x 3 RGB for ``LabelTable.remap`` to decode by colour.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise SegkitError(
            f"cannot read mask '{path}': the file is missing, empty or not an image; replace or remove it"
        )
    if mask.ndim == 3:
        if not color:
            raise SegkitError(
                f"mask '{path}' has {mask.shape[2]} channels; id masks must be single-channel "
                f"(for RGB-coded masks give the label table source colours)"
            )
        return cv2.cvtColor(mask[..., :3], cv2.COLOR_BGR2RGB)
    return mask


class PairedFilesDataset(Dataset):
    """A list of (image path, mask path) pairs; masks are remapped to train ids on read.

    Families with other file formats override ``read_raw_mask`` (palette PNGs, .mat files) or
    ``read_input`` (extra channels such as depth) and keep the pairing, checks and remapping here.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], labels: LabelTable, name: str = "dataset") -> None:
        if not pairs:
            raise SegkitError(f"{name}: the split has no images")
        self.pairs = pairs
        self.labels = labels
        self.name = name

    def __len__(self) -> int:
        return len(self.pairs)

    def read_input(self, index: int) -> np.ndarray:
        return read_image(self.pairs[index][0])

    def read_raw_mask(self, path: Path) -> np.ndarray:
        return read_mask(path, color=self.labels.has_source_colors)

    def mask(self, index: int) -> np.ndarray:
        """Only the remapped mask of sample ``index`` (class statistics need no image decoding)."""
        mask_path = self.pairs[index][1]
        return self.labels.remap(self.read_raw_mask(mask_path), source=str(mask_path))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = self.read_input(index)
        mask = self.mask(index)
        if image.shape[:2] != mask.shape[:2]:
            raise SegkitError(
                f"image '{image_path}' is {image.shape[1]}x{image.shape[0]} but its mask '{mask_path}' is "
                f"{mask.shape[1]}x{mask.shape[0]}; they must be the same size"
            )
        return image, mask


def check_pairs_exist(pairs: list[tuple[Path, Path]], name: str) -> None:
    """Fail once, listing the first missing files, instead of deep inside a DataLoader worker."""
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        masks = sum(1 for _, m in pairs if not m.is_file())
        shown = ", ".join(missing[:5])
        raise SegkitError(
            f"{name}: {len(missing)} listed file(s) are missing ({masks} mask(s), {len(missing) - masks} image(s)); "
            f"first: {shown}"
        )


def list_images(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files of a folder, sorted by name."""
    wanted = tuple(suffixes)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)


def require_dir(path: Path, what: str, layout: str) -> None:
    """Missing root or split: say what is missing and print the layout expected."""
    if not path.is_dir():
        raise SegkitError(
            f"{what} '{path}' does not exist; point data.root at the dataset folder.\nExpected layout:\n{layout}"
        )
