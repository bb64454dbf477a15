"""A run folder someone shared is untrusted: segkit continues in one only when nothing in it redirects a write.

Resuming appends to ``train.log``, rewrites ``.hydra/*.yaml``, ``config_tree.yaml``, ``curves.png``, the CSV log
and checkpoints, all by name. A symbolic link planted at any of those names (or at a folder above them) would make
the resume write to whatever file it points at, a ``.bashrc`` included, so ``check_run_folder`` refuses a folder
holding a link, except the links W&B keeps inside its own ``wandb/`` folder (to files of the run or of W&B's log
cache). Folder names
go to Hydra on the command line, where ``${...}`` would be interpolated: ``hydra_quote`` escapes them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from segkit import SegkitError

MAX_ENTRIES = 100_000


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse, in one line, a run folder that is itself a link or holds a symbolic link segkit could write through."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise SegkitError(
            f"run folder '{run_dir}' is a symbolic link; segkit writes only into real folders: resume from "
            f"'{os.path.realpath(run_dir)}' or a copy"
        )
    real_root = os.path.realpath(run_dir)
    seen = 0
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > MAX_ENTRIES:
                raise SegkitError(f"run folder '{run_dir}' holds over {MAX_ENTRIES} entries; not a segkit run")
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            relative = path.relative_to(run_dir)
            target = os.path.realpath(path)
            inside = os.path.commonpath([real_root, target]) == real_root
            if relative.parts[0] == "wandb" and len(relative.parts) > 1 and (inside or _in_wandb_cache(target)):
                continue  # W&B's own latest-run / debug.log links: inside the run, or to its log cache
            raise SegkitError(
                f"run folder '{run_dir}' holds a symbolic link '{relative}' -> '{os.readlink(path)}'; segkit will "
                "not write through links: remove it, or resume from a copy made with cp -rL"
            )


def _in_wandb_cache(target: str) -> bool:
    """W&B links each run's debug logs to its cache folder (``~/.cache/wandb`` or ``$WANDB_CACHE_DIR``)."""
    caches = [os.environ.get("WANDB_CACHE_DIR") or "", os.path.expanduser("~/.cache/wandb")]
    for cache in filter(None, caches):
        real = os.path.realpath(cache)
        if os.path.commonpath([real, target]) == real:
            return True
    return False


def hydra_quote(value: str) -> str:
    """``value`` as a double-quoted Hydra override value that Hydra takes literally (no ``${}`` interpolation)."""
    escaped = re.sub(r'(\\+)(?=["]|$|\$\{)', lambda m: m.group(1) * 2, value)  # backslashes that precede an escape
    escaped = escaped.replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'
