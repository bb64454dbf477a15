"""A PNG grid of images with their masks overlaid (as the dataset returns them) and a legend of the classes.

    python scripts/browse_dataset.py data=camvid data.root=../shared/data/camvid --out camvid.png [--n 12 --cols 4]

Arguments after the options are Hydra overrides of conf/train.yaml, as for src/train.py.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from segkit import SegkitError
from segkit.data.reports import browse_grid, compose_datamodule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=camvid data.root=...")
    parser.add_argument("--split", default="train", help="stage whose split to show: train, val or test")
    parser.add_argument("--out", default="dataset_grid.png", help="the PNG to write")
    parser.add_argument("--n", type=int, default=12, help="number of images")
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="which random images (-1: the first n)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity")
    args = parser.parse_args(argv)
    try:
        datamodule = compose_datamodule(args.overrides)
        dataset = datamodule.raw_dataset(args.split)
        n = min(args.n, len(dataset))
        indices = (
            range(n)
            if args.seed < 0
            else sorted(np.random.default_rng(args.seed).choice(len(dataset), n, replace=False))
        )
        grid = browse_grid(dataset, datamodule.labels, [int(i) for i in indices], cols=args.cols, alpha=args.alpha)
    except SegkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not cv2.imwrite(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        print(f"error: cannot write '{args.out}'", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({n} images of {datamodule.name}/{args.split}, {grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
