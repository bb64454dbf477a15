"""A Hydra sweeper that runs an Optuna study whose trials can resume after a kill and be pruned.

Hydra loads sweepers only from the ``hydra_plugins`` namespace, hence this module; the logic is in
``segkit.sweeps``. It imports nothing heavy at module level: Hydra imports every plugin on start-up.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SegkitOptunaSweeper(Sweeper):
    """Args (``hydra.sweeper.*``):
    sampler / pruner: Optuna sampler and pruner configs (``_target_``); pruner null never prunes.
    direction: ``maximize`` or ``minimize`` the value train.py returns (``optimized_metric``).
    storage: an Optuna storage URL; null keeps the study in ``<sweep dir>/optuna.db``. Give the same storage
        and study name to resume a sweep.
    study_name: the study's name in the storage.
    n_trials: the total number of finished trials the study should hold (earlier runs' count).
    n_jobs: trials launched at once (in parallel with a parallel launcher, e.g. submitit).
    params: the search space, in Hydra's sweep syntax (``choice``, ``range``, ``interval``, ``tag(log, ...)``).
    enqueue_trials: parameter sets to try first (a new study only), e.g. known good settings.
    max_failure_rate: the share of a batch's trials that may raise before the sweep stops (0: none).
    """

    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Any = None,
        enqueue_trials: Any = None,
        max_failure_rate: float = 0.0,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.enqueue = enqueue_trials
        self.max_failure_rate = float(max_failure_rate)
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _build(self, cfg: Any) -> Any:
        """Hydra instantiates the sweeper's arguments recursively; a config given another way is built here."""
        from hydra.utils import instantiate

        if isinstance(cfg, (DictConfig, dict)) and "_target_" in cfg:
            return instantiate(cfg)
        return cfg or None

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        from segkit.sweeps import default_storage, finished_trials, recover_interrupted, search_space

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        spaces, fixed = search_space(self.params, arguments)
        storage = self.storage or default_storage(sweep_dir)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self._build(self.sampler_cfg),
            pruner=self._build(self.pruner_cfg) or optuna.pruners.NopPruner(),
            direction=self.direction,
            load_if_exists=True,
        )
        if not study.get_trials(deepcopy=False):
            for params in OmegaConf.to_container(self.enqueue, resolve=True) if self.enqueue else []:
                study.enqueue_trial(dict(params))
        else:  # a resumed study: a seeded sampler would otherwise draw the first trials' parameters again
            study.sampler.reseed_rng()
        rerun = recover_interrupted(study)
        done = len(finished_trials(study))
        log.info(
            f"Optuna study '{study.study_name}' in {storage}: {done} finished trial(s), {rerun} interrupted "
            f"to rerun, {max(0, self.n_trials - done)} to go of n_trials={self.n_trials}"
        )
        remaining = self.n_trials - done
        while remaining > 0:
            trials = [study.ask(fixed_distributions=spaces) for _ in range(min(self.n_jobs, remaining))]
            overrides = [
                [f"{k}={v}" for k, v in fixed.items()]
                + [f"{k}={v}" for k, v in trial.params.items()]
                + [f"optuna_trial={trial._trial_id}"]  # noqa: SLF001  (the id the job reaches its trial by)
                for trial in trials
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
            errors = []
            for trial, ret in zip(trials, returns, strict=True):
                if states.get(trial.number) != TrialState.RUNNING:  # the job recorded it (pruned)
                    continue
                try:
                    value = ret.return_value
                except Exception as err:  # the job raised: a failed trial
                    study.tell(trial, state=TrialState.FAIL)
                    errors.append(err)
                    continue
                if value is None or not math.isfinite(float(value)):
                    log.warning(f"Optuna trial {trial.number} returned {value!r}: recorded as failed")
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, float(value))
            if errors and len(errors) / len(returns) > self.max_failure_rate:
                raise errors[0]
            remaining -= len(trials)
        return self._write_results(study, sweep_dir)

    def _write_results(self, study: Any, sweep_dir: Path) -> Any:
        from optuna.trial import TrialState

        counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        for trial in study.get_trials(deepcopy=False):
            if trial.state.name.lower() in counts:
                counts[trial.state.name.lower()] += 1
        results = {"name": "optuna", "study_name": study.study_name, "trials": counts}
        try:
            best = study.best_trial
            results.update(best_params=dict(best.params), best_value=float(best.value))
            log.info(f"Best parameters: {best.params}  value: {best.value}")
        except ValueError:
            log.warning("no trial completed: no best parameters")
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        return results
