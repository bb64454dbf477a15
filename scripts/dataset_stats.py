"""Images, sizes and per-class pixel share (with ENet / median-frequency weights) of one dataset split.

    python scripts/dataset_stats.py data=camvid data.root=../shared/data/camvid [--split train] [--limit 50]

Arguments after the options are Hydra overrides of conf/train.yaml, as for src/train.py.
"""

from __future__ import annotations

import argparse
import sys

from segkit import SegkitError
from segkit.data.reports import compose_datamodule, dataset_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=camvid data.root=...")
    parser.add_argument("--split", default="train", help="stage whose split to read: train, val or test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args(argv)
    try:
        datamodule = compose_datamodule(args.overrides)
        dataset = datamodule.raw_dataset(args.split)
        report, _ = dataset_report(dataset, datamodule.labels, args.limit)
    except SegkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{datamodule.name} / {args.split} ({datamodule.splits.get(args.split)})")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
