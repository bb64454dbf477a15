"""What ``src/train.py`` runs: build everything from the composed config, fit, test, report."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from segkit import SegkitError
from segkit.build import build_datamodule, build_module, build_trainer, on_gpu, train_batches_per_epoch
from segkit.callbacks.wandb_dashboard import check_logger_logins, finish_wandb_run
from segkit.checkpoint_io import check_resume_state
from segkit.cli import is_rank_zero
from segkit.loading import check_weights_fit, read_checkpoint
from segkit.precision import settle_training_precision, stored_training_precision
from segkit.results import log_summary, write_result
from segkit.sweeps import optuna_pruning

log = logging.getLogger("segkit")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the final metrics (``cfg.optimized_metric`` among them).

    Writes ``result.json`` into the run directory when it ends, however it ends (``completed``, ``pruned`` by an
    Optuna sweep, or ``failed`` with the error), for ``scripts/summarize_runs.py`` and sweep tooling.
    """
    output_dir = _output_dir(cfg)
    try:
        metrics = _fit_and_test(cfg)
    except BaseException as err:
        finish_wandb_run(failed=True)
        if output_dir is not None and is_rank_zero():
            stopped = isinstance(err, (KeyboardInterrupt, SystemExit))  # Lightning turns Ctrl-C into SystemExit
            status = "interrupted" if stopped else "failed"
            write_result(output_dir, status, cfg.get("optimized_metric"), {}, error=None if stopped else err)
        raise
    finish_wandb_run(failed=False)
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
    if module.fp32_convs and precision[0] == "bf16-true" and not on_gpu(cfg.trainer):
        raise SegkitError(
            f"trainer.precision=bf16-true on a CPU: oneDNN's bf16 weight gradient of {module.fp32_convs[0]} (over "
            "2048 channels to under 16) corrupts memory; use trainer.precision=bf16-mixed (it keeps that layer fp32)"
        )
    if module.fp32_convs and precision[0] == "bf16-mixed" and not on_gpu(cfg.trainer):
        log.info(
            f"precision: {', '.join(module.fp32_convs[:4])} stay fp32 under bf16 autocast "
            "(oneDNN's bf16 weight gradient from over 2048 channels to under 16 corrupts memory)"
        )
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
        log_summary(metrics, best, cfg.get("optimized_metric"))
        write_result(
            Path(trainer.default_root_dir),
            "pruned" if pruned else "completed",
            cfg.get("optimized_metric"),
            metrics,
            precision=precision,
        )
    return metrics


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(str(cfg.paths.output_dir))
    except Exception:  # outside a Hydra run ${hydra:...} does not resolve
        return None
