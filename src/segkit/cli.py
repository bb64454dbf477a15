"""Shared behaviour of the entry points: print the config, turn user errors into one clear line."""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segkit import NonFiniteLossError, SegkitError
from segkit.results import job_overrides, optimized_value
from segkit.run_folder import check_run_folder, hydra_quote

log = logging.getLogger("segkit")


def run_task(task: Callable[[DictConfig], dict], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)``; return ``cfg.optimized_metric`` from its metrics (for Hydra sweepers).

    A ``SegkitError`` (bad path, bad key, bad data) or a config mistake met while building (an argument a class
    does not take, an interpolation to nowhere) is logged as one line and exits with status 1.
    """
    if is_rank_zero():  # one copy under srun/torchrun/DDP
        save_config(cfg, show=bool(cfg.get("extras", {}).get("print_config")))
    try:
        metrics = task(cfg)
    except Exception as err:
        cause = segkit_cause(err)
        line = str(cause) if cause is not None else _config_mistake(err)
        if line is None:
            raise
        log.error(f"error: {line}")
        (cause or err).logged = True  # run_entry_point does not print it again when a multirun ends on it
        if _in_multirun():  # the job fails, not the process: the sweeper records it (and may go on)
            if isinstance(cause, NonFiniteLossError):
                return float("nan")  # a failed trial, and the sweep goes on
            raise
        sys.exit(1)
    value = optimized_value(metrics, cfg.get("optimized_metric"))
    return None if value is None else float(value)


def _config_mistake(err: BaseException) -> str | None:
    """The one line for a config mistake behind an error raised inside the task (``segkit.config_errors``), read
    against this job's overrides; no suggestions that would need composing again (Hydra is running)."""
    from segkit.config_errors import explain_config_error

    return explain_config_error(err, job_overrides() or [], None)


def resume_in_place(argv: list[str]) -> list[str]:
    """``ckpt_path=<run>/checkpoints/last.ckpt`` continues that run in its own folder: the same checkpoints
    folder (so Lightning keeps the best checkpoint and its score), CSV log and W&B run. Adds
    ``hydra.run.dir=<run>`` (quoted; a path holding ``$`` is refused, since Hydra would interpolate it) to a single
    run's arguments unless one is given. A folder the run will continue in is first checked for links it would write through
    (``segkit.run_folder``); a refusal is one line and exit status 1, before anything is written."""
    explicit = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    if explicit is not None:
        _check_existing_run_folder(Path(explicit.strip("'\"")).expanduser())
    if explicit is not None or any(a in ("-m", "--multirun") or a.startswith(("hydra/", "hydra.mode=")) for a in argv):
        return argv
    ckpt = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("ckpt_path=")), "")
    path = Path(ckpt.strip("'\"")).expanduser() if ckpt and ckpt != "null" else None
    if path is None or path.parent.name != "checkpoints" or not (path.parent.parent / ".hydra").is_dir():
        return argv
    _check_existing_run_folder(path.parent.parent)
    run_dir = str(path.parent.parent.resolve())
    if "$" in run_dir:  # Hydra resolves its output folder more than once: no escape survives every pass
        print(
            f"error: run folder '{run_dir}' has '$' in its path; rename it (or a folder above it) to resume there",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return [*argv, f"hydra.run.dir={hydra_quote(run_dir)}"]


def _check_existing_run_folder(run_dir: Path) -> None:
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    try:
        check_run_folder(run_dir)
    except SegkitError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def is_rank_zero() -> bool:
    """Rank 0 of a multi-process launch, known from the launcher's environment before any process group exists
    (Lightning reads RANK, LOCAL_RANK, SLURM_PROCID at import): the process that writes a run's shared files."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def error_cause(err: BaseException) -> BaseException:
    """What went wrong behind ``err``: the ``SegkitError`` among its explicit causes (Hydra raises "Error in call to
    target ..." from the error it wraps), else the innermost error behind Hydra's ``InstantiationException``
    wrapping, else ``err`` itself."""
    from hydra.errors import InstantiationException

    seen: set[int] = set()
    innermost, wrapped = err, True
    while err is not None and id(err) not in seen:
        if isinstance(err, SegkitError):
            return err
        seen.add(id(err))
        if wrapped:
            innermost = err
            wrapped = isinstance(err, InstantiationException)
        err = err.__cause__  # explicit causes only
    return innermost


def segkit_cause(err: BaseException) -> SegkitError | None:
    """The ``SegkitError`` behind ``err`` (``error_cause``), or None."""
    cause = error_cause(err)
    return cause if isinstance(cause, SegkitError) else None


def save_config(cfg: DictConfig, show: bool = False) -> None:
    """Save the composed config as YAML (interpolations kept) in the run folder's ``config_tree.yaml``; with
    ``show`` (``extras.print_config=true``) print it too. A run's first screen is then what the run says, not
    hundreds of lines of settings."""
    text = OmegaConf.to_yaml(cfg, resolve=False)
    if show:
        try:
            from rich.console import Console
            from rich.syntax import Syntax

            Console().print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
        except ImportError:  # rich is a dependency, but the config must print regardless
            print(text)
    output_dir = cfg.get("paths", {}).get("output_dir")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "config_tree.yaml").write_text(text)


def run_entry_point(main: Callable[[], Any], config_name: str) -> None:
    """Run an entry point's ``@hydra.main`` function as segkit shows a run: third-party notices that ask nothing of
    the user are filtered, and a mistake on the command line, in the config or in the data ends in one line that
    names the key, choice or file and the fix (exit status 1) instead of Hydra's report or a traceback.

    Hydra prints errors itself unless ``HYDRA_FULL_ERROR`` is set, so it is set while ``main`` runs and the error
    is read here; a user who set it gets the full traceback as before. An error that is no user mistake keeps
    Hydra's own report.
    """
    quiet_third_party_notices()
    args = sys.argv[1:]
    ours = os.environ.get(_OWN_FULL_ERROR) == "1"  # set by segkit in a parent process (DDP ranks re-run the script)
    user_full_error = None if ours else os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if user_full_error != "1":
        os.environ[_OWN_FULL_ERROR] = "1"
    try:
        main()
    except Exception as err:
        if user_full_error == "1":
            raise
        line = error_line(err, config_name, args)
        if line is None:
            _restore_env("HYDRA_FULL_ERROR", user_full_error)
            _hydra_report(err)
        if line:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        _restore_env("HYDRA_FULL_ERROR", user_full_error)
        os.environ.pop(_OWN_FULL_ERROR, None)


# Marks HYDRA_FULL_ERROR as set by run_entry_point, not by the user, for the processes a run starts.
_OWN_FULL_ERROR = "SEGKIT_OWN_HYDRA_FULL_ERROR"


def error_line(err: BaseException, config_name: str, args: Sequence[str]) -> str | None:
    """The one line for a user's mistake behind ``err`` ("" when the run already logged it), or None."""
    from segkit.config_errors import explain_config_error

    cause = segkit_cause(err)
    if getattr(cause or err, "logged", False):
        return ""
    if cause is not None:
        return str(cause)
    overrides, config_name = _command_line(args, config_name)
    return explain_config_error(err, overrides, _composer(config_name))


def _command_line(args: Sequence[str], config_name: str) -> tuple[list[str], str]:
    """The overrides and config name of a Hydra command line (its own parser reads the flags)."""
    try:
        from hydra._internal.utils import get_args_parser

        parsed, rest = get_args_parser().parse_known_args(list(args))
        return list(parsed.overrides or []) + [a for a in rest if not a.startswith("-")], (
            parsed.config_name or config_name
        )
    except (ImportError, SystemExit):  # another Hydra version: the arguments that are not flags
        return [a for a in args if not a.startswith("-")], config_name


def _composer(config_name: str) -> Callable[[list[str]], Any] | None:
    """``overrides -> composed config`` (with its ``hydra`` node) of ``conf/<config_name>.yaml``, for suggestions
    after a failed run (Hydra has cleared its own instance by then); None without the folder."""
    from segkit.files import conf_dir

    if not (conf_dir() / f"{config_name}.yaml").is_file():
        return None

    def composed(overrides: list[str]) -> Any:
        from segkit.build import compose

        return compose(config_name, overrides, return_hydra_config=True)

    return composed


def _hydra_report(err: BaseException) -> None:
    """Hydra's own report of an error that is no user mistake (its stack trace without Hydra's frames); exits 1."""
    try:
        from hydra._internal.utils import run_and_report
    except ImportError:  # another Hydra version
        traceback.print_exception(type(err), err, err.__traceback__)
        raise SystemExit(1) from None

    def reraise() -> None:
        raise err

    run_and_report(reraise)
    raise SystemExit(1)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# Notices of libraries that ask nothing of a segkit user, by their exact text: Lightning's advert for its cloud
# logger, a deprecation inside Lightning's own use of torch's pytree (nothing a user can change), and the model
# summary's doubt about mixed precision, whose weights stay 32-bit (so its size in MB is right).
IGNORED_WARNINGS = (
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` "
    "instead.",
    *(
        f"Precision {p} is not supported by the model summary.  Estimated model size in MB will not be accurate. "
        "Using 32 bits instead."
        for p in ("bf16-mixed", "16-mixed")
    ),
)
IGNORED_LOG_LINES = {
    "pytorch_lightning.utilities.rank_zero": (
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and artifacts "
        "automatically to the Lightning Experiments platform.",
    ),
}


class _DropExactMessages(logging.Filter):
    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


def quiet_third_party_notices() -> None:
    """Filter ``IGNORED_WARNINGS`` and ``IGNORED_LOG_LINES``, each by its whole text (any other message of the same
    library still shows)."""
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message) + r"\Z")
    for name, messages in IGNORED_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropExactMessages) for f in logger.filters):
            logger.addFilter(_DropExactMessages(messages))


# Sweep job folders: <job number>_<overrides>, bounded so no override (Optuna's full-precision floats, long paths,
# many keys) can push a folder name past the 255-character limit of file systems.
JOB_FOLDER_LIMIT = 100
_FLOAT = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")


def job_folder_name(num: Any, override_dirname: Any, swept: Any = None, limit: int = JOB_FOLDER_LIMIT) -> str:
    """``<num>_<summary>`` of a multirun job (``hydra.sweep.subdir``): the overrides Hydra lists in
    ``override_dirname``, the swept ones first (the keys of ``swept``, the sweeper's params, and the sweeps on the
    command line), floats rounded to 4 significant digits, characters unsafe in file names replaced by ``_``, cut to
    ``limit`` characters: keys shortened to their last name where that is unambiguous, then cut at an override's end
    (``,+N`` counts those left out). The job number keeps names unique;
    the full overrides are in the job's ``.hydra/overrides.yaml`` and ``result.json``."""
    prefix = f"{num}_"
    items = split_overrides(str(override_dirname or ""))
    first = _swept_keys(swept)
    items = sorted(items, key=lambda item: item.lstrip("+~").partition("=")[0] not in first)  # stable: sweeps first
    full = [short for short in (_short_override(item) for item in items) if short]
    if len(prefix) + len(",".join(full)) <= limit:
        return (prefix + ",".join(full)).rstrip("_")
    items = [short for short in (_short_override(item, _last_names(items)) for item in items) if short]
    kept: list[str] = []
    for i, item in enumerate(items):
        more = f",+{len(items) - i - 1}" if i < len(items) - 1 else ""
        if len(prefix) + len(",".join([*kept, item])) + len(more) > limit:
            break
        kept.append(item)
    if not kept:  # one override longer than the limit on its own
        more = f",+{len(items) - 1}" if len(items) > 1 else ""
        kept = [items[0][: max(1, limit - len(prefix) - len(more))]]
    left = len(items) - len(kept)
    return prefix + ",".join(kept) + (f",+{left}" if left else "")


def _swept_keys(params: Any) -> set[str]:
    """The keys a sweep varies: the sweeper's ``params`` and the sweep overrides (``a,b``, ``range(...)``) of this
    process's command line (the launching process; a job started elsewhere sees only the params)."""
    keys = {str(k) for k in dict(params or {})}
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for arg in sys.argv[1:]:
            if "=" in arg and not arg.startswith("-"):
                try:
                    override = parser.parse_override(arg)
                except Exception:  # noqa: BLE001 - not an override this process was given
                    continue
                if override.is_sweep_override():
                    keys.add(override.get_key_element().lstrip("+~"))
    except ImportError:
        pass
    return keys


def split_overrides(text: str, sep: str = ",") -> list[str]:
    """``override_dirname`` back into its overrides: split at ``sep`` outside brackets and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[i - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(0, depth - 1)
        elif char == sep and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item]


def _last_names(items: Sequence[str]) -> dict[str, str]:
    """key -> its last dotted name where no other key of ``items`` ends in the same name (``optimizer.lr`` -> ``lr``)."""
    keys = [item.partition("=")[0].lstrip("+~") for item in items]
    last = [key.rpartition(".")[2] for key in keys]
    return {key: name for key, name in zip(keys, last, strict=True) if last.count(name) == 1}


def _short_override(item: str, names: dict[str, str] | None = None) -> str:
    """One override as a safe piece of a folder name: ``+`` dropped, ``~key`` as ``no-key``, numbers rounded, a
    list or mapping value flattened (``{train:8,val:4}`` -> ``train_8-val_4``)."""
    key, eq, value = item.partition("=")
    deleted = key.startswith("~")
    key = key.lstrip("+~")
    key = (names or {}).get(key, key)
    value = _FLOAT.sub(_round_number, value)
    value = re.sub(r"[{}\[\]()'\"\s]", "", value).replace(":", "_").replace(",", "-")
    text = f"{'no-' if deleted else ''}{key}{eq}{_UNSAFE.sub('_', value).strip('_')}"
    return _UNSAFE.sub("_", text).strip("_")


def _round_number(match: re.Match) -> str:
    text = match.group()
    if re.fullmatch(r"-?\d+", text):
        return text
    return f"{float(text):.4g}"


def usage(choices: Any = None) -> str:
    """``--help`` of an entry point (``hydra.help.template``): the entry point's docstring, then each config group it
    uses with the choice it starts from and the other choices. ``$`` is doubled because Hydra fills the template with
    ``string.Template``."""
    main = sys.modules.get("__main__")
    doc = inspect.cleandoc(getattr(main, "__doc__", None) or "").strip()
    picked = {str(k): v for k, v in dict(choices or {}).items() if not str(k).startswith("hydra")}
    name = Path(sys.argv[0] if sys.argv and sys.argv[0] else "train.py").name
    command = f"python {name}" if name.endswith(".py") else name  # src/train.py, or the installed segkit-train
    if not doc:  # an installed command: pip's wrapper has no docstring
        doc = f"{command}: segkit's {name.removeprefix('segkit-')} entry point; README.md has the guide."
    lines = [
        doc,
        "",
        "== Config groups: (the choice this command starts from) and the others; pick one with group=name ==",
        *_group_lines(picked),
        "",
        f"Any key is set with key=value; {command} --cfg job [overrides] prints the composed config.",
        f"Hydra's own options (multirun, shell completion, ...): {command} --hydra-help",
    ]
    return "\n".join(lines).replace("$", "$$")


def _group_lines(picked: dict[str, Any]) -> list[str]:
    """``group (choice): options`` for each group of the composed config, from Hydra's config repository; Hydra's
    own listing of every group when it cannot be read."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        lines = []
        for group in sorted(picked):
            options = loader.get_group_options(group)
            if not options:  # an optional group without files (local)
                continue
            choice = "none" if picked[group] is None else picked[group]
            lines.append(f"{group} ({choice}): {', '.join(options)}")
        return lines
    except Exception:  # noqa: BLE001 - the help must show regardless
        return ["(the groups could not be listed here: --hydra-help lists them)"]


def _register_resolvers() -> None:
    """``${segkit.job_folder:...}`` (conf/hydra/default.yaml's sweep subdir) and ``${segkit.usage:...}`` (its help
    template); registered when an entry point imports this module, before Hydra resolves either."""
    for name, resolver in (("segkit.job_folder", job_folder_name), ("segkit.usage", usage)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


_register_resolvers()
