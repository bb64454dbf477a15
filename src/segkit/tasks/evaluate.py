"""What ``src/eval.py`` runs: score a loaded model on a split with an inference mode, write the report.

The data comes from the checkpoint's own run config unless a ``data=`` group is chosen; either way the net is
applied with its checkpoint's input spec (normalisation, eval size), so ``python src/eval.py ckpt=...`` scores
exactly what training validated, whatever data group, folder or split it is pointed at.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from segkit import SegkitError
from segkit.build import build_datamodule
from segkit.data.datamodule import SegmentationDataModule
from segkit.data.labels import LabelTable
from segkit.data.pipeline import collate_eval, same_size_groups
from segkit.inference import Inference, at_label_size, mode_for, predict_probs, resolve_device
from segkit.loading import LoadedModel, load_model
from segkit.metrics import MEAN_SCORES, SegmentationMetrics, flat_scores, scores_from_confusion
from segkit.precision import settle_inference_precision
from segkit.safe_config import build_stored_data, import_user_modules
from segkit.visualize import colorize, save_confusion_png

log = logging.getLogger("segkit")


def datamodule_for(
    model: LoadedModel, chosen: DictConfig | None = None, data_root: str | None = None
) -> SegmentationDataModule:
    """The ``chosen`` data config (a ``data=`` group), else the one the model was trained with; ``data_root``
    re-points its folder. Its label table must have the model's classes; the model's input spec replaces the data
    config's (``adopt_input``)."""
    if chosen:  # the user's own data= group: their config, built by Hydra
        data_cfg = OmegaConf.create(OmegaConf.to_container(chosen, resolve=True))
        if data_root:
            data_cfg.root = str(data_root)
        datamodule = build_datamodule(OmegaConf.create({"data": data_cfg}))
        datamodule.adopt_input(model.spec)
        return datamodule
    if model.config.get("data"):  # the checkpoint's own: inert data, mapped onto segkit's data classes only
        return build_stored_data(model.config["data"], f"checkpoint '{model.path}'", model.spec, root=data_root)
    raise SegkitError("the checkpoint stores no data config; choose one, e.g. data=camvid data.root=...")


def sample_names(dataset: Any, count: int) -> list[str]:
    """File stems of the split's images where the dataset lists files, else zero-padded indices."""
    inner = getattr(dataset, "dataset", dataset)
    pairs = getattr(inner, "pairs", None)
    if pairs is not None and len(pairs) == count:
        stems = [Path(p[0]).stem for p in pairs]
        if len(set(stems)) == count:
            return stems
    return [f"{i:06d}" for i in range(count)]


class MaskWriter:
    """Writes each predicted mask as train-id PNG, colour PNG and (where the model knows the dataset's own ids,
    e.g. Cityscapes labelIds) label-id PNG: files to score or submit (``predict``'s ``OverlayWriter`` draws for
    people instead)."""

    def __init__(self, folder: Path, formats: Sequence[str], model: LoadedModel, labels: LabelTable) -> None:
        import cv2

        self.cv2, self.folder, self.colors = cv2, folder, model.spec.colors
        self.formats = [f for f in formats]
        unknown = set(self.formats) - {"train_ids", "color", "label_ids"}
        if unknown:
            raise SegkitError(f"prediction_formats {sorted(unknown)} unknown; use train_ids, color, label_ids")
        # the data's own table: the one its masks were read with (eval on another data group may use other ids)
        self.to_label_ids = labels.to_source_ids if any(labels.source_ids) else None
        if "label_ids" in self.formats and self.to_label_ids is None:
            log.warning(f"checkpoint '{model.path}' stores no source ids; skipping label-id PNGs")
            self.formats.remove("label_ids")
        for fmt in self.formats:
            (folder / fmt).mkdir(parents=True, exist_ok=True)

    def write(self, name: str, pred: np.ndarray) -> None:
        cv2 = self.cv2
        if "train_ids" in self.formats:
            cv2.imwrite(str(self.folder / "train_ids" / f"{name}.png"), pred.astype(np.uint8))
        if "color" in self.formats:
            cv2.imwrite(
                str(self.folder / "color" / f"{name}.png"), cv2.cvtColor(colorize(pred, self.colors), cv2.COLOR_RGB2BGR)
            )
        if "label_ids" in self.formats:
            ids = np.asarray(self.to_label_ids(pred))
            cv2.imwrite(
                str(self.folder / "label_ids" / f"{name}.png"),
                ids.astype(np.uint16 if ids.max(initial=0) > 255 else np.uint8),
            )


def iou_table(scores: Mapping[str, Any], names: Sequence[str]) -> str:
    """Per-class IoU and accuracy as a markdown table, means last; '-' where a class never occurs."""

    def fmt(v: float) -> str:
        return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"

    lines = ["| class | IoU (%) | Acc (%) |", "|---|---:|---:|"]
    for name, iou, acc in zip(names, scores["IoU"].tolist(), scores["Acc"].tolist(), strict=True):
        lines.append(f"| {name} | {fmt(iou)} | {fmt(acc)} |")
    lines.append(f"| **mean** | **{fmt(float(scores['mIoU']))}** | **{fmt(float(scores['mAcc']))}** |")
    lines.append("")
    lines.append(f"pixAcc {fmt(float(scores['pixAcc']))} %, fwIoU {fmt(float(scores['fwIoU']))} %")
    return "\n".join(lines) + "\n"


def _plain(v: float) -> float | None:
    return None if math.isnan(v) else v


def evaluate_from_config(cfg: DictConfig) -> dict[str, float]:
    """``conf/eval.yaml`` onto ``evaluate``'s arguments."""
    device = resolve_device(cfg.device)
    import_user_modules(cfg.get("imports"))
    model = load_model(cfg.ckpt, cfg.run_dir, map_location=device)
    precision = settle_inference_precision(cfg.precision, device, model)
    return evaluate(
        model,
        datamodule_for(model, cfg.get("data"), cfg.data_root),  # data: an optional group, absent by default
        split=str(cfg.split),
        mode=mode_for(model.spec, hydra.utils.instantiate(cfg.inference) if cfg.get("inference") else None),
        output_dir=Path(str(cfg.output_dir)),
        device=device,
        precision=precision,
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        prediction_formats=list(cfg.prediction_formats) if cfg.save_predictions else None,
        progress=bool(cfg.progress),
    )


def evaluate(
    model: LoadedModel,
    datamodule: SegmentationDataModule,
    *,
    split: str,
    mode: Inference,
    output_dir: Path,
    device: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    prediction_formats: Sequence[str] | None,
    progress: bool,
) -> dict[str, float]:
    """Score ``model`` on ``split`` of ``datamodule`` with inference ``mode``; write metrics.json, iou.md,
    confusion.png (and, with ``prediction_formats``, the predicted masks) to ``output_dir``. Returns flat metrics
    named like training's (``val/mIoU``, ``val/IoU/<class>``)."""
    dataset = datamodule.eval_dataset(split)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_eval)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = (
        MaskWriter(out_dir / "predictions", prediction_formats, model, datamodule.labels)
        if prediction_formats
        else None
    )
    names = sample_names(dataset, len(dataset))  # type: ignore[arg-type]
    log.info(f"evaluating {model.path} on {datamodule.name}/{split} ({len(names)} images) with {mode!r} on {device}")

    metrics = SegmentationMetrics(model.spec.num_classes, datamodule.ignore_index, model.spec.class_names).to(device)
    seen = 0
    for images, masks in tqdm(loader, desc=f"eval {split}", disable=not progress):
        for batch, targets in same_size_groups(images, masks):
            if batch.shape[1] != model.spec.in_channels:
                raise SegkitError(
                    f"data '{datamodule.name}' gives {batch.shape[1]}-channel images but checkpoint '{model.path}' "
                    f"takes {model.spec.in_channels}; evaluate on data with its channels (e.g. data.use_depth)"
                )
            try:
                probs = predict_probs(model.net, batch.to(device), mode, precision)
            except torch.OutOfMemoryError as err:
                raise SegkitError(
                    "out of GPU memory; use inference=slide, a smaller batch_size, or precision=fp16"
                ) from err
            targets = targets.to(device) if isinstance(targets, torch.Tensor) else [t.to(device) for t in targets]
            for scores, target in at_label_size(probs, targets):  # scored at the labels' own resolution
                preds = scores.argmax(1)
                metrics.update(preds, target)
                if writer is not None:
                    for pred in preds.cpu().numpy():
                        writer.write(names[seen], pred)
                        seen += 1

    confusion = metrics.confmat.detach().cpu()
    scores = scores_from_confusion(confusion)
    flat = flat_scores(scores, model.spec.class_names, split)
    report = {
        "checkpoint": str(model.path),
        "data": datamodule.name,
        "split": split,
        "images": len(names),
        "inference": repr(mode),
        **{k: float(scores[k]) for k in MEAN_SCORES},
        "IoU": {n: _plain(v) for n, v in zip(model.spec.class_names, scores["IoU"].tolist(), strict=True)},
        "Acc": {n: _plain(v) for n, v in zip(model.spec.class_names, scores["Acc"].tolist(), strict=True)},
        "confusion": confusion.tolist(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "iou.md").write_text(iou_table(scores, model.spec.class_names))
    save_confusion_png(confusion.numpy(), model.spec.class_names, out_dir / "confusion.png")
    log.info(
        f"{split}: mIoU={flat[f'{split}/mIoU']:.4f}  pixAcc={flat[f'{split}/pixAcc']:.4f}  "
        f"mAcc={flat[f'{split}/mAcc']:.4f}  fwIoU={flat[f'{split}/fwIoU']:.4f}"
    )
    log.info(f"report written to {out_dir} (metrics.json, iou.md, confusion.png{', predictions/' if writer else ''})")
    return flat
