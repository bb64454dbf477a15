"""What ``scripts/benchmark.py`` runs: size, cost and speed of model configs, as a markdown table.

Parameters and FLOPs are counted on the meta device (no memory, no arithmetic), so even FCN-8s at 1024x2048
is counted exactly at the stated resolution in a second; latency needs real weights on the chosen device.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from segkit import SegkitError
from segkit.checkpoint import build_net
from segkit.evaluation import resolve_device
from segkit.inference import net_logits

log = logging.getLogger("segkit")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def model_names(conf_dir: Path = CONF_DIR) -> list[str]:
    """Every choice of the ``model`` config group."""
    return sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))


def model_config(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` composed with its defaults (e.g. unet_small extends unet)."""
    if name not in model_names():
        raise SegkitError(f"unknown model '{name}'; choose from conf/model: {', '.join(model_names())}")
    overrides = [f"+model={name}"]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=None, overrides=overrides).model
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=None, overrides=overrides).model


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, shape: Sequence[int], device: torch.device | str = "meta") -> int:
    """FLOPs (multiply and add counted separately, i.e. 2 x MACs) of one forward pass at ``shape``."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net_logits(net, torch.zeros(*shape, device=device))
    return int(counter.get_total_flops())


def size_and_flops(
    model_cfg: DictConfig, num_classes: int, in_channels: int, height: int, width: int
) -> tuple[int, int]:
    """Params and FLOPs at batch 1, counted on the meta device; on CPU for nets that cannot run there."""
    shape = (1, in_channels, height, width)
    try:
        with torch.device("meta"):
            net = build_net(model_cfg, num_classes, in_channels, for_weights=True).eval()
        return count_params(net), count_flops(net, shape, "meta")
    except SegkitError:
        raise
    except Exception as err:  # data-dependent code (e.g. .item()) cannot run on meta tensors
        log.info(f"{model_cfg._target_}: counting on CPU at {height}x{width} ({type(err).__name__} on meta)")
        net = build_net(model_cfg, num_classes, in_channels, for_weights=True).eval()
        return count_params(net), count_flops(net, shape, "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency_ms(
    net: nn.Module,
    shape: Sequence[int],
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    warmup: int = 5,
    repeats: int = 20,
) -> float:
    """Median wall time of one forward pass of a batch of ``shape``, after ``warmup`` passes."""
    x = torch.randn(*shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    times = []
    with autocast:
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            net_logits(net, x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


@dataclass
class BenchmarkRow:
    model: str
    params: int = 0
    flops: int = 0
    latency: dict[int, float] = field(default_factory=dict)  # batch size -> ms per batch
    peak_memory_mb: float | None = None
    error: str = ""


def benchmark_model(name: str, cfg: DictConfig, device: torch.device, batch_sizes: Sequence[int]) -> BenchmarkRow:
    model_cfg = model_config(name)
    row = BenchmarkRow(name)
    row.params, row.flops = size_and_flops(
        model_cfg, int(cfg.num_classes), int(cfg.in_channels), int(cfg.height), int(cfg.width)
    )
    if cfg.get("flops_only"):
        return row
    net = build_net(model_cfg, int(cfg.num_classes), int(cfg.in_channels), for_weights=True).eval().to(device)
    if cfg.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        net = torch.compile(net, mode=cfg.get("compile_mode") or None)
    try:
        for batch in batch_sizes:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            shape = (batch, int(cfg.in_channels), int(cfg.height), int(cfg.width))
            row.latency[batch] = latency_ms(
                net,
                shape,
                device,
                str(cfg.precision),
                bool(cfg.get("channels_last")),
                int(cfg.warmup),
                int(cfg.repeats),
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


def benchmark(cfg: DictConfig) -> dict[str, float]:
    """Benchmark ``cfg.models`` (names in conf/model, or ``all``); print and write the markdown table."""
    names = list(cfg.models) if cfg.get("models") else []
    if not names or "all" in names:
        names = model_names()
    unknown = [n for n in names if n not in model_names()]
    if unknown:
        raise SegkitError(f"unknown model(s) {unknown}; choose from conf/model: {', '.join(model_names())}")
    device = resolve_device(cfg.get("device"))
    if str(cfg.precision) not in ("fp32", "fp16", "bf16"):
        raise SegkitError(f"precision={cfg.precision}; use fp32, fp16 or bf16")
    batch_sizes = sorted({1, int(cfg.batch_size)})
    flops_only = bool(cfg.get("flops_only"))
    torch.backends.cudnn.benchmark = device.type == "cuda"
    rows = []
    for name in tqdm(names, desc="benchmark", unit="model", disable=not cfg.get("progress", True)):
        try:
            rows.append(benchmark_model(name, cfg, device, batch_sizes))
        except SegkitError as err:
            if len(names) == 1:
                raise
            rows.append(BenchmarkRow(name, error=str(err)[:80]))
    where = "meta device (counts only)" if flops_only else f"{device}"
    if device.type == "cuda" and not flops_only:
        where += f" ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu" and not flops_only:
        where += f" ({torch.get_num_threads()} threads)"
    header = (
        f"Input {cfg.height}x{cfg.width}, {cfg.num_classes} classes, {where}"
        + (
            ""
            if flops_only
            else f", {cfg.precision}, channels_last={bool(cfg.get('channels_last'))}, "
            f"torch.compile={bool(cfg.get('compile'))}, median of {cfg.repeats} after {cfg.warmup} warm-up"
        )
        + ". GFLOPs = 2 x multiply-accumulates at batch 1.\n\n"
    )
    text = header + markdown_table(rows, batch_sizes, flops_only)
    print(text)
    if cfg.get("output"):
        Path(str(cfg.output)).parent.mkdir(parents=True, exist_ok=True)
        Path(str(cfg.output)).write_text(text)
        log.info(f"table written to {cfg.output}")
    return {f"{r.model}/gflops": r.flops / 1e9 for r in rows}
