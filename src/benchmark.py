"""Benchmark model configs: params, GFLOPs, latency/FPS at batch 1 and a chosen batch, peak memory.

    python src/benchmark.py models=[unet,enet] height=360 width=480 device=cpu
    python src/benchmark.py models=[all] flops_only=true height=512 width=1024   # the README model table

Prints a markdown table and writes it to `output` (default: the run directory). `--help` lists the options.
"""

from segkit.entry import benchmark

if __name__ == "__main__":
    benchmark()
