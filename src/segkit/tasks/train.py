"""What ``src/train.py`` runs: build everything from the composed config, fit, test, report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary

from segkit import SegkitError
from segkit.callbacks.console import ModelSummary as SegkitModelSummary
from segkit.checkpoint_io import SegkitCheckpointIO, check_resume_state
from segkit.cli import segkit_cause
from segkit.data.datamodule import SegmentationDataModule
from segkit.files import atomic_write_text
from segkit.loading import check_weights_fit, read_checkpoint
from segkit.losses import build_loss
from segkit.models.module import SegmentationModule, split_model_config
from segkit.precision import settle_training_precision, stored_training_precision
from segkit.sync_batchnorm import CpuSyncBatchNorm

log = logging.getLogger("segkit")


def instantiate_group(cfg: DictConfig | None, group: str) -> list[Any]:
    """The objects of a dict-of-configs group (``callbacks``, ``logger``); entries set to null are skipped."""
    objects = []
    for name, item in (cfg or {}).items():
        if item is None:
            continue
        if not isinstance(item, DictConfig) or "_target_" not in item:
            raise SegkitError(f"{group}.{name} must be a config with a _target_; got {item!r}")
        objects.append(hydra.utils.instantiate(item))
    return objects


def build_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    return instantiate_datamodule(cfg.data)


def instantiate_datamodule(data_cfg: DictConfig) -> SegmentationDataModule:
    """``data`` config -> data module; a ``SegkitError`` raised inside Hydra's instantiation surfaces as itself."""
    return instantiate_user_config(data_cfg, _recursive_=True)


def instantiate_user_config(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of the user's own config; a ``SegkitError`` raised inside (a bad table, transform
    key or weights file) surfaces as itself, so it stays one line."""
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = segkit_cause(err)
        if cause is None:
            raise
        raise cause from None


def build_module(cfg: DictConfig, datamodule: SegmentationDataModule) -> SegmentationModule:
    """The net gets ``num_classes`` and ``in_channels`` from the data; the rest comes from its groups."""
    net_cfg, moved = split_model_config(cfg.model)
    if moved is not None:
        raise SegkitError(
            "model.aux_weights has moved to the top-level key aux_weights (e.g. aux_weights={aux:0.4} on the command "
            "line, or aux_weights: at the top of an experiment file); without it the net's published weights apply"
        )
    aux_weights = cfg.get("aux_weights")
    if aux_weights is not None:
        if not isinstance(aux_weights, DictConfig):  # e.g. aux_weights=0.2: a weight without the head it is for
            raise SegkitError(
                f"aux_weights={aux_weights!r} is not a mapping: give each auxiliary head its loss weight, e.g. "
                f"aux_weights={{aux:{aux_weights}}} (or ++aux_weights.aux={aux_weights}); leave it out for the net's "
                "published weights"
            )
        aux_weights = OmegaConf.to_container(aux_weights, resolve=True)
    net = instantiate_user_config(net_cfg, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    loss = build_loss(cfg.loss, datamodule)
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    if cfg.optimizer.get("_target_") == "segkit.optim.make_optimizer":  # a config written before the torch partials
        raise SegkitError(
            "optimizer._target_=segkit.optim.make_optimizer is gone; use optimizer=adam|adamw|sgd|rmsprop "
            "(or _target_: torch.optim.<Class> with _partial_: true, as conf/optimizer/*.yaml)"
        )
    return SegmentationModule(
        net=net,
        loss=loss,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=scheduler,
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        aux_weights=aux_weights,
        config=stored_run_config(cfg, datamodule),
        channels_last=bool(cfg.get("channels_last", False)),
        data_facts=datamodule.describe(),
    )


def stored_run_config(cfg: DictConfig, datamodule: SegmentationDataModule) -> dict[str, Any]:
    """The resolved run config a checkpoint stores, with the label table expanded in place (a table file, ``base``
    or ``reduce_zero_label`` already applied), so eval and predict rebuild the data from the checkpoint alone."""
    config = OmegaConf.to_container(cfg, resolve=True)
    data = config.get("data")
    if isinstance(data, dict) and "labels" in data:
        data["labels"] = datamodule.labels.to_config()
        if "reduce_zero_label" in data:
            data["reduce_zero_label"] = None
    return config


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None, train_batches: int | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured callbacks and loggers. ``train_batches`` (per process and
    epoch) caps ``log_every_n_steps``, so a short epoch still logs its steps (Lightning would warn instead). The
    model summary is segkit's (``segkit.callbacks.ModelSummary``: no column of zero FLOPs)."""
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks") + list(extra_callbacks or [])
    options: dict[str, Any] = {"enable_model_summary": False}
    if cfg.trainer.get("enable_model_summary", True) and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(SegkitModelSummary())
    if train_batches:
        options["log_every_n_steps"] = max(1, min(int(cfg.trainer.get("log_every_n_steps") or 50), train_batches))
    loggers = instantiate_group(cfg.get("logger"), "logger")
    sync_bn = resolve_sync_batchnorm(cfg.trainer)
    plugins: list[Any] = [CpuSyncBatchNorm()] if sync_bn == "cpu" else []
    folders = [Path(c.dirpath) for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    checkpoint_io = SegkitCheckpointIO(folders, cfg.trainer.get("default_root_dir"))
    plugins.append(checkpoint_io)  # resume and test read checkpoints as untrusted data
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        sync_batchnorm=sync_bn == "gpu",
        plugins=plugins,
        **options,
    )
    checkpoint_io.trainer = trainer
    return trainer


def train_batches_per_epoch(trainer_cfg: DictConfig, images: int, batch_size: int) -> int:
    """Training batches each process runs per epoch, as Lightning will count them: the split shared among
    ``world_size`` processes, incomplete batches dropped, then ``overfit_batches`` / ``limit_train_batches`` (an int
    is a number of batches, a float a fraction)."""
    batches = images // max(1, world_size(trainer_cfg)) // max(1, batch_size)
    overfit = trainer_cfg.get("overfit_batches") or 0
    for limit in (overfit if overfit else None, trainer_cfg.get("limit_train_batches")):
        if isinstance(limit, bool) or limit is None:
            continue
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * float(limit))
    return batches


def world_size(trainer_cfg: DictConfig) -> int:
    """The processes ``trainer_cfg`` starts (devices x nodes), read from the config before any Trainer exists."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    devices = trainer_cfg.get("devices", 1)
    if devices in (-1, "-1", "auto", None):
        count = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, (int, str)) and str(devices).isdigit():
        count = int(devices)
    else:  # a list of device ids, or "0,1"
        count = len(devices) if not isinstance(devices, str) else len([d for d in devices.split(",") if d.strip()])
    return max(1, count) * int(trainer_cfg.get("num_nodes", 1) or 1)


def resolve_sync_batchnorm(trainer_cfg: DictConfig) -> str | None:
    """Where ``trainer.sync_batchnorm: true`` meets DDP over more than one device: ``"gpu"`` (torch's
    SyncBatchNorm, through Lightning's ``sync_batchnorm``) or ``"cpu"`` (segkit.sync_batchnorm's all-reduce
    version for gloo, as a layer-sync plugin); ``None`` when off or with one device (nothing to synchronise)."""
    if not trainer_cfg.get("sync_batchnorm"):
        return None
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if world_size(trainer_cfg) <= 1:
        return None
    return "gpu" if on_gpu else "cpu"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the final metrics (``cfg.optimized_metric`` among them).

    Writes ``result.json`` into the run directory when it ends, however it ends (``completed``, ``pruned`` by an
    Optuna sweep, or ``failed`` with the error), for ``scripts/summarize_runs.py`` and sweep tooling.
    """
    output_dir = _output_dir(cfg)
    try:
        metrics = _fit_and_test(cfg)
    except BaseException as err:
        _finish_wandb(failed=True)
        if output_dir is not None and _is_global_zero():
            stopped = isinstance(err, (KeyboardInterrupt, SystemExit))  # Lightning turns Ctrl-C into SystemExit
            status = "interrupted" if stopped else "failed"
            write_result(output_dir, status, cfg.get("optimized_metric"), {}, error=None if stopped else err)
        raise
    _finish_wandb(failed=False)
    return metrics


def _fit_and_test(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    ckpt_path = cfg.get("ckpt_path")
    stored_precision, resumed = None, None
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise SegkitError(f"ckpt_path='{ckpt_path}' does not exist; point it at a run's checkpoints/last.ckpt")
        # a garbage or unsafe file fails here with one line, before any training; a resume keeps its precision
        resumed = read_checkpoint(ckpt_path)
        check_resume_state(resumed, f"ckpt_path '{ckpt_path}'")
        stored_precision = stored_training_precision(resumed)
    precision = settle_training_precision(cfg, stored_precision)  # Lightning has no "auto": chosen here, logged
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")  # the data folder, its files and the label table are checked before any net is built
    check_logger_logins(cfg.get("logger"))  # and a W&B login, before minutes of downloads and building
    module = build_module(cfg, datamodule)
    module.precision_reason = precision[1]
    if resumed is not None:  # one line, not Lightning's wall of keys, when the file is for another net
        state = resumed.get("state_dict")
        if not isinstance(state, dict):
            raise SegkitError(f"ckpt_path '{ckpt_path}' has no state_dict; resume from a last.ckpt of src/train.py")
        check_weights_fit(module, state, f"ckpt_path '{ckpt_path}'", datamodule.num_classes)
        del resumed, state
    pruning = optuna_pruning(cfg)
    train_batches = train_batches_per_epoch(cfg.trainer, len(datamodule.split_dataset("train")), datamodule.batch_size)
    trainer = build_trainer(cfg, extra_callbacks=[pruning] if pruning else [], train_batches=train_batches)
    if cfg.get("compile"):  # the net in place: metrics and logging stay eager, checkpoint keys unchanged
        module.net.compile(backend=cfg.get("compile_backend") or "inductor")

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    pruned = bool(pruning and pruning.pruned)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test") and datamodule.splits.get("test") and not pruned:
        try:
            test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        except SegkitError as err:  # e.g. a dataset copy without its test split: keep the trained run's result
            log.warning(f"test skipped: {err} (or set test=false / data.splits.test=val)")
            test_metrics = []
        for result in test_metrics:
            metrics.update({k: float(v) for k, v in result.items()})
    monitor = trainer.checkpoint_callback.monitor if trainer.checkpoint_callback else None
    if monitor and trainer.checkpoint_callback.best_model_score is not None:
        metrics[f"best/{monitor}"] = float(trainer.checkpoint_callback.best_model_score)
    metrics["best_model_path"] = best  # type: ignore[assignment]
    if pruning is not None and trainer.is_global_zero and pruned:
        pruning.record_pruned()
    if trainer.is_global_zero:
        _report(metrics, best, cfg.get("optimized_metric"))
        write_result(
            Path(trainer.default_root_dir),
            "pruned" if pruned else "completed",
            cfg.get("optimized_metric"),
            metrics,
            precision=precision,
        )
    return metrics


def check_logger_logins(logger_cfg: DictConfig | None) -> None:
    """A W&B logger that would log online needs a login: checked with the data, before the net is built."""
    for name, item in (logger_cfg or {}).items():
        if isinstance(item, DictConfig) and "wandb" in str(item.get("_target_", "")).lower():
            from segkit.callbacks.wandb_dashboard import check_wandb_login

            check_wandb_login(offline=bool(item.get("offline")), key=f"logger.{name}")


def optuna_pruning(cfg: DictConfig):
    """The pruning callback of a trial job (``optuna_trial=<id>``, set by the segkit_optuna sweeper), else None."""
    if cfg.get("optuna_trial") is None:
        return None
    from segkit.sweeps import OptunaPruning, sweeper_settings

    pruner, storage, study_name = sweeper_settings()
    if storage is None:
        raise SegkitError("optuna_trial is set by the segkit_optuna sweeper only; remove it from the command line")
    monitor = cfg.get("optimized_metric") or "val/mIoU"
    return OptunaPruning(int(cfg.optuna_trial), storage, study_name, pruner=pruner, monitor=monitor)


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
    value = metrics.get(f"best/{optimized}", metrics.get(optimized)) if optimized else None
    payload = {
        "status": status,
        "optimized_metric": optimized,
        "value": value,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    if precision is not None:
        payload["precision"], payload["precision_reason"] = precision
    overrides = _job_overrides()
    if overrides is not None:
        payload["overrides"] = overrides
    if error is not None:
        cause = _real_cause(error)
        payload["error"] = f"{type(cause).__name__}: {cause}".splitlines()[0][:1000]
    atomic_write_text(run_dir / "result.json", json.dumps(payload, indent=2, allow_nan=True))


def _job_overrides() -> list[str] | None:
    """The command line's overrides of this Hydra job, all of them (a sweep's folder name shows a rounded few)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]  # ${} as typed


def _real_cause(error: BaseException) -> BaseException:
    """What went wrong behind Hydra's "Error in call to target ..." wrapping: the ``SegkitError`` if there is one,
    else the innermost explicit cause of an ``InstantiationException``."""
    cause = segkit_cause(error)
    if cause is not None:
        return cause
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(str(cfg.paths.output_dir))
    except Exception:  # outside a Hydra run ${hydra:...} does not resolve
        return None


def _is_global_zero() -> bool:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _finish_wandb(failed: bool) -> None:
    """End this job's W&B run, so the next job of a multirun starts its own (WandbLogger reuses ``wandb.run``)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        from segkit.callbacks.wandb_dashboard import report_offline_run

        run = wandb.run  # finish() clears wandb.run; its settings still say where it went
        wandb.finish(exit_code=1 if failed else 0)
        report_offline_run(run)


def _report(metrics: dict, best: str, optimized: str | None) -> None:
    keys = [
        k
        for k in (
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
        if k in metrics
    ]
    log.info("final metrics: " + "  ".join(f"{k}={metrics[k]:.4f}" for k in keys))
    log.info(f"best checkpoint: {best or '(none saved)'}")
    if optimized and optimized not in metrics:
        log.warning(f"optimized_metric '{optimized}' was not logged; available: {sorted(metrics)}")
