"""Loss and mIoU per epoch as a PNG in the run directory, drawn from the CSV log, for users without W&B."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import CSVLogger

log = logging.getLogger("segkit")

CURVES = ("train/loss_epoch", "val/loss", "val/mIoU", "val/pixAcc")


def read_epoch_curves(csv_path: str | Path, keys: tuple[str, ...] = CURVES) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(epoch, value), ...]}`` from a Lightning ``metrics.csv`` (rows are sparse: one logging call each)."""
    curves: dict[str, dict[int, float]] = {k: {} for k in keys}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key in keys:
                if row.get(key):
                    curves[key][epoch] = float(row[key])
    return {k: sorted(v.items()) for k, v in curves.items()}


def plot_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Two panels: train/val loss and val mIoU (+ pixAcc) per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curves = read_epoch_curves(csv_path)
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for key, ax in (
        ("train/loss_epoch", ax_loss),
        ("val/loss", ax_loss),
        ("val/mIoU", ax_score),
        ("val/pixAcc", ax_score),
    ):
        if curves[key]:
            epochs, values = zip(*curves[key], strict=True)
            ax.plot(epochs, values, marker="o", markersize=3, label=key.replace("_epoch", ""))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_score.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)  # replaces a link planted at the name instead of writing through it
    return png_path


class LocalCurves(Callback):
    """At the end of fitting, draw ``<run dir>/<filename>`` from the CSV logger's metrics (no CSV logger: nothing)."""

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None or not trainer.is_global_zero:
            return
        csv_logger.save()  # flush buffered rows before reading them back
        metrics = Path(csv_logger.log_dir) / "metrics.csv"
        if not metrics.is_file():
            return
        png = plot_curves(metrics, Path(trainer.default_root_dir) / self.filename)
        log.info(f"curves: {png}")
