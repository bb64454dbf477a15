"""Size, cost and speed of a net: parameters, FLOPs, forward latency (``segkit.tasks.benchmark`` tabulates them).

Parameters and FLOPs are counted on the meta device (no memory, no arithmetic), so even FCN-8s at 1024x2048
is counted exactly at the stated resolution in a second; latency needs real weights on the chosen device.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segkit import SegkitError
from segkit.build import build_net
from segkit.inference import net_logits

log = logging.getLogger("segkit")


def count_params(net: nn.Module) -> int:
    """The net's parameters, every one counted (frozen ones and auxiliary heads included)."""
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
