"""How a run ended, for people and tools: ``result.json`` in the run folder (read by ``scripts/summarize_runs.py`` and
sweep tooling), the value a sweeper optimises, and the closing lines of the log."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segkit.files import atomic_write_text

log = logging.getLogger("segkit")

SUMMARY_METRICS = (
    "val/mIoU",
    "val/pixAcc",
    "val/mAcc",
    "val/fwIoU",
    "val/loss",
    "test/mIoU",
    "test/pixAcc",
    "test/mAcc",
    "test/fwIoU",
)


def optimized_value(metrics: Mapping[str, Any], name: str | None) -> Any:
    """The value of ``optimized_metric`` ``name`` in a run's metrics: its best checkpoint's score (``best/<name>``)
    where one was kept, else its last logged value; None when it was not logged (or no name is given)."""
    if not name:
        return None
    return metrics.get(f"best/{name}", metrics.get(name))


def job_overrides() -> list[str] | None:
    """The command line's overrides of this Hydra job, all of them and as typed (``${}`` kept; a sweep's folder name
    shows a rounded few); None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]


def write_result(
    run_dir: Path,
    status: str,
    optimized: str | None,
    metrics: dict,
    error: BaseException | None = None,
    precision: tuple[str, str] | None = None,
) -> None:
    """``result.json``: how the run ended, its scores and the precision it trained in, with why (written
    atomically)."""
    payload = {
        "status": status,
        "optimized_metric": optimized,
        "value": optimized_value(metrics, optimized),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    if precision is not None:
        payload["precision"], payload["precision_reason"] = precision
    overrides = job_overrides()
    if overrides is not None:
        payload["overrides"] = overrides
    if error is not None:
        from segkit.cli import error_cause

        cause = error_cause(error)
        payload["error"] = f"{type(cause).__name__}: {cause}".splitlines()[0][:1000]
    atomic_write_text(run_dir / "result.json", json.dumps(payload, indent=2, allow_nan=True))


def log_summary(metrics: Mapping[str, Any], best: str, optimized: str | None) -> None:
    """The closing lines of a training run: its main scores, its best checkpoint, and a warning when the metric a
    sweep optimises was never logged."""
    keys = [k for k in SUMMARY_METRICS if k in metrics]
    log.info("final metrics: " + "  ".join(f"{k}={metrics[k]:.4f}" for k in keys))
    log.info(f"best checkpoint: {best or '(none saved)'}")
    if optimized and optimized not in metrics:
        log.warning(f"optimized_metric '{optimized}' was not logged; available: {sorted(metrics)}")
