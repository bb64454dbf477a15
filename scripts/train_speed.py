"""Training speed per precision: seconds per step (data loading excluded) and images/s of segkit's own training
step (forward, loss, backward, optimizer) for model configs on synthetic data, on a CPU or a GPU.

    python scripts/train_speed.py --models unet_small deeplabv3plus_resnet50 --size 512 512 --batch 8 \
        --precisions 32-true bf16-mixed 16-mixed --device cuda
    python scripts/train_speed.py --models unet_small --size 176 240 --batch 2 --precisions 32-true bf16-mixed

Nets start from random init (no download). Prints a markdown table: the median step time after ``--warmup`` steps,
images/s from it, and the peak GPU memory. docs/measurements.md holds the figures and the machines they came from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from segkit.build import build_datamodule, build_module, compose


class StepTimer(pl.Callback):
    """Wall time of each training step, from the batch on the device to the optimizer's update."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.times: list[float] = []
        self.start = 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self.start)


def measure(model: str, precision: str, args: argparse.Namespace) -> tuple[float, float]:
    steps = args.warmup + args.steps
    overrides = [
        "data=synthetic",
        f"model={model}",
        f"data.dataset.height={args.size[0]}",
        f"data.dataset.width={args.size[1]}",
        f"data.dataset.num_samples={{train: {steps * args.batch}, val: 1, test: 1}}",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"channels_last={str(args.channels_last).lower()}",
        *args.overrides,
    ]
    cfg = compose("train", overrides, output_dir=tempfile.mkdtemp(prefix="segkit-speed-"))
    with open_dict(cfg):
        for key in ("pretrained", "pretrained_backbone"):  # random init: no download
            if cfg.model.get(key) is True:
                cfg.model[key] = False
    torch.manual_seed(0)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))  # as train.py: TF32 matmuls on a GPU
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    timer = StepTimer(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    return statistics.median(timer.times[args.warmup :]), peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["unet_small"])
    parser.add_argument("--size", nargs=2, type=int, default=[176, 240], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the train config")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name()
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; {args.size[0]}x{args.size[1]}, batch {args.batch}")
    rows = ["| model | precision | s/step | img/s | peak GiB |", "|---|---|---:|---:|---:|"]
    for model in args.models:
        for precision in args.precisions:
            seconds, peak = measure(model, precision, args)
            rows.append(f"| {model} | {precision} | {seconds:.4f} | {args.batch / seconds:.1f} | {peak:.2f} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
