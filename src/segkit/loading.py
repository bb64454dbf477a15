"""Rebuild a trained net from a segkit checkpoint (or a run folder) without Lightning or the training config.

A checkpoint is untrusted data. It carries the resolved run config (``hyper_parameters``: ``model``, ``data``, ...)
and what the model needs to be used (``segkit``: class names, colours, source ids, ignore index, input channels,
normalisation, training input size). ``load_model`` reads them as plain values only (``segkit.safe_config``): the
net is looked up in segkit's registry, built first on the ``meta`` device and compared with the stored tensors, and
only then built for real, so neither code nor an oversized allocation can come from the file. A run folder only
locates its checkpoint: its ``.hydra/config.yaml`` is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkit import SegkitError
from segkit.checkpoint_io import read_torch_file
from segkit.data.labels import train_ids_to_source_ids
from segkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segkit.safe_config import net_options, plain_data

log = logging.getLogger("segkit")

MAX_CLASSES = 4096
MAX_CHANNELS = 64
MAX_SIZE = 16384


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
    precision: str | None = None  # the Lightning precision the run trained with, where stored

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_source_ids(self, train_ids: np.ndarray, fill: int = 0) -> np.ndarray:
        """Train ids -> each class's first source id (predictions back to e.g. Cityscapes labelIds)."""
        return train_ids_to_source_ids(train_ids, self.source_ids, fill)


def find_checkpoint(run_dir: Path) -> Path:
    """The best checkpoint of a run folder (``checkpoints/epoch_*.ckpt``, newest first), else ``last.ckpt``.
    Only plain files inside the folder count: a link is followed nowhere."""
    folder = run_dir / "checkpoints"
    if folder.is_symlink() or not folder.is_dir():
        raise SegkitError(f"run folder '{run_dir}' has no checkpoints/ folder; pass ckpt=<file.ckpt> instead")
    files = [p for p in folder.glob("*.ckpt") if not p.is_symlink() and p.is_file()]
    best = sorted(
        (p for p in files if p.name != "last.ckpt" and not p.name.startswith("last-")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    last = [p for p in files if p.name == "last.ckpt"]
    if not (best or last):
        links = [p.name for p in folder.glob("*.ckpt") if p.is_symlink()]
        hint = f" (links are not followed: {', '.join(links[:3])})" if links else ""
        raise SegkitError(f"run folder '{run_dir}' has no checkpoints/*.ckpt file{hint}; pass ckpt=<file.ckpt> instead")
    return (best or last)[0]


def resolve_source(ckpt: str | Path | None, run_dir: str | Path | None = None) -> Path:
    """``ckpt`` (a file, or a run folder) or ``run_dir`` (with an optional ``ckpt`` name inside its
    ``checkpoints/``) -> the checkpoint file. A run folder's config is never read: the checkpoint describes itself."""
    if not ckpt and not run_dir:
        raise SegkitError("no model given: pass ckpt=path/to/file.ckpt or run_dir=logs/train/runs/<run>")
    path = Path(str(run_dir or ckpt)).expanduser()
    if path.is_dir():
        if run_dir and ckpt:
            name = Path(str(ckpt)).expanduser()
            ckpt_path = name if name.is_absolute() or name.is_file() else path / "checkpoints" / name
        else:
            ckpt_path = find_checkpoint(path)
        if not ckpt_path.is_file():
            raise SegkitError(f"ckpt='{ckpt_path}' does not exist")
        return ckpt_path
    if not path.is_file():
        what = "run_dir" if run_dir else "ckpt"
        raise SegkitError(
            f"{what}='{path}' does not exist; point it at a .ckpt file or a run folder (logs/train/runs/<run>)"
        )
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as tensors and plain types (``checkpoint_io.read_torch_file``), refused in one line when
    it is anything else: unpickling arbitrary objects would run whatever code the file names."""
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict):
        raise SegkitError(
            f"'{path}' holds a {type(checkpoint).__name__}, not a segkit checkpoint; use a .ckpt written by src/train.py"
        )
    return checkpoint


def build_net(
    model_cfg: Mapping, num_classes: int, in_channels: int = 3, for_weights: bool = False, source: str = "model"
) -> nn.Module:
    """A ``conf/model`` choice (the user's own config, resolved here) built through the same registry and keyword
    checks as a stored one; ``for_weights`` skips downloading pretrained backbones whose weights are about to be
    replaced. ``source`` names where the config came from in errors."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    builder, options = net_options(model_cfg, source)
    options = _net_arguments(builder, options, num_classes, in_channels, for_weights, source)
    return _construct(builder, options, source)


def _net_arguments(
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


def _construct(builder: Any, options: dict[str, Any], source: str) -> nn.Module:
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


@contextmanager
def _module_budget(limit: int, source: str):
    """Stop a stored config that would build far more layers than its checkpoint has tensors (a time and memory
    sink even on the ``meta`` device)."""
    count = [0]

    def hook(module, name, submodule):
        count[0] += 1
        if count[0] > limit:
            raise SegkitError(f"{source}: the stored model config builds more than {limit} layers for its weights")

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build_stored_net(
    model_cfg: Any, state: Mapping[str, torch.Tensor], num_classes: int, in_channels: int, source: str
) -> nn.Module:
    """The net a checkpoint's stored ``model`` config describes, with ``state`` loaded: built through the registry
    with checked keywords, on the ``meta`` device first, refused unless its tensors have exactly the stored shapes,
    then built on the CPU (so what is allocated is what the file holds)."""
    builder, options = net_options(model_cfg, source)
    options = _net_arguments(builder, options, num_classes, in_channels, True, source)

    def construct() -> nn.Module:
        with _module_budget(8 * len(state) + 512, source):
            return _construct(builder, options, source)

    with torch.device("meta"):
        skeleton = construct()
    check_weights_fit(skeleton, state, source, num_classes)
    del skeleton
    net = construct()
    net.load_state_dict(state)
    return net


def _int(info: Mapping, key: str, source: str, low: int, high: int, default: Any = None) -> int:
    value = info.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SegkitError(f"{source}: segkit.{key}={value!r}; expected a whole number from {low} to {high}")
    return value


def _numbers(info: Mapping, key: str, source: str, count: int | None, default: Any) -> tuple[float, ...]:
    value = info.get(key, default)
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if not ok or (count is not None and len(value) != count):
        raise SegkitError(f"{source}: segkit.{key}={value!r}; expected a list of {count or 'some'} numbers")
    return tuple(float(v) for v in value)


def describe_stored(info: Any, source: str) -> dict[str, Any]:
    """The ``segkit`` record of a checkpoint, checked value by value before anything is built from it."""
    info = plain_data(info, source, "segkit")
    if not isinstance(info, dict):
        raise SegkitError(f"{source}: 'segkit' is a {type(info).__name__}, not the mapping segkit checkpoints store")
    num_classes = _int(info, "num_classes", source, 1, MAX_CLASSES)
    names = info.get("class_names")
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise SegkitError(f"{source}: segkit.class_names must list {num_classes} class names")
    colors = info.get("colors")
    if (
        not isinstance(colors, list)
        or len(colors) != num_classes
        or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors
        )
    ):
        raise SegkitError(f"{source}: segkit.colors must list {num_classes} [r, g, b] colours of 0-255")
    source_ids = info.get("source_ids") or []
    if (
        not isinstance(source_ids, list)
        or len(source_ids) not in (0, num_classes)
        or not all(
            isinstance(ids, list)
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 65535 for i in ids)
            for ids in source_ids
        )
    ):
        raise SegkitError(f"{source}: segkit.source_ids must list {num_classes} lists of ids from 0 to 65535")
    in_channels = _int(info, "in_channels", source, 1, MAX_CHANNELS, 3)
    size = info.get("input_size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE for v in size)
    ):
        raise SegkitError(f"{source}: segkit.input_size={size!r}; expected null or [height, width] up to {MAX_SIZE}")
    mean = _numbers(info, "mean", source, None, list(IMAGENET_MEAN))
    std = _numbers(info, "std", source, None, list(IMAGENET_STD))
    if len(mean) != len(std) or not min(3, in_channels) <= len(mean) <= max(3, in_channels):
        raise SegkitError(
            f"{source}: segkit.mean and segkit.std must each hold one value per input channel ({in_channels})"
        )
    precision = info.get("precision")
    if precision is not None and not isinstance(precision, str):
        raise SegkitError(f"{source}: segkit.precision={precision!r}; expected a string such as 32-true")
    return {
        "num_classes": num_classes,
        "class_names": tuple(names),
        "colors": tuple(tuple(c) for c in colors),
        "source_ids": tuple(tuple(ids) for ids in source_ids),
        "ignore_index": _int(info, "ignore_index", source, 0, 255, 255),
        "in_channels": in_channels,
        "mean": mean,
        "std": std,
        "input_size": (size[0], size[1]) if size is not None else None,
        "precision": precision,
    }


def load_model(
    ckpt: str | Path | None = None, run_dir: str | Path | None = None, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """The net of a checkpoint (its ``net.*`` weights), rebuilt from the model config stored with it.

    Errors name the file and say what to do: missing file, not a segkit checkpoint, an architecture this
    version does not know, a stored value of the wrong kind, weights that do not fit (e.g. another class count).
    """
    path = resolve_source(ckpt, run_dir)
    source = f"checkpoint '{path}'"
    checkpoint = read_checkpoint(path)
    config = checkpoint.get("hyper_parameters")
    state_dict = checkpoint.get("state_dict")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(state_dict, dict):
        raise SegkitError(
            f"'{path}' is not a segkit checkpoint (it needs a state_dict and hyper_parameters with a model config); "
            "use a .ckpt written by src/train.py"
        )
    if "segkit" not in checkpoint:
        raise SegkitError(f"{source} has no 'segkit' record (class names, input format); re-save it with src/train.py")
    facts = describe_stored(checkpoint["segkit"], source)
    config = plain_data(config, source, "hyper_parameters")
    state = {k[len("net.") :]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith("net.")}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegkitError(f"{source}: state_dict holds values that are not tensors")
    net = build_stored_net(config["model"], state, facts["num_classes"], facts["in_channels"], source)
    mean, std = facts["mean"], facts["std"]
    return LoadedModel(
        net=net.eval().to(map_location),
        config=config,
        class_names=facts["class_names"],
        colors=facts["colors"],
        ignore_index=facts["ignore_index"],
        path=path,
        in_channels=facts["in_channels"],
        mean=mean,
        std=std,
        input_size=facts["input_size"],
        source_ids=facts["source_ids"],
        precision=facts["precision"],
    )


def check_weights_fit(net: nn.Module, state: Mapping[str, torch.Tensor], source: str, num_classes: int) -> None:
    """A clear message instead of ``load_state_dict``'s wall of keys when the checkpoint is for another net (works
    on a ``meta``-device net: only names and shapes are compared)."""
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
        f"{source} does not fit its model config: "
        + "; ".join(parts)
        + ". Was it written by another version of this architecture?"
    )
