"""What a run prints is what a person reads: no config dump unless asked (it is saved beside the run), no notices
that ask nothing, no warnings segkit causes, a model summary without zero FLOPs, no logger version in the progress
bar, where an offline W&B run went with its `wandb sync` line, and each entry point's own usage on --help."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from segkit.cli import IGNORED_LOG_LINES, IGNORED_WARNINGS, quiet_third_party_notices, save_config
from tests.conftest import ROOT, SMALL_RUN

# SMALL_RUN with the console left as a user has it: config not printed by default, model summary and progress bar on
AS_A_USER_RUNS = [
    o
    for o in SMALL_RUN
    if not o.startswith(("trainer.enable_model_summary", "callbacks.progress_bar", "extras.print_config"))
]


def test_a_run_prints_what_a_person_reads(tmp_path):
    """An offline W&B run (wandb's own console silenced) with the default console: the summary without FLOPs, no
    litlogger tip, no pytree deprecation, no log_every_n_steps warning on a 2-batch epoch, no v_num, no config dump,
    and segkit's closing line with the folder and the `wandb sync` command."""
    env = {**os.environ, "SEGKIT_ROOT": str(tmp_path), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    env.pop("HYDRA_FULL_ERROR", None)
    args = [*AS_A_USER_RUNS, "data.batch_size=4", "data.val_batch_size=4", "logger=wandb"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Total params" in output and "FLOPs" not in output  # the summary, without a column of zeros
    for noise in ("litlogger", "LeafSpec", "log_every_n_steps", "v_num", "_target_", "anonymous"):
        assert noise not in output, (noise, output[-3000:])
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert "_target_: segkit.models.nets.unet.UNet" in (run / "config_tree.yaml").read_text()
    synced = re.search(r"W&B run saved offline in (\S+); upload it with: wandb sync (\S+)", output)
    assert synced and synced.group(1) == synced.group(2), output[-3000:]
    assert Path(synced.group(1)).is_dir() and Path(synced.group(1)).parent == run / "wandb"


def test_the_config_is_saved_always_and_printed_on_request(tmp_path, capsys):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": {"_target_": "x.Net"}, "paths": {"output_dir": str(tmp_path)}})
    save_config(cfg)
    assert capsys.readouterr().out == "" and "_target_: x.Net" in (tmp_path / "config_tree.yaml").read_text()
    save_config(cfg, show=True)
    assert "_target_: x.Net" in capsys.readouterr().out


def test_third_party_notices_are_filtered_by_their_exact_text(caplog):
    """The litlogger tip goes, Lightning's other lines from the same logger stay; the pytree deprecation goes, a
    warning that starts the same way stays."""
    import pytorch_lightning as pl

    logger = logging.getLogger(next(iter(IGNORED_LOG_LINES)))
    filters = logger.filters[:]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_third_party_notices()
            warnings.warn(IGNORED_WARNINGS[0], FutureWarning, stacklevel=1)
            warnings.warn(IGNORED_WARNINGS[0] + " And something new.", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == [IGNORED_WARNINGS[0] + " And something new."]
        with caplog.at_level(logging.INFO):
            pl.Trainer(logger=False, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False)
        output = "\n".join(r.getMessage() for r in caplog.records)
        assert "GPU available" in output and "litlogger" not in output
    finally:
        logger.filters[:] = filters


def test_log_every_n_steps_follows_the_batches_of_an_epoch(tiny_cfg):
    """Lightning warns when an epoch has fewer batches than log_every_n_steps: the trainer gets the smaller."""
    from segkit.build import build_trainer, train_batches_per_epoch

    cfg = tiny_cfg("trainer.log_every_n_steps=10")
    assert build_trainer(cfg, train_batches=4).log_every_n_steps == 4
    assert build_trainer(cfg, train_batches=40).log_every_n_steps == 10
    assert train_batches_per_epoch(cfg.trainer, images=16, batch_size=4) == 4
    cfg.trainer.devices, cfg.trainer.limit_train_batches = 2, 0.5  # 2 processes, half of each one's batches
    assert train_batches_per_epoch(cfg.trainer, images=16, batch_size=4) == 1
    cfg.trainer.limit_train_batches = 1  # an int is a number of batches
    assert train_batches_per_epoch(cfg.trainer, images=64, batch_size=4) == 1


def test_epoch_level_values_are_logged_across_processes(tiny_cfg):
    """Every value logged per epoch is reduced over DDP processes (sync_dist): Lightning warns about each one that
    is not."""
    from segkit.build import build_datamodule, build_module

    cfg = tiny_cfg("model=pspnet_resnet50", "model.backbone=resnet18")
    module = build_module(cfg, build_datamodule(cfg))
    calls = []
    module.log = lambda name, value, **kw: calls.append((name, kw))
    module.log_dict = lambda values, **kw: calls.extend((name, kw) for name in values)
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 6, (2, 64, 64))
    module.train()
    module.training_step((images, masks), 0)
    module.eval()
    with torch.no_grad():
        module.validation_step((images, masks), 0)
    module.on_validation_epoch_end()
    per_epoch = [(name, kw) for name, kw in calls if kw.get("on_epoch", True) and not kw.get("on_step")]
    assert {"train/loss_epoch", "train/loss_aux", "val/loss", "val/mIoU"} <= {name for name, _ in per_epoch}
    assert all(kw.get("sync_dist") for _, kw in per_epoch), [name for name, kw in per_epoch if not kw.get("sync_dist")]


def test_progress_bar_shows_metrics_not_the_logger_version(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from segkit.callbacks import ProgressBar

    bar = ProgressBar()
    trainer = pl.Trainer(logger=CSVLogger(tmp_path, version="p700"), callbacks=[bar], accelerator="cpu")
    assert "v_num" not in bar.get_metrics(trainer, pl.LightningModule())


def test_wandb_logger_passes_no_deprecated_setting(tmp_path):
    from segkit.callbacks import wandb_logger

    logger = wandb_logger(project="segkit", save_dir=str(tmp_path), offline=True)
    assert "anonymous" not in logger._wandb_init


def test_help_shows_the_entry_points_own_usage():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "eval.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Score a trained model: python src/eval.py ckpt=PATH"), lines[:3]
    assert "inference (none): resize, slide, tta, tta_slide, whole" in lines  # none: the net's own (its input spec)
    assert any("--hydra-help" in line for line in lines) and any("--cfg job" in line for line in lines)
    assert "ckpt: null" not in proc.stdout  # not the config dump


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
