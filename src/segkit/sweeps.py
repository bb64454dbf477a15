"""Optuna searches that survive a kill and stop bad trials early.

The sweeper (``hydra/sweeper=segkit_optuna``, ``hydra_plugins.segkit_optuna_sweeper``) asks Optuna for trials and
launches them through Hydra's launcher like any multirun; these helpers hold what both sides share:

- resuming: the study lives in a storage (by default ``sqlite:///<sweep dir>/optuna.db``); a sweep started again
  with the same storage and study name keeps its finished trials, reruns the ones a kill left RUNNING (failed and
  enqueued again with the same parameters) and runs only what ``n_trials`` still asks for;
- pruning: each trial job gets ``optuna_trial=<trial id>``; ``OptunaPruning`` reports the monitored metric after
  every validation and asks the study's pruner (``hydra.sweeper.pruner``, e.g. MedianPruner) whether to stop.
  A pruned trial stops at the end of that epoch and is recorded as PRUNED by the job itself.

The lightning-hydra-template's Optuna plugin can do neither (its issues #535 and #176): its trials cannot reach
the study, and a restarted sweep counts ``n_trials`` anew.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning import Callback

from segkit import SegkitError

log = logging.getLogger("segkit")

INTERRUPTED = "segkit_interrupted"
DB_NAME = "optuna.db"


def default_storage(sweep_dir: str | Path) -> str:
    """The study's storage when ``hydra.sweeper.storage`` is null: an SQLite file in the sweep directory."""
    return f"sqlite:///{Path(sweep_dir).resolve() / DB_NAME}"


def distribution(override: Any):
    """A Hydra sweep override (``choice``, ``range``, ``interval``, with ``tag(log, ...)``) -> an Optuna
    distribution."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution([_plain(v) for v in value.list])
    log_scale = "log" in value.tags
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        count = math.ceil((stop - start) / step)  # Hydra's range excludes stop, like Python's
        if count < 1:
            raise ValueError(f"hydra.sweeper.params.{override.get_key_element()}: empty range")
        if all(float(x).is_integer() for x in (start, stop, step)):
            return d.IntDistribution(int(start), int(start) + (count - 1) * int(step), step=int(step))
        return d.FloatDistribution(float(start), float(start) + (count - 1) * float(step), step=float(step))
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"hydra.sweeper.params.{override.get_key_element()}: {type(value).__name__} is not supported")


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """``hydra.sweeper.params`` plus command-line sweep overrides -> (distributions, fixed overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    spaces, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            spaces[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return spaces, fixed


def recover_interrupted(study) -> int:
    """Trials a killed sweep left RUNNING: marked failed (and interrupted) and enqueued again with their params."""
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001  (Optuna's documented storage API lives on the study's storage)
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in stale:
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)  # noqa: SLF001
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        study.enqueue_trial(dict(trial.params), skip_if_exists=False)
        log.info(f"optuna: trial {trial.number} was interrupted; it runs again with {dict(trial.params)}")
    return len(stale)


def finished_trials(study) -> list:
    """Completed, pruned and failed trials, not counting those a kill interrupted (they are rerun)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False) if t.state in done and not t.user_attrs.get(INTERRUPTED)]


def sweeper_settings() -> tuple[Any, str | None, str | None]:
    """(pruner, storage, study name) of the sweep this job belongs to, from the Hydra config of the job."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None, None
    hc = HydraConfig.get()
    sweeper = hc.sweeper
    import optuna

    # no pruner configured means none: Optuna's load_study would otherwise default to a MedianPruner
    pruner = hydra.utils.instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
    storage = sweeper.get("storage") or default_storage(hc.sweep.dir)
    return pruner, storage, sweeper.get("study_name")


def optuna_pruning(cfg: DictConfig) -> OptunaPruning | None:
    """The pruning callback of a trial job (``optuna_trial=<id>``, set by the segkit_optuna sweeper), else None."""
    if cfg.get("optuna_trial") is None:
        return None
    pruner, storage, study_name = sweeper_settings()
    if storage is None:
        raise SegkitError("optuna_trial is set by the segkit_optuna sweeper only; remove it from the command line")
    monitor = cfg.get("optimized_metric") or "val/mIoU"
    return OptunaPruning(int(cfg.optuna_trial), storage, study_name, pruner=pruner, monitor=monitor)


class OptunaPruning(Callback):
    """Reports ``monitor`` to the trial after each validation (step = epoch) and stops the run when the study's
    pruner says so. Built by ``optuna_pruning`` for a job launched with ``optuna_trial=<id>``.

    Args:
        trial_id: the trial's storage id (the sweeper passes it).
        storage / study_name: where the study lives.
        pruner: an ``optuna.pruners.BasePruner``; None reports values without pruning.
        monitor: the metric the sweep optimises, e.g. ``val/mIoU``.
    """

    def __init__(self, trial_id: int, storage: str, study_name: str, pruner=None, monitor: str = "val/mIoU") -> None:
        import optuna

        self.study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
        self.trial = optuna.trial.Trial(self.study, int(trial_id))
        self.monitor, self.pruned, self.last_value = monitor, False, None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.monitor in trainer.callback_metrics:
            value = float(trainer.callback_metrics[self.monitor])
            if math.isfinite(value):
                self.trial.report(value, step=trainer.current_epoch)
                self.last_value = value
                prune = self.trial.should_prune()
        prune = bool(trainer.strategy.broadcast(prune, src=0))  # every DDP rank stops together
        if prune:
            self.pruned = True
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info(f"optuna: trial {self.trial.number} pruned after epoch {trainer.current_epoch}")

    def record_pruned(self) -> None:
        """Tell the study this trial was pruned (the sweeper leaves trials the job already finished alone)."""
        from optuna.trial import TrialState

        self.study.tell(self.trial, state=TrialState.PRUNED)
