"""One builder for every entry point (train, eval, predict, export, benchmark, the scripts and the tests): a composed
config -> the data module, the net, the loss, the optimizer, the training module and the Trainer.

- ``compose(config_name, overrides)``: ``conf/<config_name>.yaml`` composed outside a Hydra run, the one way to do
  it (the config folder is the package's ``segkit.conf``: the top-level ``conf/`` in a checkout, installed with the
  package by ``pip install .``).
- ``build_net``: a net from a ``model`` config. segkit's nets, torchvision's segmentation builders and nets
  registered with ``segkit.register_net`` go through the registry with every keyword checked (the same path a
  stored checkpoint config takes, ``segkit.loading``); a user's own unregistered ``_target_`` (their own config,
  code they chose to run) is instantiated by Hydra, so it trains, and eval / predict / export of its checkpoints
  ask for ``segkit.register_net(MyNet)``.
- ``build_datamodule`` / ``build_module`` / ``build_trainer``: the rest of a training run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary
from torch import nn

from segkit import SegkitError
from segkit.cli import segkit_cause
from segkit.data.datamodule import SegmentationDataModule
from segkit.files import conf_dir
from segkit.safe_config import net_builder_or_none, net_options


def compose(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as its entry point composes it, outside a Hydra run.
    ``paths.root_dir`` (and ``paths.output_dir``, when given) are set, since ``${hydra:...}`` resolves only inside
    one."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    running = get_gh_backup()  # inside a Hydra run (benchmark, a suggestion after an error): its state comes back
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
            )
    finally:
        if running is not None:
            restore_gh_from_backup(running)
    if "paths" in cfg:
        with open_dict(cfg):
            cfg.paths.root_dir = str(Path.cwd())
            if output_dir is not None:
                cfg.paths.output_dir = str(output_dir)
    return cfg


def model_names() -> list[str]:
    """Every choice of the ``model`` config group."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def model_config(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` composed with its defaults (e.g. unet_small extends unet)."""
    if name not in model_names():
        raise SegkitError(f"unknown model '{name}'; choose from conf/model: {', '.join(model_names())}")
    return compose(None, [f"+model={name}"]).model  # type: ignore[arg-type]


def instantiate_user_config(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of the user's own config; a ``SegkitError`` raised inside (a bad table, transform
    key or weights file) surfaces as itself, so it stays one line."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = segkit_cause(err)
        if cause is None:
            raise
        raise cause from None


def instantiate_group(cfg: DictConfig | None, group: str) -> list[Any]:
    """The objects of a dict-of-configs group (``callbacks``, ``logger``); entries set to null are skipped."""
    objects = []
    for name, item in (cfg or {}).items():
        if item is None:
            continue
        if not isinstance(item, DictConfig) or "_target_" not in item:
            raise SegkitError(f"{group}.{name} must be a config with a _target_; got {item!r}")
        objects.append(instantiate_user_config(item))
    return objects


# -- nets ---------------------------------------------------------------------------------------------------------
def net_arguments(
    builder: Any, options: dict[str, Any], num_classes: int, in_channels: int, offline: bool, source: str
) -> dict[str, Any]:
    """The keyword arguments a registered builder gets: its options (downloads off when ``offline``), the class
    count and, for segkit's nets, the input channels (torchvision's builders take RGB only)."""
    is_torchvision = getattr(builder, "__module__", "").startswith("torchvision.")
    options = _offline(options, is_torchvision) if offline else dict(options)
    options["num_classes"] = num_classes
    if not is_torchvision:
        options["in_channels"] = in_channels
    elif in_channels != 3:
        raise SegkitError(
            f"{source}: torchvision's builders take 3 input channels, not {in_channels}; use "
            "segkit.models.nets.torchvision_seg.TorchvisionSegmentation (model=tv_*) for other inputs"
        )
    return options


def construct(builder: Any, options: dict[str, Any], source: str) -> nn.Module:
    """``builder(**options)``; a value of the wrong type or range is one line naming where the config came from."""
    try:
        return builder(**options)
    except SegkitError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the user's or the file's values: one line
        first = (str(err).splitlines() or [type(err).__name__])[0][:300]
        raise SegkitError(f"{source}: the model config does not build: {type(err).__name__}: {first}") from None


def _offline(options: dict[str, Any], is_torchvision: bool) -> dict[str, Any]:
    """Net options with pretrained downloads and weight files off: a checkpoint's weights replace them."""
    options = dict(options)
    for key in ("pretrained", "pretrained_backbone"):
        if key in options:
            options[key] = False
    if "weights_path" in options:
        options["weights_path"] = None
    for key in ("weights", "weights_backbone"):
        if key in options or is_torchvision:
            options[key] = None
    return options


def build_net(
    model_cfg: Mapping, num_classes: int, in_channels: int = 3, for_weights: bool = False, source: str = "model"
) -> nn.Module:
    """The net of a ``model`` config (the user's own, resolved here). A registered ``_target_`` goes through the
    registry's keyword checks; an unregistered one is the user's own code and Hydra instantiates it.
    ``for_weights`` skips downloading pretrained weights that are about to be replaced."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    if net_builder_or_none(model_cfg.get("_target_") if isinstance(model_cfg, Mapping) else None) is None:
        if not isinstance(model_cfg, Mapping) or not model_cfg.get("_target_"):
            raise SegkitError(f"{source}._target_ is missing; a model config names its network class")
        return instantiate_user_config(dict(model_cfg), num_classes=num_classes, in_channels=in_channels)
    builder, options = net_options(model_cfg, source)
    options = net_arguments(builder, options, num_classes, in_channels, for_weights, source)
    return construct(builder, options, source)


# -- a training run -----------------------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    """The data module of a run config's ``data`` (the user's own config, through Hydra)."""
    return instantiate_user_config(cfg.data, _recursive_=True)


def build_module(cfg: DictConfig, datamodule: SegmentationDataModule):
    """The training module: the net (given the data's class count and channels), loss, optimizer, schedule and the
    data's input spec."""
    from segkit.losses import build_loss
    from segkit.models.module import SegmentationModule

    aux_weights = cfg.get("aux_weights")
    if aux_weights is not None:
        if not isinstance(aux_weights, DictConfig):  # e.g. aux_weights=0.2: a weight without the head it is for
            raise SegkitError(
                f"aux_weights={aux_weights!r} is not a mapping: give each auxiliary head its loss weight, e.g. "
                f"aux_weights={{aux:{aux_weights}}} (or ++aux_weights.aux={aux_weights}); leave it out for the net's "
                "published weights"
            )
        aux_weights = OmegaConf.to_container(aux_weights, resolve=True)
    net = build_net(cfg.model, datamodule.num_classes, datamodule.in_channels)
    return SegmentationModule(
        net=net,
        loss=build_loss(cfg.loss, datamodule),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        spec=datamodule.spec,
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        aux_weights=aux_weights,
        config=stored_run_config(cfg),
        channels_last=bool(cfg.get("channels_last", False)),
    )


def stored_run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config a checkpoint stores (and loggers show). The net's input spec, label table included,
    is stored once, as ``checkpoint["segkit"]["input"]``: the data config keeps only the table's name."""
    config = OmegaConf.to_container(cfg, resolve=True)
    data = config.get("data")
    if isinstance(data, dict):
        labels = data.get("labels")
        if isinstance(labels, dict):
            data["labels"] = str(labels.get("name", "labels"))
        data.pop("input", None)
        data.pop("reduce_zero_label", None)
    return config


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None, train_batches: int | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured callbacks and loggers. ``train_batches`` (per process and
    epoch) caps ``log_every_n_steps``, so a short epoch still logs its steps (Lightning would warn instead). The
    model summary is segkit's (``segkit.callbacks.ModelSummary``: no column of zero FLOPs)."""
    from segkit.callbacks.console import ModelSummary as SegkitModelSummary
    from segkit.checkpoint_io import SegkitCheckpointIO
    from segkit.sync_batchnorm import CpuSyncBatchNorm

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


def on_gpu(trainer_cfg: DictConfig) -> bool:
    """Whether ``trainer_cfg`` trains on CUDA GPUs (``gpu``/``cuda``, or ``auto`` where one is present)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def world_size(trainer_cfg: DictConfig) -> int:
    """The processes ``trainer_cfg`` starts (devices x nodes), read from the config before any Trainer exists."""
    devices = trainer_cfg.get("devices", 1)
    if devices in (-1, "-1", "auto", None):
        count = torch.cuda.device_count() if on_gpu(trainer_cfg) else 1
    elif isinstance(devices, (int, str)) and str(devices).isdigit():
        count = int(devices)
    else:  # a list of device ids, or "0,1"
        count = len(devices) if not isinstance(devices, str) else len([d for d in devices.split(",") if d.strip()])
    return max(1, count) * int(trainer_cfg.get("num_nodes", 1) or 1)


def resolve_sync_batchnorm(trainer_cfg: DictConfig) -> str | None:
    """Where ``trainer.sync_batchnorm: true`` meets DDP over more than one device: ``"gpu"`` (torch's
    SyncBatchNorm, through Lightning's ``sync_batchnorm``) or ``"cpu"`` (segkit.sync_batchnorm's all-reduce
    version for gloo, as a layer-sync plugin); ``None`` when off or with one device (nothing to synchronise)."""
    if not trainer_cfg.get("sync_batchnorm") or world_size(trainer_cfg) <= 1:
        return None
    return "gpu" if on_gpu(trainer_cfg) else "cpu"
