"""Which numeric precision a run uses, chosen for the processor it got (``precision: auto``).

bf16 autocast pays only where the processor has bf16 units: on a CPU with AMX-BF16 or AVX512-BF16 a training step
runs ~1.8x faster than fp32, on one without them (AVX2, or AVX-512 without BF16) oneDNN emulates bf16 and a step
runs ~50x slower. So ``auto`` asks what really decides it, the CPU's feature flags (and the ISA cap oneDNN is
given), never "AVX-512 present". Lightning has no "auto" precision: training settles it before the Trainer is
built, and eval / predict / benchmark settle theirs (``fp32`` / ``fp16`` / ``bf16``) before the first batch.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict
from torch import nn

from segkit import SegkitError

log = logging.getLogger("segkit")

AUTO = "auto"
# Lightning's precision values (its short aliases map onto them), the ones a run can be trained with
TRAINING_PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)
TRAINING_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
INFERENCE_PRECISIONS = ("fp32", "fp16", "bf16")

BF16_UNIT_FLAGS = ("amx_bf16", "avx512_bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 is emulated under them
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in ``/proc/cpuinfo`` text (``flags`` on x86, ``Features``
    on ARM); empty when the text has neither."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_units(cpuinfo: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The bf16 units this CPU has and oneDNN may use: ``amx_bf16`` and/or ``avx512_bf16``, or ``()``.

    Read from the cpuinfo text (``/proc/cpuinfo`` when None); where that cannot be read (macOS, Windows) torch's own
    cpuinfo checks answer. A ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16 (e.g. ``AVX2``) hides the units: oneDNN
    then emulates bf16, as on a processor without them.
    """
    environ = os.environ if environ is None else environ
    isa = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if isa in _ONEDNN_ISAS_WITHOUT_BF16:
        return ()
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    if cpuinfo is None:
        return _torch_bf16_units()
    flags = cpu_flags(cpuinfo)
    return tuple(flag for flag in BF16_UNIT_FLAGS if flag in flags)


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _torch_bf16_units() -> tuple[str, ...]:
    checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return tuple(flag for flag, name in checks.items() if getattr(torch.cpu, name, lambda: False)())


def _device_type(accelerator: str | torch.device) -> str:
    """``cpu``, ``cuda`` or another torch device type; Lightning's ``gpu`` / ``auto`` as Lightning resolves them."""
    name = accelerator.type if isinstance(accelerator, torch.device) else str(accelerator or AUTO).split(":")[0]
    if name == "gpu":
        return "cuda"
    if name == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return name


def check_training_precision(value: Any, key: str = "trainer.precision") -> str:
    """A training precision as Lightning spells it (``bf16`` -> ``bf16-mixed``), or ``auto``; else one line."""
    name = str(value).strip()
    name = TRAINING_ALIASES.get(name, name)
    if name != AUTO and name not in TRAINING_PRECISIONS:
        raise SegkitError(f"{key}={value}; use {AUTO}, {', '.join(TRAINING_PRECISIONS)}")
    return name


def resolve_precision(
    requested: Any, accelerator: str | torch.device, stored: str | None = None, cpuinfo: str | None = None
) -> tuple[str, str]:
    """``(precision, reason)`` a training run uses: an explicit value as given; ``auto`` on resuming keeps the
    ``stored`` precision the checkpoint was trained with (where this processor can run it); otherwise ``auto`` is
    ``bf16-mixed`` on a GPU that supports bf16, else ``16-mixed``; ``bf16-mixed`` on a CPU with AMX-BF16 or
    AVX512-BF16 units, else ``32-true`` (bf16 is emulated there, ~50x slower)."""
    name = check_training_precision(requested)
    if name != AUTO:
        return name, "given explicitly"
    device = _device_type(accelerator)
    units = bf16_units(cpuinfo) if device == "cpu" else ()
    if stored is not None:
        stored = check_training_precision(stored, key="the checkpoint's precision")
        if stored != AUTO and not (device == "cpu" and stored.startswith("16")):
            slow = device == "cpu" and stored.startswith("bf16") and not units
            note = "; this CPU has no bf16 units, so it runs slowly: give trainer.precision=32-true" if slow else ""
            return stored, f"auto on resume: the precision the checkpoint was trained with{note}"
    if device == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", "auto on a GPU that supports bf16"
        return "16-mixed", "auto on a GPU without bf16 support: fp16 with loss scaling"
    if device == "cpu":
        if units:
            return "bf16-mixed", f"auto on a CPU with bf16 units ({', '.join(units)})"
        return "32-true", "auto on a CPU without AMX-BF16 / AVX512-BF16 units (bf16 would be emulated, far slower)"
    return "32-true", f"auto on {device}: mixed precision is not measured there"


def stored_training_precision(checkpoint: Mapping[str, Any] | None) -> str | None:
    """The precision a checkpoint was trained with: ``checkpoint["segkit"]["precision"]``, or for checkpoints
    written before that, the ``trainer.precision`` of its stored run config; None where neither names one. The
    file is untrusted: only a known precision name is taken."""
    if not isinstance(checkpoint, Mapping):
        return None
    info = checkpoint.get("segkit")
    hparams = checkpoint.get("hyper_parameters")
    trainer = hparams.get("trainer") if isinstance(hparams, Mapping) else None
    for value in (
        info.get("precision") if isinstance(info, Mapping) else None,
        trainer.get("precision") if isinstance(trainer, Mapping) else None,
    ):
        name = TRAINING_ALIASES.get(str(value), str(value))
        if name in TRAINING_PRECISIONS:
            return name
    return None


def settle_training_precision(cfg: Any, stored: str | None = None) -> tuple[str, str]:
    """Replace ``cfg.trainer.precision`` (``auto`` or an alias) by the value Lightning takes, log the choice and its
    reason in one line, and return ``(precision, reason)``; ``stored`` is the precision of the checkpoint a resume
    starts from (``stored_training_precision``)."""
    trainer = cfg.trainer
    precision, reason = resolve_precision(trainer.get("precision", AUTO), trainer.get("accelerator", AUTO), stored)
    with open_dict(cfg):
        trainer.precision = precision  # the stored run config then names what the run really used
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:
        log.info(f"precision: {precision} ({reason})")
    return precision, reason


def model_precision(model: Any) -> str | None:
    """The precision a loaded model was trained with: its ``precision`` (from ``checkpoint["segkit"]``), else the
    ``trainer.precision`` of its stored run config; None where unknown."""
    stored = getattr(model, "precision", None)
    config = getattr(model, "config", None)
    return stored_training_precision({"segkit": {"precision": stored}, "hyper_parameters": config})


def inference_name(training_precision: str) -> str:
    """The dtype a training precision computes in, as eval / predict / benchmark name it: ``bf16-mixed`` -> ``bf16``,
    ``16-mixed`` -> ``fp16``, ``32-true`` -> ``fp32``."""
    if training_precision.startswith("bf16") or training_precision == "transformer-engine":
        return "bf16"
    if training_precision.startswith("16") or training_precision == "transformer-engine-float16":
        return "fp16"
    return "fp32"


def resolve_inference_precision(
    requested: Any,
    device: str | torch.device,
    stored: str | None = None,
    key: str = "precision",
    cpuinfo: str | None = None,
) -> tuple[str, str]:
    """``(fp32 | fp16 | bf16, reason)`` for eval / predict / benchmark. An explicit value as given; ``auto`` takes
    the run's own precision (``stored``, a training precision) where this processor runs it fast, else fp32. With
    nothing stored (benchmark of an untrained net), the precision ``auto`` would train with here."""
    name = str(requested).strip()
    if name != AUTO and name not in INFERENCE_PRECISIONS:
        raise SegkitError(f"{key}={requested}; use {AUTO}, {', '.join(INFERENCE_PRECISIONS)}")
    if name != AUTO:
        return name, "given explicitly"
    device_type = _device_type(device)
    if stored is None:
        trained, why = resolve_precision(AUTO, device_type, cpuinfo=cpuinfo)
        return inference_name(trained), f"no stored precision; {why}"
    wanted = inference_name(stored)
    if wanted == "fp32":
        return "fp32", f"auto: the run trained in {stored}"
    if device_type == "cuda":
        ok = wanted == "fp16" or torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        ok = device_type == "cpu" and wanted == "bf16" and bool(bf16_units(cpuinfo))
    if ok:
        return wanted, f"auto: the run trained in {stored}"
    return "fp32", f"auto: the run trained in {stored}, which this {device_type} does not run fast"


def settle_inference_precision(requested: Any, device: str | torch.device, model: Any = None) -> str:
    """``resolve_inference_precision`` for a loaded model (None: no checkpoint), logged in one line."""
    precision, reason = resolve_inference_precision(requested, device, model_precision(model))
    log.info(f"precision: {precision} ({reason})")
    return precision


# oneDNN's bf16 weight gradient of a convolution from more than 2048 channels to fewer than 16 writes past its
# buffer: with torch 2.15 on machine C (an Emerald Rapids Xeon with AMX-BF16), Conv2d(4096, 8, 1) under CPU bf16
# autocast aborted in backward with "free(): invalid next size" or corrupted the heap silently, at any map size and
# for 1x1, 3x3 and 7x1 kernels alike; 2048 input channels, or 16 outputs and more, were fine. FCN-VGG's score_fr
# (fc7's 4096 channels to the classes) is such a layer for every label table of fewer than 16 classes.
ONEDNN_BF16_WGRAD_LIMITS = {"in_channels_above": 2048, "out_channels_below": 16}


class CpuAutocastFp32Conv2d(nn.Conv2d):
    """A ``Conv2d`` that computes in fp32 under CPU autocast (same parameters, same state dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.to(self.weight.dtype))
        return super().forward(x)


def keep_fp32_where_cpu_bf16_fails(net: nn.Module) -> list[str]:
    """Turn every plain ``nn.Conv2d`` of ``net`` in the range of ``ONEDNN_BF16_WGRAD_LIMITS`` into a
    ``CpuAutocastFp32Conv2d`` in place (nothing changes outside CPU autocast); returns their names, those turned
    before included. ``bf16-true`` (bf16 weights, no autocast) is not covered: training refuses it on a CPU for
    such a net."""
    limits = ONEDNN_BF16_WGRAD_LIMITS
    names = []
    for name, module in net.named_modules():
        if (
            type(module) in (nn.Conv2d, CpuAutocastFp32Conv2d)
            and module.in_channels > limits["in_channels_above"]
            and module.out_channels < limits["out_channels_below"]
        ):
            module.__class__ = CpuAutocastFp32Conv2d
            names.append(name)
    return names
