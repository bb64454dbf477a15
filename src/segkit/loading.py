"""Rebuild a trained net from a segkit checkpoint (or a run directory) without Lightning or the training config.

A checkpoint carries the resolved run config (``hyper_parameters``: ``model``, ``data``, ...) and what the model
needs to be used (``segkit``: class names, colours, source ids, ignore index, input channels, normalisation, the
training input size), so eval, predict and export read them from the ``LoadedModel`` and need nothing else.
Checkpoints written before those facts were stored fall back to the run config stored with them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segkit import SegkitError
from segkit.data.labels import LabelTable, train_ids_to_source_ids
from segkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segkit.safe_config import check_data_config, check_net_config

log = logging.getLogger("segkit")


@dataclass
class LoadedModel:
    """A net in eval mode plus what is needed to use it: its classes and the input it expects (and the run config
    that trained it, for what only training knows)."""

    net: nn.Module
    config: dict[str, Any]
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int
    path: Path | None = None
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int] | None = None  # the training crop (height, width); None: whole images
    source_ids: tuple[tuple[int, ...], ...] = ()  # per train id, the dataset's own ids (empty where unknown)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_source_ids(self, train_ids: np.ndarray, fill: int = 0) -> np.ndarray:
        """Train ids -> each class's first source id (predictions back to e.g. Cityscapes labelIds)."""
        return train_ids_to_source_ids(train_ids, self.source_ids, fill)


def find_checkpoint(run_dir: Path) -> Path:
    """The best checkpoint of a run directory (``checkpoints/epoch_*.ckpt``, newest first), else ``last.ckpt``."""
    folder = run_dir / "checkpoints"
    candidates = sorted(
        (p for p in folder.glob("*.ckpt") if p.name != "last.ckpt" and not p.name.startswith("last-")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if not candidates and (folder / "last.ckpt").is_file():
        candidates = [folder / "last.ckpt"]
    if not candidates:
        raise SegkitError(f"run directory '{run_dir}' has no checkpoints/*.ckpt; pass ckpt=<file.ckpt> instead")
    return candidates[0]


def resolve_source(ckpt: str | Path | None, run_dir: str | Path | None = None) -> tuple[Path, DictConfig | None]:
    """``ckpt`` (a file, or a run directory) or ``run_dir`` -> the checkpoint file and the run's saved
    ``.hydra/config.yaml`` (None when there is none)."""
    if not ckpt and not run_dir:
        raise SegkitError("no model given: pass ckpt=path/to/file.ckpt or run_dir=logs/train/runs/<run>")
    path = Path(str(run_dir or ckpt)).expanduser()
    if path.is_dir():
        saved = path / ".hydra" / "config.yaml"
        config = OmegaConf.load(saved) if saved.is_file() else None
        if run_dir and ckpt:
            ckpt_path = Path(str(ckpt)).expanduser()
            if not ckpt_path.is_absolute() and not ckpt_path.is_file():
                ckpt_path = path / "checkpoints" / ckpt_path
        else:
            ckpt_path = find_checkpoint(path)
        if not ckpt_path.is_file():
            raise SegkitError(f"ckpt='{ckpt_path}' does not exist")
        return ckpt_path, config  # type: ignore[return-value]
    if not path.is_file():
        what = "run_dir" if run_dir else "ckpt"
        raise SegkitError(
            f"{what}='{path}' does not exist; point it at a .ckpt file or a run directory (logs/train/runs/<run>)"
        )
    return path, None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` on CPU, never anything else: a checkpoint is untrusted input, and
    unpickling arbitrary objects would run whatever code the file names. segkit writes tensors and plain types
    only, so its own checkpoints always load this way."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SegkitError(
            f"cannot read checkpoint '{path}': it is not a segkit checkpoint or holds objects segkit will not "
            f"unpickle ({type(err).__name__}); use a .ckpt written by src/train.py"
        ) from None
    if not isinstance(checkpoint, dict):
        raise SegkitError(
            f"'{path}' holds a {type(checkpoint).__name__}, not a segkit checkpoint; use a .ckpt written by src/train.py"
        )
    return checkpoint


def build_net(
    model_cfg: Mapping, num_classes: int, in_channels: int = 3, for_weights: bool = False, source: str = "model"
) -> nn.Module:
    """Instantiate a ``conf/model`` config whose ``_target_`` is a segkit net or a torchvision model builder
    (``check_net_config``); ``for_weights`` skips downloading pretrained backbones whose weights a checkpoint is
    about to replace. ``source`` names where the config came from in errors."""
    from segkit.models.module import split_model_config

    cfg, _ = split_model_config(model_cfg)
    target = check_net_config(cfg, source)
    if for_weights:  # no download: the checkpoint's weights replace these
        cfg.update(
            {
                k: None if k == "weights_path" else False
                for k in ("pretrained", "pretrained_backbone", "weights_path")
                if k in cfg
            }
        )
        cfg.update({k: None for k in ("weights", "weights_backbone") if k in cfg or target.startswith("torchvision.")})
    options: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
    if target.startswith("torchvision."):  # torchvision's builders take RGB only and no in_channels
        if in_channels != 3:
            raise SegkitError(
                f"{source}: {target} takes 3 input channels, not {in_channels}; use "
                f"segkit.models.nets.torchvision_seg.TorchvisionSegmentation (model=tv_*) for other inputs"
            )
        options.pop("in_channels")
    try:
        return hydra.utils.instantiate(cfg, **options)
    except SegkitError:
        raise
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, SegkitError):
            raise cause from None
        raise SegkitError(f"cannot build model '{target}': {type(cause).__name__}: {cause}") from err


def _stored_table(config: Mapping) -> LabelTable | None:
    table_cfg = (config.get("data") or {}).get("labels")
    if not table_cfg:
        return None
    try:
        return LabelTable.from_config(table_cfg)
    except SegkitError:
        return None


def _labels(config: Mapping, info: Mapping) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], tuple]:
    """Names, colours and source ids: stored with the checkpoint, else (older checkpoints) from the run config's
    label table, else numbered classes in a generated palette."""
    names = tuple(info.get("class_names") or ())
    if names and info.get("colors") is not None:
        colors = tuple(tuple(int(v) for v in c) for c in info["colors"])
        source_ids = tuple(tuple(int(i) for i in ids) for ids in info.get("source_ids") or ())
        return names, colors, source_ids
    table = _stored_table(config)
    if table is not None and (not names or tuple(table.names) == names):
        return table.names, table.colors, table.source_ids
    if not names and info.get("num_classes"):
        names = tuple(str(i) for i in range(int(info["num_classes"])))
    palette = LabelTable.from_config({"classes": [{"name": n} for n in names]}).colors if names else ()
    return names, palette, ()


def _input_format(config: Mapping, info: Mapping) -> dict[str, Any]:
    """Channels, mean/std and training input size: stored with the checkpoint, else from the run config."""
    data = config.get("data") or {}
    transform = data.get("val_transform") or {}
    crop = (data.get("train_transform") or {}).get("crop_size")
    size = info.get("input_size", crop)
    return {
        "in_channels": int(info.get("in_channels") or data.get("in_channels") or 3),
        "mean": tuple(float(v) for v in (info.get("mean") or transform.get("mean") or IMAGENET_MEAN)),
        "std": tuple(float(v) for v in (info.get("std") or transform.get("std") or IMAGENET_STD)),
        "input_size": (int(size[0]), int(size[1])) if size else None,
    }


def load_model(
    ckpt: str | Path | None = None, run_dir: str | Path | None = None, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """The net of a checkpoint (its ``net.*`` weights), built from the model config stored with it.

    Errors name the file and say what to do: missing file, not a segkit checkpoint, an architecture this
    version does not know, weights that do not fit (e.g. a different number of classes).
    """
    path, saved_config = resolve_source(ckpt, run_dir)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    config = dict(hparams)  # the config that trained these weights, resolved when they were saved
    if not config.get("model") and saved_config is not None:  # older checkpoints: the run directory's config
        try:
            resolved = OmegaConf.to_container(saved_config, resolve=True)
        except Exception:
            resolved = None
        config = dict(resolved) if isinstance(resolved, dict) else config
    else:
        saved_config = None
    if "state_dict" not in checkpoint or not config.get("model"):
        raise SegkitError(
            f"'{path}' is not a segkit checkpoint (no state_dict or no model config in "
            "hyper_parameters); use a .ckpt written by src/train.py"
        )
    source = f"checkpoint '{path}'" if saved_config is None else f"run config '{path.parent.parent}/.hydra'"
    check_net_config(config["model"], source)
    if config.get("data"):
        check_data_config(config["data"], source)
    info = checkpoint.get("segkit") or {}
    state = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    num_classes = int(info.get("num_classes") or _classifier_width(state))
    inputs = _input_format(config, info)
    net = build_net(config["model"], num_classes, inputs["in_channels"], for_weights=True, source=source)
    check_weights_fit(net, state, path, num_classes)
    net.load_state_dict(state)
    names, colors, source_ids = _labels(config, info)
    if len(names) != num_classes:
        raise SegkitError(f"checkpoint '{path}' lists {len(names)} class names for {num_classes} classes")
    return LoadedModel(
        net=net.eval().to(map_location),
        config=config,
        class_names=names,
        colors=colors,
        ignore_index=int(info.get("ignore_index", 255)),
        path=path,
        source_ids=source_ids,
        **inputs,
    )


def _classifier_width(state: Mapping[str, torch.Tensor]) -> int:
    """Fallback for checkpoints without ``segkit`` facts: the output channels of the last conv weight."""
    convs = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4]
    if not convs:
        raise SegkitError("cannot tell the number of classes of this checkpoint")
    return int(convs[-1].shape[0])


def check_weights_fit(net: nn.Module, state: Mapping[str, torch.Tensor], path: Path, num_classes: int) -> None:
    """A clear message instead of ``load_state_dict``'s wall of keys when the checkpoint is for another net."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        k, got, want = wrong[0]
        parts.append(
            f"{len(wrong)} weight(s) have other shapes (first: {k} is {got} in the file, {want} in the "
            f"net for {num_classes} classes)"
        )
    if missing:
        parts.append(f"{len(missing)} weight(s) missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weight(s) (first: {unexpected[0]})")
    raise SegkitError(
        f"checkpoint '{path}' does not fit its model config: "
        + "; ".join(parts)
        + ". Was it written by another version of this architecture?"
    )
