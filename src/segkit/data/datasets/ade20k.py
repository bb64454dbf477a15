"""ADE20K in the SceneParsing layout (ADEChallengeData2016): 150 classes, annotation 0 = "other".

Whether 0 is ignored (the standard "reduce zero label") or trained is the label table's business
(``data.reduce_zero_label``), so the files are read unchanged here.
"""

from __future__ import annotations

from pathlib import Path

from segkit import SegkitError
from segkit.data.datasets.base import PairedFilesDataset, check_pairs_exist, list_images, require_dir
from segkit.data.labels import LabelTable

LAYOUT = """  <root>/images/{training,validation}/ADE_train_00000001.jpg
  <root>/annotations/{training,validation}/ADE_train_00000001.png
  (<root> is ADEChallengeData2016/ or the folder holding it; splits train/val name training/validation)"""

SPLIT_DIRS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


class ADE20K(PairedFilesDataset):
    def __init__(self, root: str | Path, split: str, labels: LabelTable) -> None:
        root = Path(root).expanduser()
        require_dir(root, "ADE20K root", LAYOUT)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in SPLIT_DIRS:
            raise SegkitError(f"ADE20K has splits train and val, not '{split}'; set data.splits")
        image_dir = root / "images" / SPLIT_DIRS[split]
        require_dir(image_dir, f"ADE20K split '{split}'", LAYOUT)
        pairs = [(p, root / "annotations" / SPLIT_DIRS[split] / f"{p.stem}.png") for p in list_images(image_dir)]
        check_pairs_exist(pairs, f"ADE20K {split} ({image_dir})")
        super().__init__(pairs, labels, name=f"ADE20K {split}")
