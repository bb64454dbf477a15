"""Weights for torchvision classifiers: torchvision's DEFAULT download, a local state-dict file, and loading either
into a model with a one-line error when it does not fit.

``pretrained=True`` downloads through torchvision (cached under ``$TORCH_HOME/hub/checkpoints``); ``weights_path``
loads a locally saved state dict of the same torchvision model instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from segkit import SegkitError


def torchvision_model(arch: str, pretrained: bool = False, weights_path: str | None = None, **kwargs) -> nn.Module:
    """``torchvision.models.<arch>`` with random, downloaded (``pretrained``) or local (``weights_path``) weights."""
    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as err:
        raise SegkitError(f"unknown torchvision model '{arch}'") from err
    model = builder(weights=None, **kwargs)
    state, source = classifier_state(arch, pretrained, weights_path)
    if state is not None:
        load_into(model, state, source)
    return model


def classifier_state(
    arch: str, pretrained: bool, weights_path: str | None
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The state dict of ``torchvision.models.<arch>`` that the switches ask for (``weights_path`` before
    ``pretrained``; None for a random init) and how to name its source in an error."""
    if weights_path:
        return load_state_dict_file(weights_path), f"weights file '{weights_path}'"
    if pretrained:
        return download_state_dict(arch), f"torchvision's {arch} weights"
    return None, ""


def download_state_dict(arch: str, switch: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """The DEFAULT weights of ``torchvision.models.<arch>`` through torchvision's weights API (cached); ``switch``
    is the config key that turns the download off, named in the error with the key that takes the same file from
    disk (``model.weights_path``: every net that downloads weights reads that file there)."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        file = weights.url.rsplit("/", 1)[-1]
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise SegkitError(
            f"could not download {arch} weights ({weights.url}): {reason}. Without internet, copy {file} to "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}/ ($TORCH_HOME/hub/checkpoints), or set "
            f"model.weights_path=/path/to/{file}, or train from scratch with {switch}=false"
        ) from err


# torchvision's DenseNet checkpoints still use the old names 'norm.1', 'conv.2', ... inside dense layers.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True):
    """``model.load_state_dict(state)`` with legacy DenseNet keys renamed and a SegkitError on a mismatch;
    returns the missing/unexpected keys (empty when ``strict``)."""
    state = {_rename_legacy_key(k): v for k, v in state.items()}
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise SegkitError(
            f"{source} does not fit {type(model).__name__}: {' '.join(first[1:3])[:300]}... Save the state dict of "
            f"the same torchvision architecture (torch.save(torchvision.models.<arch>().state_dict(), path)) "
            f"or fix model.backbone / model.weights_path"
        ) from err


def _rename_legacy_key(key: str) -> str:
    match = _LEGACY_DENSENET_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (bare, or under a ``state_dict``/``model`` key), read as untrusted
    data (``segkit.checkpoint_io.read_torch_file``: weights only, no compressed records)."""
    from segkit.checkpoint_io import read_torch_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise SegkitError(f"weights file '{path}' not found; fix model.weights_path")
    state = read_torch_file(path, what="weights file", fix="save it with torch.save(model.state_dict())")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegkitError(f"weights file '{path}' holds a {type(state).__name__} that is not a state dict of tensors")
    return state
