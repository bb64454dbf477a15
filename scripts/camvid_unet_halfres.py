"""Train U-Net from scratch on CamVid at half resolution for 20 minutes and print the val curve.

    python scripts/camvid_unet_halfres.py [--root ../shared/data/camvid] [extra Hydra overrides...]

Runs `src/train.py experiment=camvid_unet_halfres` (the recipe lives in conf/experiment/), then reads
the run's CSV log and prints epoch, elapsed minutes and val mIoU, plus the final per-class IoU.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "camvid"), help="CamVid folder")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_time=00:00:05:00")
    args = parser.parse_args()
    run_dir = ROOT / "logs" / "camvid_unet_halfres" / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "experiment=camvid_unet_halfres", f"data.root={args.root}",
           f"hydra.run.dir={run_dir}", "callbacks.progress_bar=null", "extras.print_config=false", *args.overrides]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    minutes = (time.time() - start) / 60
    rows = [r for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("val/mIoU")]
    print(f"\nrun: {run_dir}  ({minutes:.1f} min wall clock, exit {proc.returncode})")
    print("| epoch | step | val/loss | val/mIoU | val/pixAcc |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['step']} | {float(r['val/loss']):.3f} | {float(r['val/mIoU']):.3f} | "
              f"{float(r['val/pixAcc']):.3f} |")
    if rows:
        best = max(rows, key=lambda r: float(r["val/mIoU"]))
        print(f"best val/mIoU {float(best['val/mIoU']):.3f} at epoch {best['epoch']}")
        print("per-class IoU (best epoch): " + ", ".join(
            f"{k.split('/')[-1]}={float(v):.2f}" for k, v in best.items() if k.startswith("val/IoU/") and v))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
