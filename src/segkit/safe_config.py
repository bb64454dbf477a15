"""A stored config is inert data: segkit checks it as plain values and maps it onto its own classes itself.

A checkpoint or a run folder is untrusted input. Its config must never reach OmegaConf resolution or
``hydra.utils.instantiate``: a string such as ``${oc.create:{_target_: ...}}`` runs code when resolved, ``${oc.env:}``
reads the environment, and an escaped ``\\${...}`` survives one resolution to run at the next. So a stored config is
read here as Python data only:

- ``plain_data`` accepts numbers, strings, bools, None, and lists and string-keyed mappings of them, bounded in
  depth and size, and refuses any string holding ``${`` (segkit stores resolved configs, so none has one);
- ``build_stored_net`` / ``build_stored_data`` look the ``_target_`` up in segkit's registries (its own nets, the
  torchvision segmentation builders, nets a user registered with ``register_net``; its data module, datasets and
  transform builders), check every key against the constructor's signature, and call the class directly.

A user's own config files and command line are code they chose to run; those go through Hydra as usual.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from segkit import SegkitError

NETS_PACKAGE = "segkit.models.nets"
DATASETS_PACKAGE = "segkit.data.datasets"
TORCHVISION_SEGMENTATION = "torchvision.models.segmentation"
DATA_CALLABLES = (
    "segkit.data.datamodule.SegmentationDataModule",
    "segkit.data.transforms.train_transforms",
)
# torchvision's segmentation builders take **kwargs; these are the ones a stored config may pass
TORCHVISION_KEYWORDS = frozenset({"weights", "weights_backbone", "num_classes", "aux_loss"})
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_"})
MAX_DEPTH = 16
MAX_NODES = 200_000
MAX_STRING = 4096

_USER_NETS: dict[str, Callable[..., Any]] = {}


def register_net(builder: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Let eval, predict and export rebuild checkpoints of your own net (``_target_: mypkg.MyNet`` in training).

    Call once before loading, e.g. ``segkit.register_net(MyNet)`` in the module that defines it; usable as a class
    decorator. The stored config's ``_target_`` must equal ``name`` (default: ``<module>.<qualname>``).
    """
    key = name or f"{builder.__module__}.{builder.__qualname__}"
    _USER_NETS[key] = builder
    return builder


def import_user_modules(names: Any) -> None:
    """Import the modules of the user's own ``imports=[...]`` (their command line: code they chose to run), so nets
    that call ``register_net`` on import are known before a checkpoint is read."""
    for name in names or []:
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise SegkitError(f"imports: cannot import '{name}' ({err}); give importable module names") from None


@functools.lru_cache(maxsize=1)
def _builtin_nets() -> dict[str, Callable[..., Any]]:
    """segkit's nets (the ``SegmentationNet`` classes defined in ``segkit.models.nets.*``, not their parts) and
    torchvision's registered segmentation builders, by the ``_target_`` a config names them with."""
    import torchvision.models

    from segkit.models.base import SegmentationNet

    nets: dict[str, Callable[..., Any]] = {}
    package = importlib.import_module(NETS_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{NETS_PACKAGE}.{info.name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, SegmentationNet) and obj.__module__ == module.__name__:
                nets[f"{module.__name__}.{attr}"] = obj
    for name in torchvision.models.list_models(module=torchvision.models.segmentation):
        nets[f"{TORCHVISION_SEGMENTATION}.{name}"] = torchvision.models.get_model_builder(name)
    return nets


def net_builder_or_none(target: Any) -> Callable[..., Any] | None:
    """The registered net class (or torchvision builder) ``target`` names, or None."""
    if not isinstance(target, str) or not target:
        return None
    return _USER_NETS.get(target) or _builtin_nets().get(target)


def net_builder(target: Any, source: str, key: str = "model") -> Callable[..., Any]:
    """The registered net class (or torchvision builder) a stored ``_target_`` names; a one-line refusal otherwise."""
    if not isinstance(target, str) or not target:
        raise SegkitError(f"{source}: {key}._target_ is missing; a model config names its network class")
    builder = net_builder_or_none(target)
    if builder is not None:
        return builder
    if target.startswith(NETS_PACKAGE + "."):
        raise SegkitError(
            f"{source}: unknown architecture '{target}' ({key}._target_): no such net in this segkit version; "
            "update segkit or pick a model from conf/model"
        )
    raise SegkitError(
        f"{source}: {key}._target_={target!r} is not a registered net (segkit's nets, torchvision's segmentation "
        f"builders, or one registered with segkit.register_net({target.rsplit('.', 1)[-1]})); segkit builds "
        "nothing else from a stored config"
    )


@functools.lru_cache(maxsize=1)
def _data_callables() -> dict[str, Callable[..., Any]]:
    from torch.utils.data import Dataset

    found: dict[str, Callable[..., Any]] = {}
    for target in DATA_CALLABLES:
        module, _, attr = target.rpartition(".")
        found[target] = getattr(importlib.import_module(module), attr)
    package = importlib.import_module(DATASETS_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{DATASETS_PACKAGE}.{info.name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, Dataset) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{attr}"] = obj
    return found


def plain_data(value: Any, source: str, key: str) -> Any:
    """``value`` as plain Python data (dicts, lists, str, int, float, bool, None), checked all the way down.

    Refused in one line naming the key: other types, non-string keys, strings holding ``${`` (an interpolation,
    escaped or not), strings over 4096 characters, non-finite floats, more than 16 levels of nesting or more than
    200,000 values in all.
    """
    count = [0]

    def walk(node: Any, where: str, depth: int) -> Any:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise SegkitError(f"{source}: '{key}' holds more than {MAX_NODES} values; not a segkit config")
        if depth > MAX_DEPTH:
            raise SegkitError(f"{source}: {where} is nested deeper than {MAX_DEPTH} levels; not a segkit config")
        if node is None or isinstance(node, (bool, int)):
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise SegkitError(f"{source}: {where}={node} is not a finite number")
            return node
        if isinstance(node, str):
            if "${" in node:
                raise SegkitError(
                    f"{source}: {where} holds an interpolation ({node[:60]!r}); segkit stores resolved configs and "
                    "resolves nothing read back from a file"
                )
            if len(node) > MAX_STRING:
                raise SegkitError(f"{source}: {where} is a string of {len(node)} characters; not a segkit config")
            return node
        if isinstance(node, Mapping):
            out = {}
            for name, item in node.items():
                if not isinstance(name, str):
                    raise SegkitError(f"{source}: {where} has a key {name!r} that is not a string")
                out[name] = walk(item, f"{where}.{name}", depth + 1)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(item, f"{where}.{i}", depth + 1) for i, item in enumerate(node)]
        raise SegkitError(
            f"{source}: {where} is a {type(node).__name__}; a stored config holds numbers, strings, lists and mappings"
        )

    return walk(value, key, 0)


def _check_keywords(builder: Callable[..., Any], options: Mapping[str, Any], source: str, key: str) -> None:
    """Every stored key must be a named parameter of ``builder`` (torchvision builders: a fixed few)."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    named = {n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    if getattr(builder, "__module__", "").startswith(TORCHVISION_SEGMENTATION):
        named |= TORCHVISION_KEYWORDS
    title = getattr(builder, "__name__", "the builder")
    for name in options:
        if name.startswith("_"):
            raise SegkitError(f"{source}: {key}.{name} is not allowed in a config segkit rebuilds")
        if name not in named:
            raise SegkitError(
                f"{source}: {key}.{name} is not an argument of {title} (its arguments: {', '.join(sorted(named))})"
            )


def net_options(model_cfg: Any, source: str, key: str = "model") -> tuple[Callable[..., Any], dict[str, Any]]:
    """A stored ``model`` config -> (its registered builder, its checked keyword arguments). No nested
    ``_target_`` and no other Hydra key may appear: only the top-level net is built."""
    cfg = plain_data(model_cfg, source, key)
    if not isinstance(cfg, dict):
        raise SegkitError(f"{source}: '{key}' must be a model config mapping with a _target_, not {type(cfg).__name__}")
    builder = net_builder(cfg.get("_target_"), source, key)
    options = {k: v for k, v in cfg.items() if k != "_target_"}
    _refuse_nested_targets(options, source, key)
    _check_keywords(builder, options, source, key)
    return builder, options


def _refuse_nested_targets(node: Any, source: str, where: str) -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "_target_":
                raise SegkitError(
                    f"{source}: {where}._target_={value!r} is a nested _target_; a model config segkit rebuilds "
                    "may build only its top-level net"
                )
            _refuse_nested_targets(value, source, f"{where}.{name}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_nested_targets(value, source, f"{where}.{i}")


def build_stored_data(data_cfg: Any, source: str, spec: Any, root: str | None = None, key: str = "data") -> Any:
    """A stored ``data`` config -> segkit's data module, built through the data registry only (its module,
    datasets and transform builders), each key checked against the signature; ``root`` re-points the folder.
    The label table and input spec are the checkpoint's own (``spec``, read from ``segkit.input``): the stored data
    config names its table only."""
    cfg = plain_data(data_cfg, source, key)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise SegkitError(f"{source}: '{key}' must be a data config mapping with a _target_")
    if cfg["_target_"] != DATA_CALLABLES[0]:
        raise SegkitError(
            f"{source}: {key}._target_={cfg['_target_']!r} is not segkit's data module ({DATA_CALLABLES[0]})"
        )
    for name in ("labels", "input", "reduce_zero_label", "in_channels", "cache_mb"):  # cache_mb: one pass gains nothing
        cfg.pop(name, None)
    if root is not None:
        cfg["root"] = str(root)
    return _build(cfg, source, key, labels=spec.labels, input=spec, in_channels=spec.in_channels)


def _build(node: dict, source: str, where: str, **given: Any) -> Any:
    target = node.get("_target_")
    builder = _data_callables().get(target) if isinstance(target, str) else None
    if builder is None:
        raise SegkitError(
            f"{source}: {where}._target_={target!r} is not a segkit data module, dataset or transform; segkit "
            "builds nothing else from a stored config"
        )
    partial = node.get("_partial_", False)
    if not isinstance(partial, bool):
        raise SegkitError(f"{source}: {where}._partial_={partial!r}; it must be true or false")
    options = {}
    for name, value in node.items():
        if name in HYDRA_KEYS:
            continue
        if isinstance(value, dict) and "_target_" in value:
            value = _build(value, source, f"{where}.{name}")
        else:
            _refuse_nested_targets(value, source, f"{where}.{name}")
        options[name] = value
    _check_keywords(builder, options, source, where)
    options.update(given)
    if partial:
        return functools.partial(builder, **options)
    try:
        return builder(**options)
    except SegkitError:
        raise
    except Exception as err:  # a wrong value type in someone else's file: one line, not a traceback
        message = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise SegkitError(f"{source}: {where} cannot be built from its stored values: {message}") from None
