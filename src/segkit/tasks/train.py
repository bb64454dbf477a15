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

from segkit import SegkitError
from segkit.cli import segkit_cause
from segkit.data.datamodule import SegmentationDataModule
from segkit.files import atomic_write_text
from segkit.loading import read_checkpoint
from segkit.losses import build_loss
from segkit.models.module import SegmentationModule, split_model_config
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
    try:
        return hydra.utils.instantiate(data_cfg, _recursive_=True)
    except InstantiationException as err:  # a bad table or transform key: its own one-line message
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
        aux_weights = OmegaConf.to_container(aux_weights, resolve=True)
        if not isinstance(aux_weights, dict):
            raise SegkitError(f"aux_weights={aux_weights!r}; give output name -> weight, e.g. aux_weights={{aux:0.4}}")
    net = hydra.utils.instantiate(net_cfg, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
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
        config=OmegaConf.to_container(cfg, resolve=True),
        channels_last=bool(cfg.get("channels_last", False)),
        data_facts=datamodule.describe(),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None) -> pl.Trainer:
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks") + list(extra_callbacks or [])
    loggers = instantiate_group(cfg.get("logger"), "logger")
    sync_bn = resolve_sync_batchnorm(cfg.trainer)
    extra = {"plugins": [CpuSyncBatchNorm()]} if sync_bn == "cpu" else {}
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, sync_batchnorm=sync_bn == "gpu", **extra
    )


def resolve_sync_batchnorm(trainer_cfg: DictConfig) -> str | None:
    """Where ``trainer.sync_batchnorm: true`` meets DDP over more than one device: ``"gpu"`` (torch's
    SyncBatchNorm, through Lightning's ``sync_batchnorm``) or ``"cpu"`` (segkit.sync_batchnorm's all-reduce
    version for gloo, as a layer-sync plugin); ``None`` when off or with one device (nothing to synchronise)."""
    if not trainer_cfg.get("sync_batchnorm"):
        return None
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    devices = trainer_cfg.get("devices", 1)
    if devices in (-1, "-1", "auto", None):
        count = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, (int, str)) and str(devices).isdigit():
        count = int(devices)
    else:  # a list of device ids, or "0,1"
        count = len(devices) if not isinstance(devices, str) else len([d for d in devices.split(",") if d.strip()])
    if count * int(trainer_cfg.get("num_nodes", 1) or 1) <= 1:
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
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise SegkitError(f"ckpt_path='{ckpt_path}' does not exist; point it at a run's checkpoints/last.ckpt")
        read_checkpoint(ckpt_path)  # a garbage or unsafe file fails here with one line, before any training
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    pruning = optuna_pruning(cfg)
    trainer = build_trainer(cfg, extra_callbacks=[pruning] if pruning else [])
    if cfg.get("compile"):  # Lightning unwraps the compiled module for checkpoints; first steps pay the compile
        module = torch.compile(module)

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
            Path(trainer.default_root_dir), "pruned" if pruned else "completed", cfg.get("optimized_metric"), metrics
        )
    return metrics


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
    run_dir: Path, status: str, optimized: str | None, metrics: dict, error: BaseException | None = None
) -> None:
    """``result.json``: how the run ended and its scores (written atomically)."""
    value = metrics.get(f"best/{optimized}", metrics.get(optimized)) if optimized else None
    payload = {
        "status": status,
        "optimized_metric": optimized,
        "value": value,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    if error is not None:
        payload["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:1000]
    atomic_write_text(run_dir / "result.json", json.dumps(payload, indent=2, allow_nan=True))


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
        wandb.finish(exit_code=1 if failed else 0)


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
