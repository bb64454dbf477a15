"""Where segkit's own files are (``conf_dir``), and small files written so that a crash or a kill never leaves half
of one behind."""

from __future__ import annotations

import importlib.resources
import os
import tempfile
from pathlib import Path


def conf_dir() -> Path:
    """The config folder, found through the package: ``segkit.conf`` is the checkout's top-level ``conf/`` (mapped by
    setup.cfg's ``package_dir``), installed with the package by ``pip install .``."""
    return Path(str(importlib.resources.files("segkit.conf")))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path`` (atomic on POSIX): readers
    see the old content or the new, never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared cache should follow the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
