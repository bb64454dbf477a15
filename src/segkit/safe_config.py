"""Which stored configs segkit will instantiate: an allow-list, checked before anything is imported.

A checkpoint or a run directory's ``.hydra/config.yaml`` is untrusted input. Hydra instantiates any importable
callable named by a ``_target_``, nested ones included, so a file holding only plain data could still call
``pathlib.Path.write_text`` or ``torch.load`` on another file. segkit therefore rebuilds from a stored config only
its own nets (``nn.Module`` classes defined in ``segkit.models.nets``), torchvision's registered model builders,
and, for data, its own data module, datasets and transform builders. The check reads the target strings first and
imports only modules inside those packages, so naming a module is not enough to run its import-time code.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from segkit import SegkitError

NETS_PACKAGE = "segkit.models.nets"
DATASETS_PACKAGE = "segkit.data.datasets"
DATA_CALLABLES = frozenset(
    {
        "segkit.data.datamodule.SegmentationDataModule",
        "segkit.data.transforms.train_transforms",
        "segkit.data.transforms.eval_transforms",
    }
)
NET_KEYS_ALLOWED = frozenset({"_target_"})
DATA_KEYS_ALLOWED = frozenset({"_target_", "_partial_", "_recursive_", "_convert_"})


def _package_modules(package: str) -> set[str]:
    module = importlib.import_module(package)
    return {f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__)}


def _segkit_class(target: str, package: str, base: type) -> bool:
    """``target`` is ``<package>.<module>.<Name>`` and names a subclass of ``base`` defined in that module."""
    module_name, _, attr = target.rpartition(".")
    if not attr or module_name not in _package_modules(package):
        return False
    obj = getattr(importlib.import_module(module_name), attr, None)
    return isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module_name


def _torchvision_builder(target: str) -> bool:
    """``torchvision.models[.sub].<name>`` where ``name`` is a builder in torchvision's model registry."""
    if not target.startswith("torchvision.models."):
        return False
    import torchvision.models

    module_name, _, name = target.rpartition(".")
    if name not in torchvision.models.list_models():
        return False
    try:
        obj = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return False
    return obj is torchvision.models.get_model_builder(name)


def is_allowed_net(target: Any) -> bool:
    from torch import nn

    if not isinstance(target, str):
        return False
    if target.startswith(NETS_PACKAGE + "."):
        return _segkit_class(target, NETS_PACKAGE, nn.Module)
    return _torchvision_builder(target)


def is_allowed_data(target: Any) -> bool:
    from torch.utils.data import Dataset

    if not isinstance(target, str):
        return False
    if target in DATA_CALLABLES:
        return True
    return target.startswith(DATASETS_PACKAGE + ".") and _segkit_class(target, DATASETS_PACKAGE, Dataset)


def _walk(node: Any, key: str) -> Iterator[tuple[str, str, Any]]:
    """Every (parent key, child name, value) of a nested mapping / list config."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            yield key, str(name), value
            yield from _walk(value, f"{key}.{name}")
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for i, value in enumerate(node):
            yield from _walk(value, f"{key}.{i}")


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def check_net_config(cfg: Any, source: str = "model", key: str = "model") -> str:
    """The ``_target_`` of a net config, after checking it is a segkit net or a torchvision model builder and
    that nothing else in the config is instantiated (no nested ``_target_``, no other Hydra keys).

    Raises ``SegkitError`` naming the key; ``source`` says where the config came from (a checkpoint's path).
    """
    cfg = _plain(cfg)
    if not isinstance(cfg, Mapping):
        raise SegkitError(f"{source}: '{key}' must be a model config mapping with a _target_")
    target = cfg.get("_target_")
    if not target:
        raise SegkitError(
            f"{source}: {key} has no _target_; it must name a network class, e.g. segkit.models.nets.unet.UNet"
        )
    for name in cfg:
        if str(name).startswith("_") and name not in NET_KEYS_ALLOWED:
            raise SegkitError(f"{source}: {key}.{name} is not allowed in a model config segkit rebuilds")
    for parent, name, value in _walk({k: v for k, v in cfg.items() if k != "_target_"}, key):
        if name == "_target_":
            raise SegkitError(
                f"{source}: {parent}._target_={value!r} is a nested _target_; a model config segkit rebuilds "
                f"may instantiate only its top-level net"
            )
    if not is_allowed_net(target):
        if str(target).startswith(NETS_PACKAGE + "."):
            raise SegkitError(
                f"{source}: unknown architecture '{target}' ({key}._target_): no such net in this segkit version; "
                f"update segkit or pick a model from conf/model"
            )
        raise SegkitError(
            f"{source}: {key}._target_={target!r} is not a segkit net (segkit.models.nets.*) or a torchvision "
            f"model builder; segkit builds nothing else from a stored config"
        )
    return str(target)


def check_data_config(cfg: Any, source: str = "data", key: str = "data") -> None:
    """Every ``_target_`` of a data config must be segkit's data module, one of its datasets or transform
    builders; raises ``SegkitError`` naming the first other one."""
    cfg = _plain(cfg)
    if not isinstance(cfg, Mapping):
        raise SegkitError(f"{source}: '{key}' must be a data config mapping")
    found = [(key, cfg["_target_"])] if "_target_" in cfg else []
    for parent, name, value in _walk(cfg, key):
        if name == "_target_" and parent != key:
            found.append((parent, value))
        elif name.startswith("_") and name not in DATA_KEYS_ALLOWED:
            raise SegkitError(f"{source}: {parent}.{name} is not allowed in a data config segkit rebuilds")
    for where, target in found:
        if not is_allowed_data(target):
            raise SegkitError(
                f"{source}: {where}._target_={target!r} is not a segkit data module, dataset or transform; "
                f"segkit builds nothing else from a stored config"
            )
