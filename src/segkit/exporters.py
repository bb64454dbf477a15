"""Deployable copies of a net: ONNX (checked in onnxruntime) and TorchScript, main-head logits only.

ONNX is exported with dynamic batch and spatial size and then *verified* at a second size; nets whose
tracing freezes a size (e.g. padding decided by a Python ``if``) fall back to dynamic batch only, then to a
fixed size, and the result says which and why. ``onnx``/``onnxruntime`` are the optional ``export`` extra.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError
from segkit.models.blocks import main_logits

log = logging.getLogger("segkit")


class LogitsOnly(nn.Module):
    """Exports see one output tensor: the ``out`` of nets that return a dict (auxiliary heads dropped)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return main_logits(self.net(images))


@dataclass
class ExportResult:
    path: Path
    format: str
    dynamic: str  # "batch+spatial", "batch" or "fixed"
    input_shape: tuple[int, ...]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # shape -> largest |export - PyTorch|
    note: str = ""

    def summary(self) -> str:
        diffs = ", ".join(f"{shape}: {diff:.2e}" for shape, diff in self.max_abs_diff.items()) or "not checked"
        text = f"{self.format} -> {self.path} (dynamic axes: {self.dynamic}; max |diff| vs PyTorch: {diffs})"
        return text + (f"\n  note: {self.note}" if self.note else "")


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise SegkitError("onnxruntime is not installed; pip install -e '.[export]' (or check=false)") from err
    return onnxruntime


def _odd(shape: Sequence[int]) -> tuple[int, ...]:
    """The trace input for dynamic sizes: odd H and W, so pad-to-a-multiple branches inside nets run and are
    recorded with size arithmetic rather than skipped (an even example size would freeze 'no padding')."""
    b, c, h, w = shape
    return b, c, h | 1, w | 1


def _other_shape(shape: Sequence[int], dynamic: str) -> tuple[int, ...] | None:
    """A second input shape that exercises the dynamic axes (odd spatial sizes catch frozen padding)."""
    b, c, h, w = shape
    if dynamic == "batch+spatial":
        return b + 1, c, h + 13, w + 7
    if dynamic == "batch":
        return b + 1, c, h, w
    return None


@torch.no_grad()
def onnx_max_diffs(path: Path, net: nn.Module, shapes: Sequence[Sequence[int]]) -> tuple[dict[str, float | str], float]:
    """Per input shape, the largest |onnxruntime - PyTorch| logit difference on a random input (or why it
    failed), and the largest |logit| seen, the scale float32 rounding grows with.

    One session serves all shapes: loading a large model (FCN-8s is 0.5 GB) dominates the check.
    """
    ort = _require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = LogitsOnly(net).eval()
    out: dict[str, float | str] = {}
    scale = 0.0
    for seed, shape in enumerate(shapes):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        expected = model(x).float().numpy()
        scale = max(scale, float(np.abs(expected).max()))
        try:
            (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        except Exception as err:
            out[_fmt(shape)] = f"onnxruntime failed ({type(err).__name__})"
            continue
        out[_fmt(shape)] = (
            float(np.abs(got - expected).max())
            if got.shape == expected.shape
            else f"output {got.shape} instead of {expected.shape}"
        )
    return out, scale


@contextmanager
def _traceable_unpool() -> Iterator[None]:
    """torch's max-unpool output-size check rejects the traced (tensor) sizes the exporters see (ENet,
    SegNet); skip it for tensors while tracing, keep it for plain ints."""
    original = getattr(F, "_check_unpool_output_size", None)
    if original is None:
        yield
        return

    def check(output_size, dim: int) -> None:
        if not isinstance(output_size[dim], torch.Tensor):
            original(output_size, dim)

    F._check_unpool_output_size = check
    try:
        yield
    finally:
        F._check_unpool_output_size = original


def _max_unpool2d_onnx(g, values, indices, output_size):
    """``aten::max_unpool2d`` for the TorchScript-based exporter, which has none: scatter each plane's values
    to their per-plane flat indices (what PyTorch's indices are) in a zero tensor of ``output_size``."""
    from torch.onnx import symbolic_helper as sh

    def const(v):
        return g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))

    if sh._is_packed_list(output_size):
        hw = [g.op("Reshape", v, const([1])) for v in sh._unpack_list(output_size)]
    else:
        hw = [const([int(v)]) for v in sh._maybe_get_const(output_size, "is")]
    nc = g.op("Slice", g.op("Shape", values), const([0]), const([2]))
    plane = g.op("Mul", hw[0], hw[1])
    flat_shape = g.op("Concat", nc, const([-1]), axis_i=0)
    zeros = g.op("ConstantOfShape", g.op("Concat", nc, plane, axis_i=0), value_t=torch.zeros(1, dtype=torch.float32))
    scattered = g.op(
        "ScatterElements", zeros, g.op("Reshape", indices, flat_shape), g.op("Reshape", values, flat_shape), axis_i=2
    )
    return g.op("Reshape", scattered, g.op("Concat", nc, hw[0], hw[1], axis_i=0))


def _export_onnx_once(model: nn.Module, x: torch.Tensor, path: Path, dynamic: str, opset: int) -> None:
    torch.onnx.register_custom_op_symbolic("aten::max_unpool2d", _max_unpool2d_onnx, opset)
    axes = {"batch+spatial": {0: "batch", 2: "height", 3: "width"}, "batch": {0: "batch"}, "fixed": {}}[dynamic]
    with warnings.catch_warnings(), _traceable_unpool():
        warnings.simplefilter("ignore")  # tracer warnings are what the verification step checks for real
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes} if axes else None,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_onnx(
    net: nn.Module,
    path: str | Path,
    shape: Sequence[int] = (1, 3, 512, 512),
    opset: int = 17,
    dynamic: str = "batch+spatial",
    check: bool = True,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export ``net`` to ONNX at ``shape`` (B, C, H, W), with the most dynamic axes that verify.

    ``dynamic``: the most wanted of ``batch+spatial``, ``batch``, ``fixed``. With ``check``, each candidate is
    compared with PyTorch at ``shape`` and at a second shape; the first within ``tolerance`` (relative to the
    logits' magnitude where that exceeds 1) is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly(net).eval()
    shape = tuple(int(s) for s in shape)
    levels = ["batch+spatial", "batch", "fixed"]
    if dynamic not in levels:
        raise SegkitError(f"dynamic={dynamic!r}; use one of {levels}")
    failures: list[str] = []
    for level in levels[levels.index(dynamic) :]:
        try:
            example = torch.randn(*(_odd(shape) if level == "batch+spatial" else shape))
            _export_onnx_once(model, example, path, level, opset)
        except Exception as err:  # an op the exporter cannot write: nothing smaller will help
            raise SegkitError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0]}") from err
        result = ExportResult(path, "onnx", level, shape)
        if not check:
            return result
        other = _other_shape(shape, level)
        diffs, scale = onnx_max_diffs(path, net, [shape] + ([other] if other else []))
        errors = {k: v for k, v in diffs.items() if isinstance(v, str)}
        worst = max((v for v in diffs.values() if not isinstance(v, str)), default=float("inf"))
        if level != "fixed" and (errors or worst > tolerance * max(1.0, scale)):
            why = "; ".join(f"{k}: {v}" for k, v in errors.items()) or f"max |diff| {worst:.2e}"
            failures.append(f"{level} axes fail ({why})")
            continue
        if errors:
            raise SegkitError(f"the ONNX model does not run in onnxruntime: {errors}")
        result.max_abs_diff = {k: float(v) for k, v in diffs.items()}
        if failures:
            fixed = {"batch": f"spatial size {shape[2]}x{shape[3]}", "fixed": f"shape {_fmt(shape)}"}.get(level)
            result.note = f"exported with {level} axes: {'; '.join(failures)}" + (
                f"; feed inputs of {fixed}" if fixed else ""
            )
        return result
    raise AssertionError("unreachable")


@torch.no_grad()
def export_torchscript(
    net: nn.Module, path: str | Path, shape: Sequence[int] = (1, 3, 512, 512), check: bool = True
) -> ExportResult:
    """``torch.jit.trace`` of the logits; checked at ``shape`` and at a second size (tracing may freeze sizes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly(net).eval()
    shape = tuple(int(s) for s in shape)
    with warnings.catch_warnings(), _traceable_unpool():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(*_odd(shape)), check_trace=False)
    traced.save(str(path))
    result = ExportResult(path, "torchscript", "batch+spatial", shape)
    if not check:
        return result
    loaded = torch.jit.load(str(path))
    for seed, s in enumerate((shape, _other_shape(shape, "batch+spatial"))):
        x = torch.randn(*s, generator=torch.Generator().manual_seed(seed))
        try:
            got = loaded(x)
            diff = float((got - model(x)).abs().max()) if got.shape == model(x).shape else float("inf")
        except Exception as err:
            diff = float("inf")
            result.note = f"fails at {_fmt(s)}: {type(err).__name__}"
        result.max_abs_diff[_fmt(s)] = diff
    if result.max_abs_diff[_fmt(_other_shape(shape, "batch+spatial"))] > 1e-4:
        result.dynamic = "fixed"
        result.note = result.note or f"tracing froze the input size; feed inputs of size {_fmt(shape)[1:]}"
    return result


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)
