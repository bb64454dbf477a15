"""The entry points: ``src/train.py`` (and eval, predict, export, benchmark) in a checkout, the ``segkit-train``
(``segkit-eval``, ...) commands of an installed package. Each composes its config from the package's ``segkit.conf``
and runs its task through ``segkit.cli`` (one-line errors, run folders, DDP ranks)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from segkit.cli import run_entry_point, run_task

TASKS = {
    "train": "segkit.tasks.train:train",
    "eval": "segkit.tasks.evaluate:evaluate_from_config",
    "predict": "segkit.tasks.predict:predict_from_config",
    "export": "segkit.tasks.export:export_from_config",
    "benchmark": "segkit.tasks.benchmark:benchmark_from_config",
}


def _task(name: str) -> Callable[[DictConfig], Any]:
    """The task function, imported when the run starts (so ``--help`` does not wait for torch)."""
    module, _, function = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _hydra_main(name: str) -> Callable[[], Any]:
    """The ``@hydra.main`` function of an entry point (``run_entry_point`` runs it with segkit's error lines)."""

    @hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name=name)
    def main(cfg: DictConfig) -> float | None:
        return run_task(_task(name), cfg)

    return main


MAINS = {name: _hydra_main(name) for name in TASKS}


def _entry(name: str) -> Callable[[], None]:

    def run() -> None:
        if name == "train":
            from segkit.cli import resume_in_place
            from segkit.cluster import shared_run_dir

            sys.argv = shared_run_dir(resume_in_place(sys.argv), os.environ)  # srun/torchrun ranks: one run folder
        run_entry_point(MAINS[name], name)

    run.__name__ = name
    return run


train = _entry("train")
evaluate = _entry("eval")
predict = _entry("predict")
export = _entry("export")
benchmark = _entry("benchmark")
