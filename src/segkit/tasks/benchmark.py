"""What ``src/benchmark.py`` runs: size, cost and speed of model configs, as a markdown table.

Parameters and FLOPs are counted on the meta device (``segkit.profiling``); latency needs real weights on the chosen
device, and is skipped with ``flops_only``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from segkit import SegkitError
from segkit.build import build_net, model_config, model_names
from segkit.inference import resolve_device
from segkit.precision import settle_inference_precision
from segkit.profiling import latency_ms, size_and_flops

log = logging.getLogger("segkit")


@dataclass
class BenchmarkRow:
    model: str
    params: int = 0
    flops: int = 0
    latency: dict[int, float] = field(default_factory=dict)  # batch size -> ms per batch
    peak_memory_mb: float | None = None
    error: str = ""


@dataclass
class Timing:
    """How latency is measured: where, at which precision and memory format, compiled or not, how often."""

    device: torch.device
    precision: str
    channels_last: bool
    compile: bool
    compile_mode: str | None
    warmup: int
    repeats: int


def benchmark_model(
    name: str,
    num_classes: int,
    in_channels: int,
    size: tuple[int, int],
    batch_sizes: Sequence[int],
    timing: Timing | None,
) -> BenchmarkRow:
    """One row: params and FLOPs of ``conf/model/<name>``, and its latency per batch size unless ``timing`` is None."""
    model_cfg = model_config(name)
    height, width = size
    row = BenchmarkRow(name)
    row.params, row.flops = size_and_flops(model_cfg, num_classes, in_channels, height, width)
    if timing is None:
        return row
    device = timing.device
    net = build_net(model_cfg, num_classes, in_channels, for_weights=True).eval().to(device)
    if timing.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if timing.compile:
        net = torch.compile(net, mode=timing.compile_mode or None)
    try:
        for batch in batch_sizes:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            row.latency[batch] = latency_ms(
                net,
                (batch, in_channels, height, width),
                device,
                timing.precision,
                timing.channels_last,
                timing.warmup,
                timing.repeats,
            )
            if device.type == "cuda":
                row.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    except torch.OutOfMemoryError:
        row.error = "out of memory"
    return row


def markdown_table(rows: Sequence[BenchmarkRow], batch_sizes: Sequence[int], flops_only: bool) -> str:
    head = ["model", "params (M)", "GFLOPs"]
    if not flops_only:
        for b in batch_sizes:
            head += [f"latency b{b} (ms)", f"FPS b{b}"]
        head.append("peak mem (MB)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [row.model, f"{row.params / 1e6:.2f}", f"{row.flops / 1e9:.1f}"]
        if not flops_only:
            for b in batch_sizes:
                ms = row.latency.get(b)
                cells += [f"{ms:.1f}", f"{1000.0 * b / ms:.1f}"] if ms else ["-", "-"]
            cells.append(f"{row.peak_memory_mb:.0f}" if row.peak_memory_mb is not None else "-")
        if row.error:
            cells[0] += f" ({row.error})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def benchmark_from_config(cfg: DictConfig) -> dict[str, float]:
    """``conf/benchmark.yaml`` onto ``benchmark``'s arguments."""
    timing = None
    if not cfg.flops_only:
        device = resolve_device(cfg.device)
        timing = Timing(
            device=device,
            precision=settle_inference_precision(cfg.precision, device),
            channels_last=bool(cfg.channels_last),
            compile=bool(cfg.compile),
            compile_mode=cfg.compile_mode,
            warmup=int(cfg.warmup),
            repeats=int(cfg.repeats),
        )
    return benchmark(
        list(cfg.models or []),
        num_classes=int(cfg.num_classes),
        in_channels=int(cfg.in_channels),
        size=(int(cfg.height), int(cfg.width)),
        batch_size=int(cfg.batch_size),
        timing=timing,
        output=Path(str(cfg.output)) if cfg.output else None,
        progress=bool(cfg.progress),
    )


def benchmark(
    names: Sequence[str],
    *,
    num_classes: int,
    in_channels: int,
    size: tuple[int, int],
    batch_size: int,
    timing: Timing | None,
    output: Path | None,
    progress: bool,
) -> dict[str, float]:
    """Benchmark the ``names`` of conf/model (``all``, or none: every one) at ``size`` (H, W): params and GFLOPs,
    and with ``timing`` latency/FPS at batch 1 and ``batch_size``; print the markdown table, write it to ``output``."""
    names = list(names)
    if not names or "all" in names:
        names = model_names()
    unknown = [n for n in names if n not in model_names()]
    if unknown:
        raise SegkitError(f"unknown model(s) {unknown}; choose from conf/model: {', '.join(model_names())}")
    if timing is not None and timing.precision not in ("fp32", "fp16", "bf16"):
        raise SegkitError(f"precision={timing.precision}; use fp32, fp16 or bf16")
    batch_sizes = sorted({1, batch_size})
    flops_only = timing is None
    torch.backends.cudnn.benchmark = timing is not None and timing.device.type == "cuda"
    rows = []
    for name in tqdm(names, desc="benchmark", unit="model", disable=not progress):
        try:
            rows.append(benchmark_model(name, num_classes, in_channels, size, batch_sizes, timing))
        except SegkitError as err:
            if len(names) == 1:
                raise
            rows.append(BenchmarkRow(name, error=str(err)[:80]))
    height, width = size
    if timing is None:
        where = "meta device (counts only)"
    else:
        device = timing.device
        where = f"{device}"
        if device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(device)})"
        elif device.type == "cpu":
            where += f" ({torch.get_num_threads()} threads)"
    header = (
        f"Input {height}x{width}, {num_classes} classes, {where}"
        + (
            ""
            if timing is None
            else f", {timing.precision}, channels_last={timing.channels_last}, "
            f"torch.compile={timing.compile}, median of {timing.repeats} after {timing.warmup} warm-up"
        )
        + ". GFLOPs = 2 x multiply-accumulates at batch 1.\n\n"
    )
    text = header + markdown_table(rows, batch_sizes, flops_only)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        log.info(f"table written to {output}")
    return {f"{r.model}/gflops": r.flops / 1e9 for r in rows}
