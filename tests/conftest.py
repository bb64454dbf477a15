"""Shared fixtures: compose the real configs from conf/ and shrink them for CPU tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from segkit.build import compose

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
CAMVID = Path(os.environ.get("SEGKIT_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the 2 cores: one thread each, subprocesses too
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))

# A tiny synthetic run: 64x64 scenes, a handful of batches, no progress bar or loggers.
TINY = [
    "data.dataset.num_samples={train: 16, val: 8, test: 8}",
    "data.dataset.height=64",
    "data.dataset.width=64",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",  # the same arithmetic on every CPU; tests/test_precision.py covers auto
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
]


# A small synthetic run for the tests that start src/train.py as a process (sweeps, launchers): 32x32 scenes, a U-Net
# 4 wide and 2 deep, one epoch, no test split; each adds its batch size and what it exercises.
SMALL_RUN = [
    "data.dataset.num_samples={train: 8, val: 4, test: 4}",
    "data.dataset.height=32",
    "data.dataset.width=32",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
    "model.base_width=4",
    "model.depth=2",
    "trainer.max_epochs=1",
    "test=false",
]


def compose_config(
    config_name: str = "train",
    overrides: list[str] | None = None,
    output_dir: Path | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """``segkit.build.compose`` (the entry point's config, outside a Hydra run), with ImageNet downloads off, the
    checkout as ``paths.root_dir`` and ``output_dir`` as the run folder."""
    cfg = compose(config_name, overrides or [], output_dir=output_dir, return_hydra_config=return_hydra_config)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        offline_init(cfg.get("model"))
        if output_dir is not None:
            cfg.paths.log_dir = str(output_dir)
    return cfg


def offline_init(model_cfg) -> None:
    """Backbone configs default to ImageNet weights, which tests cannot download: random init instead (a test that
    means to load weights sets ``model.weights_path``)."""
    if isinstance(model_cfg, DictConfig):
        for key in ("pretrained", "pretrained_backbone"):
            if model_cfg.get(key) is True:
                model_cfg[key] = False


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides)``: the train config shrunk to TINY, writing under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        own_dir = any(o.startswith("paths.output_dir=") for o in overrides)
        return compose_config("train", TINY + list(overrides), output_dir=None if own_dir else tmp_path)

    return make


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (set SEGKIT_CAMVID)")
    return CAMVID
