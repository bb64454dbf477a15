"""Where one training step of a recipe goes, in one process on its real data: waiting for the batch, forward, loss,
backward, optimizer step and EMA update, in the precision the run would take (``trainer.precision``, auto resolved).

    python scripts/step_breakdown.py experiment=camvid_quick data.root=../shared/data/camvid
    python scripts/step_breakdown.py experiment=camvid_quick data.root=../shared/data/camvid \
        data.num_workers=1 data.cache_mb=0 optimizer.fused=false --fused-attention --lightning-ema

The first ``--warmup`` steps (default: one epoch and a few, so a ``data.cache_mb`` cache is full) are not timed; the
means of the next ``--steps`` are printed as one markdown row. ``--fused-attention`` runs MiT's attention in torch's
fused kernel, ``--lightning-ema`` updates the EMA with Lightning's per-tensor loop, ``optimizer.fused=false`` steps
the optimiser with torch's loop: segkit's choices before 2026-12-06, to compare on your machine. Nothing is written
but segkit's class-weight cache.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from segkit.build import build_datamodule, build_module, compose
from segkit.callbacks import EMAWeightAveraging
from segkit.optim import optimizer_over_groups
from segkit.precision import resolve_precision

PARTS = ("data", "forward", "loss", "backward", "optimizer", "ema")


def batches(datamodule):
    loader = datamodule.train_dataloader()  # one loader: its workers (and their caches) live on, as in a run
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps timed")
    parser.add_argument("--warmup", type=int, help="steps not timed (default: one epoch + 10)")
    parser.add_argument("--fused-attention", action="store_true", help="MiT attention in torch's fused kernel")
    parser.add_argument("--lightning-ema", action="store_true", help="Lightning's per-tensor EMA update")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. experiment=...")
    args = parser.parse_intermixed_args(argv)
    with tempfile.TemporaryDirectory() as out:
        cfg = compose("train", args.overrides, output_dir=out)
    data = build_datamodule(cfg)
    data.setup("fit")
    module = build_module(cfg, data)
    module.train()
    precision, reason = resolve_precision(cfg.trainer.get("precision", "auto"), "cpu")
    if precision not in ("32-true", "bf16-mixed"):
        print(f"trainer.precision={precision}: this script times 32-true and bf16-mixed on the CPU", file=sys.stderr)
        return 1
    # as Lightning's bf16-mixed runs the step: weights cast at each use (no autocast cache)
    autocast = partial(torch.autocast, "cpu", torch.bfloat16, enabled=precision == "bf16-mixed", cache_enabled=False)
    optimizer = optimizer_over_groups(module.optimizer_factory, module.net)
    ema = None
    ema_cfg = (cfg.get("callbacks") or {}).get("ema")
    if ema_cfg:
        decay = float(ema_cfg.get("decay", 0.999))
        if args.lightning_ema:
            ema = AveragedModel(module, use_buffers=True, avg_fn=get_ema_avg_fn(decay))
        else:
            ema = AveragedModel(module, use_buffers=True, **EMAWeightAveraging(decay=decay)._kwargs)
    patch = contextlib.nullcontext()
    if args.fused_attention:
        from unittest import mock

        patch = mock.patch("segkit.models.backbones.mit.attention", F.scaled_dot_product_attention)
    clip = float(cfg.trainer.get("gradient_clip_val") or 0.0)
    warmup = args.warmup if args.warmup is not None else len(data.train_dataloader()) + 10
    times = {part: 0.0 for part in PARTS}
    stream = batches(data)
    with patch:
        for step in range(warmup + args.steps):
            marks = [time.perf_counter()]
            images, masks = next(stream)
            marks.append(time.perf_counter())
            with autocast():
                outputs = module.net(images)
                marks.append(time.perf_counter())
                _, loss, _ = module._loss(outputs, masks)
            marks.append(time.perf_counter())
            optimizer.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            marks.append(time.perf_counter())
            optimizer.step()
            marks.append(time.perf_counter())
            if ema is not None:
                ema.update_parameters(module)
            marks.append(time.perf_counter())
            if step >= warmup:
                for part, start, end in zip(PARTS, marks[:-1], marks[1:], strict=True):
                    times[part] += end - start
    means = {part: 1000 * t / args.steps for part, t in times.items()}
    total = sum(means.values())
    print(f"precision {precision} ({reason}); {args.steps} steps after {warmup}; ms per step")
    print("| " + " | ".join(PARTS) + " | total | steps/s |")
    print("|" + "---:|" * (len(PARTS) + 2))
    print("| " + " | ".join(f"{means[p]:.1f}" for p in PARTS) + f" | {total:.1f} | {1000 / total:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
