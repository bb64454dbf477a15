"""Config mistakes on the command line as one line naming the key or choice, with the closest valid one.

Hydra answers a mistyped key (``optimizer.lrr=1``) with "Could not override ... To append to your config use
+optimizer.lrr=1", advice that adds a key nothing reads, and a mistyped choice (``model=unet_smal``) with every
option of the group and the config search path. Here the error is read back (the key, or the group and name),
the config is composed again without the faulty override, and difflib names the closest keys or choices.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# How many names a line lists when nothing is close (a group's choices, a node's keys).
MAX_LISTED = 40


def explain_config_error(
    err: BaseException, overrides: Sequence[str], compose: Callable[[list[str]], Any] | None
) -> str | None:
    """One line for a config mistake behind ``err`` (without ``error:``), or None when it is none of these.

    ``overrides`` are the command line's overrides; ``compose(overrides)`` composes the entry point's config with
    them (None outside a Hydra run: no key suggestions then).
    """
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

    chain = list(_causes(err))
    for item in chain:
        if isinstance(item, MissingConfigException) and item.options is not None and item.missing_cfg_file:
            group, _, name = item.missing_cfg_file.rpartition("/")
            return unknown_choice(group, name, item.options)
        if isinstance(item, OverrideParseException):
            return unparsable_override(overrides, str(item))
    for item in chain:
        if isinstance(item, InstantiationException):
            line = _instantiation_line(str(item))
            if line is not None:
                return line
    composition = next((e for e in chain if isinstance(e, ConfigCompositionException)), None)
    if composition is not None:
        line = _composition_line(str(composition), overrides, compose)
        if line is not None:
            return line
    for item in chain:
        if not isinstance(item, OmegaConfBaseException):
            continue
        key = getattr(item, "full_key", None) or ""
        message = str(getattr(item, "msg", None) or item).splitlines()[0]
        if isinstance(item, MissingMandatoryValue) and key:
            return f"{key} has no value; set it on the command line, e.g. {key}=<value>"
        if isinstance(item, InterpolationResolutionError):
            key = key or next((a.lstrip("+~").partition("=")[0] for a in overrides if "${" in a), "")
            where = f"{key}: " if key else ""
            return f"{where}{message}; fix the ${{...}} reference (the composed config: --cfg job)"
        if key and ("not in struct" in message or "Missing key" in message):
            return unknown_key(key, overrides, compose)
        if key:
            return f"{key}: {message}; set {key} to a value of the kind it takes (--cfg job shows the composed config)"
    return None


def unknown_choice(group: str, name: str, options: Sequence[str]) -> str:
    """``model=unet_smal`` -> the closest choices of ``conf/model``."""
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    if close:
        spelled = " or ".join(f"{group}={c}" for c in close)
        return f"{group}={name}: conf/{group} has no '{name}'; did you mean {spelled}?"
    return f"{group}={name}: conf/{group} has no '{name}'; choose one of: {_listing(sorted(options))}"


def unknown_key(key: str, overrides: Sequence[str], compose: Callable[[list[str]], Any] | None) -> str:
    """``optimizer.lrr=1`` -> ``optimizer.lrr is not a config key; did you mean optimizer.lr? ...``."""
    override = _override_of(key, overrides) or ""
    cfg = _compose_without(key, overrides, compose)
    keys = config_keys(cfg) if cfg is not None else []
    if not key.startswith("hydra."):  # Hydra's own node is not what a user misspells; its config groups are
        groups = [g.replace("/", ".") for g in _choices(cfg) if not g.startswith("hydra")]
        keys = [k for k in keys if not k.startswith("hydra.")] + [g for g in groups if g not in keys]
    close = closest_keys(key, keys)
    if close:
        best = close[0]
        if override.startswith("~"):
            spelled = f" (write ~{best})"
        elif "=" in override:
            spelled = f" (write {best}={override.partition('=')[2]})"
        else:
            spelled = ""
        others = f"; or {' or '.join(close[1:])}" if len(close) > 1 else ""
        return f"{key} is not a config key; did you mean {best}?{spelled}{others}"
    parent = key.rpartition(".")[0]
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent and k != parent]
    where = f"{parent} has: {_listing(siblings)}" if parent and siblings else "see the keys with --cfg job"
    add = ""
    if "=" in override and not override.startswith("~"):
        add = f"; to add a key the config lacks, write +{key}={override.partition('=')[2]}"
    return f"{key} is not a config key ({where}){add}"


def _choices(cfg: Any) -> list[str]:
    """The config groups of a composed config (``hydra.runtime.choices``: also those chosen as null)."""
    try:
        return [str(g) for g in cfg.hydra.runtime.choices]
    except Exception:  # noqa: BLE001 - composed without its hydra node
        return []


def unparsable_override(overrides: Sequence[str], message: str) -> str:
    """An override Hydra's grammar refuses: name it and the parser's complaint."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    culprit = None
    for arg in overrides:
        try:
            parser.parse_override(arg)
        except Exception:  # noqa: BLE001 - the first override the parser refuses is the one to name
            culprit = arg
            break
    reason = message.splitlines()[0].strip() if message.strip() else "invalid syntax"
    what = f"cannot read the override {culprit!r}" if culprit else "cannot read an override"
    return (
        f"{what}: {reason}; quote a value holding spaces, brackets, commas or '=' "
        "(e.g. 'key=\"a,b\"'), and close every [ and {"
    )


def closest_keys(key: str, keys: Sequence[str]) -> list[str]:
    """Up to three valid keys closest to ``key``: its siblings by their last name first (``optimizer.lrr`` ->
    ``optimizer.lr``), then every key by its whole path (``optimiser.lr``), then every key by its last name (``lrr``
    -> ``optimizer.lr``)."""
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    close = [siblings[name] for name in difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.6)]
    if not close:
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    if not close:
        by_leaf: dict[str, list[str]] = {}
        for k in keys:
            by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
        for name in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.8):
            close.extend(by_leaf[name])
    return close[:3]


def config_keys(cfg: Any) -> list[str]:
    """Every dotted key of a composed config (nodes and leaves, list items skipped), without resolving it."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return []
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                path = f"{prefix}{name}"
                keys.append(path)
                walk(value, path + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def _composition_line(message: str, overrides: Sequence[str], compose: Callable[[list[str]], Any] | None) -> str | None:
    """Hydra's ConfigCompositionException for an override: unknown key, ``+`` on an existing key, ``~`` of a missing
    one."""
    first = message.splitlines()[0] if message else ""
    if first.startswith("Could not append to config. An item is already at '"):
        key = first.split("'")[1]
        override = _override_of(key, overrides) or f"+{key}=<value>"
        value = override.partition("=")[2]
        return f"{key} already exists; set it without the +: {key}={value}"
    if first.startswith("Could not delete from config. '"):
        key = first.split("'")[1]
        return unknown_key(key, overrides, compose)
    if first.startswith("Could not override '"):
        return unknown_key(first.split("'")[1], overrides, compose)
    return None


_TARGET = re.compile(r"Error in call to target '([\w.]+)'")
_FULL_KEY = re.compile(r"full_key: (\S+)")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_MISSING = re.compile(r"missing \d+ required (?:positional|keyword-only) arguments?: (.+?)['\"]?\)?$", re.M)


def _instantiation_line(message: str) -> str | None:
    """Hydra's "Error in call to target" for arguments the class does not take or lacks: the config key, the
    argument, and the closest one it takes (or the one to add)."""
    target, key = _TARGET.search(message), _FULL_KEY.search(message)
    if target is None:
        return None
    where = key.group(1) if key else "the config"
    name = target.group(1).rpartition(".")[2]
    unexpected = _UNEXPECTED.search(message)
    if unexpected:
        argument = unexpected.group(1)
        accepted = _arguments(target.group(1))
        close = difflib.get_close_matches(argument, accepted, n=1, cutoff=0.6)
        fix = f"did you mean {where}.{close[0]}?" if close else f"it takes: {_listing(accepted) or 'see its docstring'}"
        return f"{where}.{argument}: {name} takes no argument '{argument}'; {fix} (or remove it)"
    missing = _MISSING.search(message)
    if missing:
        names = re.findall(r"'(\w+)'", missing.group(1))
        if names:
            settings = " ".join(f"{where}.{n}=<value>" for n in names)
            return f"{where}: {name} needs {', '.join(names)}; set {settings}"
    return None


def _arguments(target: str) -> list[str]:
    """The keyword arguments ``target`` (a dotted class or function) takes; [] when it cannot be read."""
    import inspect

    try:
        from hydra.utils import get_object

        obj = get_object(target)
        signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - no listing then
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.name != "self"]


def _override_of(key: str, overrides: Sequence[str]) -> str | None:
    """The command-line override that sets or deletes ``key`` (``+``/``++``/``~`` allowed)."""
    for arg in overrides:
        name = arg.lstrip("+~").partition("=")[0]
        if name == key:
            return arg
    return None


def _compose_without(key: str, overrides: Sequence[str], compose: Callable[[list[str]], Any] | None) -> Any:
    """The config composed without the override of ``key`` and without sweeps (``a,b``, ``choice(...)``), whose
    keys are what the user could have meant; None when it cannot be composed."""
    if compose is None:
        return None
    kept = [arg for arg in overrides if arg.lstrip("+~").partition("=")[0] != key and not _is_sweep(arg)]
    for attempt in (kept, [a for a in kept if "." not in a.partition("=")[0]], []):
        try:
            return compose(list(attempt))
        except Exception:  # noqa: BLE001 - another mistake among the overrides: try with fewer of them
            continue
    return None


def _is_sweep(arg: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(arg).is_sweep_override()
    except Exception:  # noqa: BLE001 - an unparsable override is left out as well
        return True


def _causes(err: BaseException | None) -> Iterable[BaseException]:
    """``err`` and the exceptions behind it (explicit causes first, then the context)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")
