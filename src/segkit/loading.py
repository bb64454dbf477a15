"""Rebuild a trained net from a segkit checkpoint (or a run folder) without Lightning or the training config.

A checkpoint is untrusted data. It carries the resolved run config (``hyper_parameters``: ``model``, ``data``, ...)
and the net's input spec (``segkit.input``: label table, channels, normalisation, crop and eval sizes;
``segkit.data.input_spec``). ``load_model`` reads them as plain values only (``segkit.safe_config``): the
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

import torch
from torch import nn

from segkit import SegkitError
from segkit.build import construct, net_arguments
from segkit.checkpoint_io import read_torch_file
from segkit.data.input_spec import InputSpec
from segkit.safe_config import net_options, plain_data

log = logging.getLogger("segkit")


@dataclass
class LoadedModel:
    """A net in eval mode, its input spec (what it takes and predicts, as training validated it) and the run config
    that trained it (for what only training knows)."""

    net: nn.Module
    config: dict[str, Any]
    spec: InputSpec
    path: Path | None = None
    precision: str | None = None  # the Lightning precision the run trained with, where stored


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
    options = net_arguments(builder, options, num_classes, in_channels, True, source)

    def build() -> nn.Module:
        with _module_budget(8 * len(state) + 512, source):
            return construct(builder, options, source)

    with torch.device("meta"):
        skeleton = build()
    check_weights_fit(skeleton, state, source, num_classes)
    del skeleton
    net = build()
    net.load_state_dict(state)
    return net


def describe_stored(info: Any, source: str) -> tuple[InputSpec, str | None]:
    """The ``segkit`` record of a checkpoint: its input spec and training precision, checked value by value."""
    info = plain_data(info, source, "segkit")
    if not isinstance(info, dict) or "input" not in info:
        raise SegkitError(
            f"{source}: its 'segkit' record has no input spec; it was written by another segkit version: "
            "re-train it with src/train.py"
        )
    precision = info.get("precision")
    if precision is not None and not isinstance(precision, str):
        raise SegkitError(f"{source}: segkit.precision={precision!r}; expected a string such as 32-true")
    return InputSpec.from_record(info["input"], source), precision


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
        raise SegkitError(f"{source} has no 'segkit' record (its input spec); re-save it with src/train.py")
    spec, precision = describe_stored(checkpoint["segkit"], source)
    config = plain_data(config, source, "hyper_parameters")
    state = {k[len("net.") :]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith("net.")}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegkitError(f"{source}: state_dict holds values that are not tensors")
    net = build_stored_net(config["model"], state, spec.num_classes, spec.in_channels, source)
    return LoadedModel(net=net.eval().to(map_location), config=config, spec=spec, path=path, precision=precision)


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
