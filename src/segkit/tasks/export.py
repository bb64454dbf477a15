"""What ``src/export.py`` runs: a loaded model (or an untrained ``model=NAME``) to ONNX and/or TorchScript,
checked against PyTorch (the exporters are ``segkit.exporters``)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from segkit import SegkitError
from segkit.build import build_net
from segkit.exporters import export_onnx, export_torchscript
from segkit.loading import load_model
from segkit.safe_config import import_user_modules

log = logging.getLogger("segkit")

FORMATS = {"onnx": ["onnx"], "torchscript": ["torchscript"], "both": ["onnx", "torchscript"]}


def export_from_config(cfg: DictConfig) -> dict[str, float]:
    """``conf/export.yaml`` onto ``export``'s arguments: the net of ``ckpt``/``run_dir``, else an untrained
    ``model`` group with ``num_classes``/``in_channels``."""
    if cfg.ckpt or cfg.run_dir:
        import_user_modules(cfg.get("imports"))
        loaded = load_model(cfg.ckpt, cfg.run_dir)
        net, in_channels = loaded.net, loaded.spec.in_channels
        name = loaded.path.stem if loaded.path else "model"
        size = loaded.spec.eval_size or loaded.spec.crop_size or (512, 512)
    elif cfg.get("model"):  # an optional group, absent by default
        in_channels = int(cfg.in_channels)
        net = build_net(cfg.model, int(cfg.num_classes), in_channels, for_weights=True)  # untrained: no download
        name = str(cfg.model._target_).rsplit(".", 1)[-1].lower()
        size = (512, 512)
        log.info(f"exporting an untrained {cfg.model._target_} ({cfg.num_classes} classes)")
    else:
        raise SegkitError("nothing to export: pass ckpt=path/to/file.ckpt or model=<name from conf/model>")
    return export(
        net,
        Path(str(cfg.output)) if cfg.output else Path(str(cfg.output_dir)) / name,
        format=str(cfg.format),
        shape=(int(cfg.batch), in_channels, int(cfg.height or size[0]), int(cfg.width or size[1])),
        opset=int(cfg.opset),
        dynamic=str(cfg.dynamic),
        check=bool(cfg.check),
        tolerance=float(cfg.tolerance),
    )


def export(
    net: nn.Module,
    output: Path,
    *,
    format: str,
    shape: tuple[int, int, int, int],
    opset: int,
    dynamic: str,
    check: bool,
    tolerance: float,
) -> dict[str, float]:
    """``net`` to ``format`` (onnx, torchscript or both) at example ``shape`` (B, C, H, W); ``output`` is the file
    (its suffix replaced per format when there are two). Returns the largest difference from PyTorch per format."""
    formats = FORMATS.get(format)
    if formats is None:
        raise SegkitError(f"format={format}; use onnx, torchscript or both")
    net = net.eval().cpu()
    metrics: dict[str, float] = {}
    for fmt in formats:
        suffix = ".onnx" if fmt == "onnx" else ".pt"
        path = output.with_suffix(suffix) if len(formats) > 1 or not output.suffix else output
        if fmt == "onnx":
            result = export_onnx(net, path, shape, opset, dynamic, check, tolerance)
        else:
            result = export_torchscript(net, path, shape, check)
        log.info(result.summary())
        worst = max(result.max_abs_diff.values(), default=0.0)
        if worst > tolerance:
            log.warning(f"{fmt}: largest difference {worst:.2e} exceeds tolerance {tolerance}")
        metrics[f"{fmt}/max_abs_diff"] = worst
    return metrics
