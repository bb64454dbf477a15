"""Kept so the command lines written before the entry points moved keep working: forwards to ``src/benchmark.py``
(same arguments, same config ``conf/benchmark.yaml``). New spelling: ``python src/benchmark.py ...``."""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "src" / "benchmark.py"), run_name="__main__")
