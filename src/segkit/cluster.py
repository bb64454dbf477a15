"""One run directory for every rank that a cluster launcher (srun, torchrun) starts.

Under ``srun`` or ``torchrun`` every rank runs ``python src/train.py`` itself, and each would compose its own
``hydra.run.dir`` from the clock (``logs/train/runs/<time with microseconds>``): N ranks, N folders, checkpoints in
one and ``.hydra`` and logs scattered over the others. Rank 0 cannot hand its folder to the others either: nothing
connects the ranks before ``torch.distributed`` is initialised, long after Hydra has made the folder. What they do
share from the start is the launcher's id of the job, so the folder is named by it:

- ``srun`` (Lightning's SLURM environment): ``runs/slurm-<SLURM_JOB_ID>``, ``slurm-<job id>.<step>`` for a later
  ``srun`` step of the same job. A job Lightning requeues (``#SBATCH --signal=SIGUSR1@90``) keeps its id, so its
  next start finds the ``hpc_ckpt_*.ckpt`` Lightning left there and continues.
- ``torchrun`` (Lightning's TorchElastic environment): ``runs/torchrun-<TORCHELASTIC_RUN_ID>``, the ``--rdzv-id``
  given, or the random id torchrun draws for a one-node run. Several nodes without ``--rdzv-id`` all get the id
  ``none``; then the SLURM job id serves when there is one, else the run stops with one line asking for
  ``--rdzv-id`` (or an explicit ``hydra.run.dir=``).

It applies only when the launcher started more than one process (one process has nobody to agree with) and never
overrides a ``hydra.run.dir=`` / ``hydra.sweep.dir=`` given on the command line. Ranks other than 0 also get
``hydra.output_subdir=null``, as Lightning does for the processes it starts itself: only rank 0 writes ``.hydra/``.
Lightning's own one-node launcher (``trainer=ddp`` without srun/torchrun) passes rank 0's folder to the processes it
starts (``hydra.run.dir=``), so it needs nothing from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

UNNAMED_TORCHRUN = "none"  # torchrun's --rdzv-id when none is given


def shared_run_dir(argv: list[str], environ: Mapping[str, str]) -> list[str]:
    """``argv`` plus the overrides that put every rank of this launch in one run directory (see the module)."""
    if world_size(environ) <= 1:
        return argv
    extra = []
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key, folder = ("hydra.sweep.dir", "multiruns") if multirun else ("hydra.run.dir", "runs")
    if not any(a.startswith(f"{key}=") for a in argv):
        extra.append(f"{key}='${{paths.log_dir}}/${{task_name}}/{folder}/{launch_name(environ)}'")
    if global_rank(environ) > 0 and not any(a.startswith("hydra.output_subdir=") for a in argv):
        extra.append("hydra.output_subdir=null")
    return [*argv, *extra]


def world_size(environ: Mapping[str, str]) -> int:
    """How many processes the launcher started: torchrun's ``WORLD_SIZE``, srun's ``SLURM_NTASKS``; 1 otherwise."""
    if _torchrun(environ):
        return int(environ.get("WORLD_SIZE", "1"))
    if _srun(environ):
        return int(environ.get("SLURM_NTASKS", "1"))
    return 1


def global_rank(environ: Mapping[str, str]) -> int:
    if _torchrun(environ):
        return int(environ.get("RANK", "0"))
    if _srun(environ):
        return int(environ.get("SLURM_PROCID", "0"))
    return 0


def launch_name(environ: Mapping[str, str]) -> str:
    """The folder name every rank of this launch computes alike: ``torchrun-<run id>`` or ``slurm-<job id>``."""
    run_id = environ.get("TORCHELASTIC_RUN_ID", "")
    if _torchrun(environ) and run_id and run_id != UNNAMED_TORCHRUN:
        return f"torchrun-{_safe(run_id)}"
    if environ.get("SLURM_JOB_ID"):
        step = environ.get("SLURM_STEP_ID", "0")
        suffix = f".{_safe(step)}" if step.isdigit() and int(step) > 0 else ""
        return f"slurm-{_safe(environ['SLURM_JOB_ID'])}{suffix}"
    raise SystemExit(
        "error: this torchrun launch has no run id (--rdzv-id), so each rank would make its own run directory; "
        "add --rdzv-id=<an id unique to this run> to the torchrun line (or hydra.run.dir=<one folder for all ranks>)"
    )


def _torchrun(environ: Mapping[str, str]) -> bool:
    return "TORCHELASTIC_RUN_ID" in environ  # what torch.distributed.is_torchelastic_launched() checks


def _srun(environ: Mapping[str, str]) -> bool:
    """Lightning's SLURM detection: a task of ``srun`` (``SLURM_NTASKS`` set) unless the job is an interactive
    shell (job name ``bash`` or ``interactive``), where Lightning leaves SLURM aside."""
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _safe(text: str) -> str:
    """A launcher's id as a folder name (and a Hydra override value): letters, digits, ``._-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)
