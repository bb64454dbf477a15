"""Benchmark model configs: params, GFLOPs, latency/FPS at batch 1 and a chosen batch, peak memory.

    python src/benchmark.py models=[unet,enet] height=360 width=480 device=cpu
    python src/benchmark.py models=[all] flops_only=true height=512 width=1024   # the README model table

Prints a markdown table and writes it to `output` (default: the run directory). `--help` lists the options.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.cli import run_entry_point, run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> float | None:
    from segkit.tasks.benchmark import benchmark_from_config  # imported here so --help does not wait for torch

    return run_task(benchmark_from_config, cfg)


if __name__ == "__main__":
    run_entry_point(main, "benchmark")
