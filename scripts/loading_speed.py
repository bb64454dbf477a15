"""Images per second of the training input pipeline (decode + remap + augment + collate) at 0 and 2 workers.

Two pipelines: CamVid-sized (480x360 PNGs, scale 0.5-2, crop 352x480) and Cityscapes-sized (2048x1024 PNGs,
scale 0.5-2, crop 512x1024), read from files written to a temporary folder (or real CamVid with --camvid).

    python scripts/loading_speed.py [--images 32] [--epochs 2] [--workers 0 2] [--camvid ../shared/data/camvid]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segkit.data.datamodule import SegmentationDataModule
from segkit.data.datasets.camvid import CamVid
from segkit.data.datasets.folder import ImageMaskFolder
from segkit.data.labels import LabelTable
from segkit.files import conf_dir

PIPELINES = {"camvid": ((360, 480), (352, 480), 8), "cityscapes": ((1024, 2048), (512, 1024), 4)}


def write_folder(root: Path, size: tuple[int, int], n: int, seed: int = 0) -> None:
    """n photo-like PNGs (smooth colour fields + noise) with blocky id masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        base = rng.uniform(0, 255, 3) * (xx / w)[..., None] + rng.uniform(0, 255, 3) * (yy / h)[..., None]
        image = np.clip(base / 2 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        mask = cv2.resize(rng.integers(0, 2, (8, 16), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)


def images_per_second(datamodule: SegmentationDataModule, epochs: int) -> float:
    """Throughput after the first batch (worker start-up is paid once: workers are persistent)."""
    loader = datamodule.train_dataloader()
    images, start = 0, None
    for epoch in range(epochs + 1):
        loader.sampler.set_epoch(epoch)
        for batch, _ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += batch.shape[0]
    return images / (time.perf_counter() - start) if start and images else float("nan")


def build(name: str, root: Path, workers: int, camvid: Path | None, limit: int) -> SegmentationDataModule:
    from segkit.data.transforms import train_transforms

    _, crop, batch = PIPELINES[name]
    if name == "camvid" and camvid is not None:
        from omegaconf import OmegaConf

        labels = LabelTable.from_config(OmegaConf.to_container(OmegaConf.load(conf_dir() / "data/labels/camvid.yaml")))
        dataset, data_root = functools.partial(CamVid), str(camvid)
    else:
        labels = "binary"
        dataset, data_root = functools.partial(ImageMaskFolder, ratios={"train": 1.0}), str(root)
    datamodule = SegmentationDataModule(
        dataset=dataset,
        labels=labels,
        splits={"train": "train"},
        root=data_root,
        input={"crop_size": list(crop)},
        train_transform=functools.partial(train_transforms, scale_range=(0.5, 2.0)),
        batch_size=min(batch, limit),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )
    raw = datamodule.split_dataset("train").dataset
    raw.pairs = raw.pairs[:limit]
    return datamodule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="files per generated pipeline")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes over them")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--camvid", type=Path, default=None, help="real CamVid root for the CamVid-sized pipeline")
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    args = parser.parse_args(argv)
    print(f"{'pipeline':<12}{'image':>11}{'crop':>10}{'batch':>7}{'workers':>9}{'images/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pipelines:
            size, crop, batch = PIPELINES[name]
            root = Path(tmp) / name
            if not (name == "camvid" and args.camvid):
                write_folder(root, size, args.images)
            for workers in args.workers:
                rate = images_per_second(build(name, root, workers, args.camvid, args.images), args.epochs)
                print(
                    f"{name:<12}{size[1]:>5}x{size[0]:<5}{crop[1]:>5}x{crop[0]:<4}{batch:>7}{workers:>9}{rate:>10.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
