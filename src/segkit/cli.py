"""Shared behaviour of the entry points: print the config, turn user errors into one clear line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segkit import NonFiniteLossError, SegkitError

log = logging.getLogger("segkit")


def run_task(task: Callable[[DictConfig], dict], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)``; return ``cfg.optimized_metric`` from its metrics (for Hydra sweepers).

    A ``SegkitError`` (bad path, bad key, bad data) is logged as one line and exits with status 1.
    """
    if cfg.get("extras", {}).get("print_config") and _is_rank_zero():  # one copy under srun/torchrun/DDP
        print_config(cfg)
    try:
        metrics = task(cfg)
    except Exception as err:
        cause = segkit_cause(err)
        if cause is None:
            raise
        log.error(f"error: {cause}")
        if _in_multirun():  # the job fails, not the process: the sweeper records it (and may go on)
            if isinstance(cause, NonFiniteLossError):
                return float("nan")  # a failed trial, and the sweep goes on
            raise
        sys.exit(1)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(f"best/{name}", metrics.get(name))
    return None if value is None else float(value)


def resume_in_place(argv: list[str]) -> list[str]:
    """``ckpt_path=<run>/checkpoints/last.ckpt`` continues that run in its own directory: the same checkpoints
    folder (so Lightning keeps the best checkpoint and its score), CSV log and W&B run. Adds
    ``hydra.run.dir=<run>`` to a single run's arguments unless one is given."""
    if any(a in ("-m", "--multirun") or a.startswith(("hydra.run.dir=", "hydra/", "hydra.mode=")) for a in argv):
        return argv
    ckpt = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("ckpt_path=")), "")
    path = Path(ckpt.strip("'\"")).expanduser() if ckpt and ckpt != "null" else None
    if path is None or path.parent.name != "checkpoints" or not (path.parent.parent / ".hydra").is_dir():
        return argv
    run_dir = str(path.parent.parent.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    return [*argv, f'hydra.run.dir="{run_dir}"']  # quoted: sweep job folders hold '=' and ','


# Keys that moved: old command-line spelling -> new one. Hydra would only say that the old key is "not in struct".
MOVED_KEYS = {"model.aux_weights": "aux_weights"}


def refuse_moved_keys(argv: list[str]) -> None:
    """Exit with one line naming the new spelling when an override uses a key that has moved."""
    for arg in argv[1:]:
        key, _, value = arg.lstrip("+~").partition("=")
        for old, new in MOVED_KEYS.items():
            if key == old or key.startswith(old + "."):
                moved = new + key[len(old) :]
                if arg.startswith("~"):
                    spelling = f"~{moved} (or leave it out)"
                else:
                    spelling = f"{moved}={value}" if moved == new else f"++{moved}={value}"
                print(f"error: {key} has moved to {moved}; write {spelling}", file=sys.stderr)
                raise SystemExit(1)


def _is_rank_zero() -> bool:
    """Rank 0 of a multi-process launch, known from the launcher's environment before any process group exists
    (Lightning reads RANK, LOCAL_RANK, SLURM_PROCID at import)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def segkit_cause(err: BaseException) -> SegkitError | None:
    """The ``SegkitError`` behind ``err`` (Hydra wraps errors raised while instantiating), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SegkitError):
            return err
        seen.add(id(err))
        err = err.__cause__  # explicit causes only (Hydra raises from the error it wraps)
    return None


def print_config(cfg: DictConfig) -> None:
    """Show the composed config as YAML (resolved where possible) and save it in the run directory."""
    text = OmegaConf.to_yaml(cfg, resolve=False)
    try:
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    except ImportError:  # rich is a dependency, but the config must print regardless
        print(text)
    output_dir = cfg.get("paths", {}).get("output_dir")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "config_tree.yaml").write_text(text)
