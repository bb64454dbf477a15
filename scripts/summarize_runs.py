"""One table of every run of a multirun: its overrides and its best validation metrics.

    python scripts/summarize_runs.py logs/train/multiruns/2026-01-01_12-00-00            # markdown
    python scripts/summarize_runs.py logs/train/multiruns/2026-01-01_12-00-00 --format csv > runs.csv

Reads each job directory's ``.hydra/overrides.yaml``, ``csv/metrics.csv`` (the CSV logger) and ``result.json`` (how
the run ended); the row shows the overrides that differ between runs, the epoch with the best ``--metric``, the other
validation scores of that epoch and the status: completed, pruned (an Optuna sweep stopped it early), failed (with
the error) or unfinished (killed, or still running). Job folders are found at any depth (sweeps whose folder names
held a path nested them). Sorted best first.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import yaml

SCORES = ("val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU", "val/loss")
IGNORED_OVERRIDES = ("paths.", "hydra.", "extras.", "callbacks.progress_bar", "trainer.enable_", "data.dataset.")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job folder under the sweep, at any depth (older sweeps nested a job whose override held a path)."""
    jobs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(jobs, key=lambda job: _job_number(sweep_dir, job))


def _job_number(sweep_dir: Path, job: Path) -> tuple[int, str]:
    relative = job.relative_to(sweep_dir).as_posix()
    head = relative.split("_", 1)[0]
    return (int(head), relative) if head.isdigit() else (sys.maxsize, relative)


def job_status(job: Path) -> str:
    """``completed``, ``pruned``, ``failed: <error>`` from the run's ``result.json``; ``unfinished`` without one."""
    try:
        result = json.loads((job / "result.json").read_text())
    except (OSError, ValueError):
        return "unfinished"
    status = str(result.get("status", "unfinished"))
    return f"{status}: {result['error'][:80]}" if status == "failed" and result.get("error") else status


def read_overrides(job: Path) -> dict[str, str]:
    items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = (item.lstrip("+~").split("=", 1) for item in items if "=" in item)
    return {k: v for k, v in pairs if not k.startswith(IGNORED_OVERRIDES)}


def best_epoch(job: Path, metric: str, mode: str) -> dict[str, float] | None:
    """The validation row (epoch + scores) where ``metric`` is best; None when the run logged none."""
    path = job / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(metric)]
    if not rows:
        return None
    pick = max if mode == "max" else min
    best = pick(rows, key=lambda r: float(r[metric]))
    return {
        "epoch": int(float(best["epoch"])),
        "epochs": len(rows),
        **{k: float(best[k]) for k in SCORES if best.get(k)},
    }


def summarize(
    sweep_dir: Path, metric: str = "val/mIoU", mode: str = "max", all_overrides: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Header and rows; override columns are those that differ between runs unless ``all_overrides``."""
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise SystemExit(f"no runs under {sweep_dir}: expected <job>/.hydra/overrides.yaml (a Hydra multirun folder)")
    overrides = {job: read_overrides(job) for job in jobs}
    keys = sorted({k for o in overrides.values() for k in o}, key=lambda k: (k.count("."), k))
    if not all_overrides and len(jobs) > 1:
        keys = [k for k in keys if len({o.get(k) for o in overrides.values()}) > 1]
    scores = [metric] + [s for s in SCORES if s != metric]
    header = ["run", *keys, "best epoch", *scores, "status"]
    rows = []
    for job in jobs:
        best = best_epoch(job, metric, mode)
        number, relative = _job_number(sweep_dir, job)
        cells = [str(number) if number != sys.maxsize else relative, *(overrides[job].get(k, "") for k in keys)]
        if best is None:
            cells += ["no metrics"] + [""] * len(scores)
        else:
            cells += [f"{best['epoch']} / {best['epochs']}"] + [_fmt(best.get(s)) for s in scores]
        cells.append(job_status(job).replace("|", "/"))
        rows.append((best[metric] if best and metric in best else None, cells))
    reverse = mode == "max"
    rows.sort(key=lambda r: (r[0] is None, -r[0] if (r[0] is not None and reverse) else (r[0] or 0)))
    return header, [cells for _, cells in rows]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. logs/train/multiruns/<time>")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--metric", default="val/mIoU", help="the column that picks each run's best epoch")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--all-overrides", action="store_true", help="also list overrides shared by every run")
    args = parser.parse_args(argv)
    header, rows = summarize(args.sweep_dir, args.metric, args.mode, args.all_overrides)
    print(to_markdown(header, rows) if args.format == "markdown" else to_csv(header, rows))


if __name__ == "__main__":
    main()
