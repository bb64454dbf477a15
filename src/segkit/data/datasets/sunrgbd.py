"""SUN RGB-D: 37 indoor classes, label 0 = unknown (ignored); RGB or RGB-D input.

With ``use_depth`` the depth map becomes a fourth uint8 channel: metres (raw value x ``depth_scale``)
clipped to ``max_depth`` and scaled to 0..255, so the usual crop/flip/normalise pipeline carries it
along with the colour channels and models take ``in_channels=4``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segkit import SegkitError
from segkit.data.datasets.base import PairedFilesDataset, check_pairs_exist, list_images, read_image, require_dir
from segkit.data.labels import LabelTable

LAYOUT = """  <root>/image/{train,test}/<name>.jpg
  <root>/depth/{train,test}/<name>.png     (16-bit, millimetres by default: data.dataset.depth_scale=0.001)
  <root>/label37/{train,test}/<name>.png   (0 = unknown, 1..37 = the classes)"""


class SUNRGBD(PairedFilesDataset):
    def __init__(
        self,
        root: str | Path,
        split: str,
        labels: LabelTable,
        use_depth: bool = False,
        depth_scale: float = 0.001,
        max_depth: float = 10.0,
    ) -> None:
        root = Path(root).expanduser()
        require_dir(root, "SUN RGB-D root", LAYOUT)
        image_dir = root / "image" / split
        require_dir(image_dir, f"SUN RGB-D split '{split}'", LAYOUT)
        images = list_images(image_dir)
        pairs = [(p, root / "label37" / split / f"{p.stem}.png") for p in images]
        check_pairs_exist(pairs, f"SUN RGB-D {split}")
        self.use_depth, self.depth_scale, self.max_depth = use_depth, depth_scale, max_depth
        self.depth_paths = [root / "depth" / split / f"{p.stem}.png" for p in images]
        if use_depth:
            missing = [str(p) for p in self.depth_paths if not p.is_file()]
            if missing:
                raise SegkitError(
                    f"SUN RGB-D {split}: {len(missing)} depth map(s) are missing, first: "
                    f"{', '.join(missing[:5])}; add them or set data.use_depth=false"
                )
        super().__init__(pairs, labels, name=f"SUN RGB-D {split}")

    def read_input(self, index: int) -> np.ndarray:
        image = read_image(self.pairs[index][0])
        if not self.use_depth:
            return image
        depth = read_depth(self.depth_paths[index], self.depth_scale, self.max_depth)
        if depth.shape != image.shape[:2]:
            raise SegkitError(
                f"depth '{self.depth_paths[index]}' is {depth.shape[::-1]} but its image is "
                f"{image.shape[1::-1]}; they must be the same size"
            )
        return np.concatenate([image, depth[..., None]], axis=2)


def read_depth(path: Path, scale: float, max_depth: float) -> np.ndarray:
    """A depth PNG -> H x W uint8, 0..``max_depth`` metres mapped to 0..255."""
    raw = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if raw is None:
        raise SegkitError(f"cannot read depth map '{path}': the file is missing, empty or not an image")
    metres = raw.astype(np.float32) * scale
    return np.clip(metres * (255.0 / max_depth), 0, 255).round().astype(np.uint8)
