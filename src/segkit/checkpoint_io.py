"""Reading checkpoint and weights files someone else wrote, and the Lightning plugin that does it for training.

``torch.load(weights_only=True)`` refuses pickled code, but not everything a crafted file can do:

- a zip record may be deflated, so a small file expands 1000-fold in memory; torch's own files store records
  uncompressed, so ``read_torch_file`` refuses compressed records and records larger than the file, which bounds
  what loading allocates by the file's size;
- a checkpoint's callback state names files Lightning later deletes (the previous ``last`` / ``k``-th best) or
  loads (``best_model_path``, ``http://`` included). ``SegkitCheckpointIO`` keeps only paths that are plain files
  inside the run's own ``checkpoints/`` folder, drops the rest with one warning line, and deletes nothing else.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from segkit import SegkitError

log = logging.getLogger("segkit")

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
# how torch's legacy (non-zip) files begin: pickle protocol 2, then the magic number 0x1950a86a20f9469cfc6c
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_CALLBACK_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


_file_reader = torch._C.PyTorchFileReader  # torch's own zip reader: what torch.load will see


def check_torch_archive(path: Path, what: str = "checkpoint") -> None:
    """Refuse a file that is not torch's zip format exactly as ``torch.save`` writes it: records uncompressed, no
    larger than the file, each named once, and seen at the same offsets and sizes by Python's zip reader and by
    torch's own (a second central directory could otherwise show each reader a different archive)."""
    size = path.stat().st_size
    fix = "save it with torch.save"
    try:
        with open(path, "rb") as raw:
            start = raw.read(16)
            if start.startswith(_LEGACY_MAGIC):
                raise SegkitError(
                    f"{what} '{path}' is in torch's legacy (pre-1.6) format, which declares its sizes before segkit "
                    'can check them; if you trust it, convert it once with python -c "import torch; torch.save('
                    f"torch.load('{path}', weights_only=True), '{path.with_suffix('.pt')}')\" and use the .pt file"
                )
            if not start.startswith(b"PK\x03\x04"):
                raise SegkitError(f"{what} '{path}' is not a torch.save file (no zip record at its start); {fix}")
            with zipfile.ZipFile(raw) as archive:
                records = archive.infolist()
                _check_directory_is_last(raw, archive, size, path, what)
                names = [info.filename for info in records]
                if len(set(names)) != len(names):
                    raise SegkitError(f"{what} '{path}' names a record twice; {fix}")
                total = 0
                offsets = {}
                for info in records:
                    raw.seek(info.header_offset)
                    header = raw.read(_LOCAL_HEADER.size)
                    if len(header) != _LOCAL_HEADER.size:
                        raise zipfile.BadZipFile("truncated local header")
                    fields = _LOCAL_HEADER.unpack(header)
                    if info.compress_type != zipfile.ZIP_STORED or fields[3] != zipfile.ZIP_STORED:
                        raise SegkitError(
                            f"{what} '{path}' holds a compressed record ('{info.filename}'); torch.save never "
                            f"compresses, so segkit does not expand it: {fix}"
                        )
                    if info.file_size != info.compress_size or info.file_size > size:
                        raise SegkitError(f"{what} '{path}' has a record larger than the file ('{info.filename}')")
                    total += info.file_size
                    offsets[info.filename.split("/", 1)[-1]] = (
                        info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10],
                        info.file_size,
                    )
                if total > size:
                    raise SegkitError(f"{what} '{path}' lists records larger than the file itself; {fix}")
        reader = _file_reader(str(path))
        if set(reader.get_all_records()) != set(offsets) or torch_record_places(reader, offsets) != offsets:
            raise SegkitError(f"{what} '{path}' shows torch's reader other records than its zip directory; {fix}")
    except SegkitError:
        raise
    except (zipfile.BadZipFile, struct.error, OSError, ValueError, RuntimeError) as err:
        raise SegkitError(f"{what} '{path}' is not a torch.save file ({type(err).__name__}); {fix}") from None


def torch_record_places(reader: Any, names: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(data offset, size) of each named record as torch's own reader sees it. Older torch releases (2.11 among them) have no
    ``get_record_size``: there the offsets alone are compared, and each size is the zip directory's (checked above
    against the file's size), since ``names`` maps each name to its directory (offset, size)."""
    size_of = getattr(reader, "get_record_size", None)
    return {
        name: (reader.get_record_offset(name), size_of(name) if size_of is not None else where[1])
        for name, where in names.items()
    }


def _check_directory_is_last(raw, archive: zipfile.ZipFile, size: int, path: Path, what: str) -> None:
    """The central directory must end where the end-of-archive records begin, as torch.save writes it: nothing may
    sit between (a second directory) or before its stated offset (Python's reader would shift every offset)."""
    end = size - 22 - len(archive.comment)
    raw.seek(end)
    record = raw.read(22)
    if len(record) != 22 or record[:4] != b"PK\x05\x06":
        raise SegkitError(f"{what} '{path}' has a comment or junk after its zip directory; save it with torch.save")
    directory_end = end
    raw.seek(max(0, end - 20))
    locator = raw.read(20)
    if locator[:4] == b"PK\x06\x07":  # zip64: its end record sits before the locator
        directory_end = struct.unpack("<Q", locator[8:16])[0]
    cd_size, cd_offset = struct.unpack("<II", record[12:20])
    if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        raw.seek(directory_end)
        zip64 = raw.read(56)
        if zip64[:4] != b"PK\x06\x06":
            raise zipfile.BadZipFile("zip64 end record missing")
        cd_size, cd_offset = struct.unpack("<QQ", zip64[40:56])
    if cd_offset + cd_size != directory_end or archive.start_dir != cd_offset:
        raise SegkitError(
            f"{what} '{path}' has data between or before its zip directories; torch.save never writes that"
        )


def read_torch_file(path: str | Path, what: str = "checkpoint", fix: str = "use a .ckpt written by src/train.py"):
    """``torch.load(path, weights_only=True)`` on CPU after ``check_torch_archive``; any failure is one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SegkitError(f"{what} '{path}' does not exist or is not a file; {fix}")
    check_torch_archive(path, what)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the file holds, the user gets one line
        raise SegkitError(
            f"cannot read {what} '{path}': it is not a segkit checkpoint or holds objects segkit will not "
            f"unpickle ({type(err).__name__}); {fix}"
        ) from None
    _check_tensor_sizes(loaded, path, what)
    return loaded


def _check_tensor_sizes(loaded: Any, path: Path, what: str) -> None:
    """Every tensor must own the bytes it shows: a view over a smaller storage (a stride-0 ``expand``, an
    overlapping ``as_strided``) stores 4 bytes and becomes gigabytes when a net, an optimiser or a comparison
    copies it. The tensors in all may show at most twice the file's size (tied weights share a storage)."""
    budget = 2 * path.stat().st_size + 2**20  # tied weights show one storage twice
    shown = 0
    stack, seen = [loaded], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > 10_000_000:
            raise SegkitError(f"{what} '{path}' holds over ten million objects; not a segkit checkpoint")
        if isinstance(node, torch.Tensor):
            nbytes = node.numel() * node.element_size()
            if nbytes > node.untyped_storage().nbytes() or any(
                stride == 0 and dim > 1 for stride, dim in zip(node.stride(), node.shape, strict=True)
            ):
                raise SegkitError(
                    f"{what} '{path}' holds a tensor of shape {tuple(node.shape)} over {node.untyped_storage().nbytes()} "
                    "stored bytes (a broadcast view); torch.save of real weights never writes that"
                )
            shown += nbytes
            if shown > budget:
                raise SegkitError(
                    f"{what} '{path}' shows more tensor bytes than the file holds; not a segkit checkpoint"
                )
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


def _inside(path: Any, folders: Iterable[Path]) -> bool:
    """``path`` is a plain local file (no URL, no link) directly inside one of ``folders``."""
    if not isinstance(path, str) or not path or "://" in path or path.startswith("~"):
        return False
    candidate = Path(path)
    if not candidate.is_absolute() or candidate.is_symlink() or not candidate.is_file():
        return False
    real = Path(os.path.realpath(candidate))
    return any(real.parent == Path(os.path.realpath(folder)) for folder in folders)


def sanitize_callback_state(checkpoint: dict, folders: list[Path], source: str) -> list[str]:
    """Drop, in place, every checkpoint-callback path in ``checkpoint["callbacks"]`` that is not a plain file
    inside ``folders`` (with the score that came with it); returns what was dropped."""
    dropped: list[str] = []
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return dropped
    for state in callbacks.values():
        if not isinstance(state, dict) or not any(k in state for k in (*_CALLBACK_PATH_KEYS, "best_k_models")):
            continue
        for key in _CALLBACK_PATH_KEYS:
            if key in state and state[key] and not _inside(state[key], folders):
                dropped.append(f"{key}={state[key]!r}")
                state[key] = ""
                if key == "best_model_path":
                    state["best_model_score"] = None
                if key == "kth_best_model_path":
                    state["kth_value"] = None
        best_k = state.get("best_k_models")
        if best_k is not None:
            kept = {p: v for p, v in best_k.items() if _inside(p, folders)} if isinstance(best_k, dict) else {}
            dropped += [
                f"best_k_models[{p!r}]" for p in (best_k if isinstance(best_k, dict) else [best_k]) if p not in kept
            ]
            state["best_k_models"] = kept
        best = state.get("best_model_path")
        if best and not _scored_among_best(best, state.get("best_model_score"), state.get("best_k_models")):
            dropped.append(f"best_model_path={best!r} (its score is not the one its top-k list gives it)")
            state["best_model_path"] = ""
        if not state.get("best_model_path"):
            state["best_model_score"] = None
    if dropped:
        log.warning(
            f"{source}: ignored {len(dropped)} checkpoint path(s) outside the run's checkpoints folder "
            f"({', '.join(dropped)[:300]}); nothing there is removed, fetched or tested on"
        )
    return dropped


def check_resume_state(checkpoint: dict, source: str) -> None:
    """What Lightning restores beside the weights, checked as data: a Lightning 2.x checkpoint wherever it holds
    more than weights (older ones are migrated by Lightning after loading, which would bring back unchecked callback
    paths; a spawned DDP process's weights-only ``.temp.ckpt`` carries no version), no counter below zero
    (a negative epoch trains past max_epochs), no negative elapsed time (it would stretch max_time), and a
    patience that is a count (a large one only trains to max_epochs)."""
    version = checkpoint.get("pytorch-lightning_version")
    major = str(version).split(".", 1)[0]
    restores_state = any(key in checkpoint for key in ("callbacks", "loops", "optimizer_states", "lr_schedulers"))
    if (version is not None or restores_state) and (
        not isinstance(version, str) or not major.isdigit() or int(major) < 2
    ):
        raise SegkitError(
            f"{source} was written by Lightning {version!r}; segkit resumes checkpoints of Lightning 2 or later "
            "(written by src/train.py)"
        )
    legacy = [k for k in checkpoint if isinstance(k, str) and k.startswith(("checkpoint_callback_", "early_stop_"))]
    if legacy:
        raise SegkitError(f"{source} holds the pre-2.0 key '{legacy[0]}'; resume only checkpoints of src/train.py")
    for key in ("epoch", "global_step"):
        value = checkpoint.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SegkitError(f"{source}: {key}={value!r}; expected a whole number from 0")
    stack = [("loops", checkpoint.get("loops"))]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}", v) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{where}.{i}", v) for i, v in enumerate(node))
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and node < 0:
            raise SegkitError(f"{source}: {where}={node}; a loop counter below zero")
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, dict):
            continue
        elapsed = state.get("time_elapsed")
        if isinstance(elapsed, dict) and any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in elapsed.values()
        ):
            raise SegkitError(f"{source}: callbacks[{str(name)[:40]!r}].time_elapsed must hold seconds from 0")
        patience = state.get("patience", 0)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise SegkitError(f"{source}: callbacks[{str(name)[:40]!r}].patience={patience!r}; expected a count")


def _scored_among_best(path: str, score: Any, best_k: Any) -> bool:
    """A best checkpoint the run's callback wrote is in its top-k list with the same, finite score."""
    try:
        value, listed = float(score), float(best_k[path])
    except (TypeError, ValueError, KeyError, RuntimeError):
        return False
    return math.isfinite(value) and value == listed


class SegkitCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O for a run whose checkpoints live in ``folders`` (its ``checkpoints/``).

    Loads with ``read_torch_file`` (weights only, bounded, one-line errors) and keeps only callback paths inside
    ``folders``; removes only plain files inside them, so a stale path can never delete anything else.
    """

    def __init__(self, folders: list[str | Path], run_dir: str | Path | None = None) -> None:
        super().__init__()
        self._folders = [Path(f) for f in folders]
        self.run_dir = Path(run_dir) if run_dir else None
        self.trainer: Any = None  # set by segkit's build_trainer: checkpoint folders chosen at setup count too

    @property
    def folders(self) -> list[Path]:
        """The run's checkpoint folders: those configured, and those Lightning chose (a ModelCheckpoint without a
        ``dirpath`` gets one at setup)."""
        chosen = [Path(c.dirpath) for c in getattr(self.trainer, "checkpoint_callbacks", []) if c.dirpath]
        return list(dict.fromkeys(self._folders + chosen))

    @property
    def removable(self) -> list[Path]:
        """Where files may be removed: the checkpoint folders, and the run folder itself for Lightning's own scratch
        checkpoints (ddp_spawn's ``.temp.ckpt``)."""
        return self.folders + ([self.run_dir] if self.run_dir else [])

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        checkpoint = read_torch_file(path)
        if not isinstance(checkpoint, dict):
            raise SegkitError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
        check_resume_state(checkpoint, f"checkpoint '{path}'")
        sanitize_callback_state(checkpoint, self.folders, f"checkpoint '{path}'")
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        if _inside(str(path), self.removable) and str(path).endswith(".ckpt"):
            os.remove(path)
        elif os.path.lexists(str(path)):
            where = ", ".join(str(f) for f in self.folders) or "the run's checkpoints folder"
            log.warning(f"kept '{path}': segkit removes only checkpoint files inside {where}")
