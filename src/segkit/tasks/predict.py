"""What ``src/predict.py`` runs: segment images or videos of any size with a loaded model, write colour masks and
overlays.

Inputs are a file, a folder (searched recursively), a glob pattern or a video. Images of equal size are
batched together; every output has its input's size, whatever the net or inference mode.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from segkit import SegkitError
from segkit.data.datasets.base import IMAGE_SUFFIXES, read_image
from segkit.inference import Inference, mode_for, predict_probs, resolve_device
from segkit.loading import LoadedModel, load_model
from segkit.precision import settle_inference_precision
from segkit.safe_config import import_user_modules
from segkit.visualize import colorize, draw_legend, overlay, write_rgb

log = logging.getLogger("segkit")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def collect_inputs(spec: str) -> tuple[list[Path], Path]:
    """``spec`` (file, folder or glob) -> the media files, sorted, and the folder outputs are named relative to."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        media = {*IMAGE_SUFFIXES, *VIDEO_SUFFIXES}
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in media)
        base = path
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        base = Path(_common_parent(files)) if files else Path(".")
    else:
        raise SegkitError(f"input='{spec}' does not exist; give an image, a video, a folder or a glob like 'dir/*.png'")
    if not files:
        raise SegkitError(f"input='{spec}' matches no images or videos ({', '.join(sorted(IMAGE_SUFFIXES))}, ...)")
    return files, base


def _common_parent(files: Sequence[Path]) -> str:
    import os

    return os.path.commonpath([str(p.resolve().parent) for p in files])


class Predictor:
    """Turns RGB uint8 images into train-id maps with a loaded model, an inference mode (default: the model's own,
    ``mode_for``) and a device. Images are normalised by the model's input spec, exactly as eval reads them."""

    def __init__(self, model: LoadedModel, mode=None, device: torch.device | str = "cpu", precision: str = "fp32"):
        self.model, self.mode = model, mode_for(model.spec, mode)
        self.device, self.precision = torch.device(device), precision

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Equal-size H x W x 3 uint8 RGB images -> N x H x W uint8 train ids."""
        batch = torch.stack([self.model.spec.normalize(image) for image in images]).to(self.device)
        probs = predict_probs(self.model.net, batch, self.mode, self.precision)
        return probs.argmax(1).to(torch.uint8).cpu().numpy()


class OverlayWriter:
    """Writes ``<name>_mask.png`` (colours), ``<name>_overlay.png`` (blend + legend) and optionally
    ``<name>_ids.png`` (train ids) under ``folder``, mirroring the inputs' sub-folders: pictures for people
    (``evaluate``'s ``MaskWriter`` writes files to score instead)."""

    def __init__(self, folder: Path, model: LoadedModel, alpha: float, legend: str, save_ids: bool) -> None:
        if legend not in ("present", "all", "none"):
            raise SegkitError(f"legend={legend!r}; use present, all or none")
        self.folder, self.model, self.alpha, self.legend, self.save_ids = folder, model, alpha, legend, save_ids

    def render(self, image: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = colorize(ids, self.model.spec.colors)
        blended = overlay(image, mask, self.alpha)
        if self.legend != "none":
            classes = (
                None if self.legend == "all" else [int(c) for c in np.unique(ids) if c < self.model.spec.num_classes]
            )
            blended = draw_legend(blended, self.model.spec.class_names, self.model.spec.colors, classes)
        return mask, blended

    def write(self, relative: Path, image: np.ndarray, ids: np.ndarray) -> None:
        stem = self.folder / relative.parent / relative.stem
        stem.parent.mkdir(parents=True, exist_ok=True)
        mask, blended = self.render(image, ids)
        write_rgb(f"{stem}_mask.png", mask)
        write_rgb(f"{stem}_overlay.png", blended)
        if self.save_ids:
            cv2.imwrite(f"{stem}_ids.png", ids)


def _batches(files: Sequence[Path], batch_size: int) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Consecutive images of the same size, at most ``batch_size`` at a time."""
    batch: list[tuple[Path, np.ndarray]] = []
    for path in files:
        image = read_image(path)
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((path, image))
    if batch:
        yield batch


def predict_video(
    path: Path, relative: Path, predictor: Predictor, writer: OverlayWriter, batch_size: int, progress: bool
) -> None:
    """Frames in batches -> ``<name>_mask.mp4`` and ``<name>_overlay.mp4`` at the video's size and frame rate."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SegkitError(f"cannot open video '{path}'; is it a video file OpenCV can decode?")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = writer.folder / relative.parent / relative.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, cv2.VideoWriter] = {}
    bar = tqdm(total=total, desc=path.name, unit="frame", disable=not progress)
    try:
        while True:
            frames = []
            for _ in range(batch_size):
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not frames:
                break
            for frame, ids in zip(frames, predictor(frames), strict=True):
                mask, blended = writer.render(frame, ids)
                if not outputs:
                    size = (frame.shape[1], frame.shape[0])
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    outputs = {
                        kind: cv2.VideoWriter(f"{stem}_{kind}.mp4", fourcc, fps, size) for kind in ("mask", "overlay")
                    }
                outputs["mask"].write(cv2.cvtColor(mask, cv2.COLOR_RGB2BGR))
                outputs["overlay"].write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
            bar.update(len(frames))
    finally:
        bar.close()
        capture.release()
        for out in outputs.values():
            out.release()


def predict_from_config(cfg: DictConfig) -> dict[str, float]:
    """``conf/predict.yaml`` onto ``predict``'s arguments."""
    if not cfg.input:
        raise SegkitError("no input given: pass input=<image | folder | 'glob/*.png' | video.mp4>")
    device = resolve_device(cfg.device)
    import_user_modules(cfg.get("imports"))
    model = load_model(cfg.ckpt, cfg.run_dir, map_location=device)
    return predict(
        model,
        str(cfg.input),
        Path(str(cfg.output)).expanduser(),
        mode=mode_for(model.spec, hydra.utils.instantiate(cfg.inference) if cfg.get("inference") else None),
        device=device,
        precision=settle_inference_precision(cfg.precision, device, model),
        batch_size=max(1, int(cfg.batch_size)),
        alpha=float(cfg.alpha),
        legend=str(cfg.legend),
        save_ids=bool(cfg.save_ids),
        progress=bool(cfg.progress),
    )


def predict(
    model: LoadedModel,
    inputs: str,
    out_dir: Path,
    *,
    mode: Inference | None,
    device: torch.device,
    precision: str,
    batch_size: int,
    alpha: float,
    legend: str,
    save_ids: bool,
    progress: bool,
) -> dict[str, float]:
    """Segment ``inputs`` (a file, folder, glob or video) with ``model``; masks and overlays go to ``out_dir``."""
    if model.spec.in_channels != 3:
        raise SegkitError(
            f"'{model.path}' takes {model.spec.in_channels}-channel inputs; "
            "predict reads RGB images only (use src/eval.py with its data config)"
        )
    files, base = collect_inputs(inputs)
    predictor = Predictor(model, mode, device, precision)
    mode = predictor.mode
    writer = OverlayWriter(out_dir, model, alpha, legend, save_ids)
    images = [f for f in files if f.suffix.lower() not in VIDEO_SUFFIXES]
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    log.info(f"predicting {len(images)} image(s) and {len(videos)} video(s) with {model.path} ({mode!r}) on {device}")
    with tqdm(total=len(images), desc="predict", unit="img", disable=not progress or not images) as bar:
        for batch in _batches(images, batch_size):
            for (path, image), ids in zip(batch, predictor([image for _, image in batch]), strict=True):
                writer.write(_relative(path, base), image, ids)
            bar.update(len(batch))
    for video in videos:
        predict_video(video, _relative(video, base), predictor, writer, batch_size, progress)
    log.info(f"wrote masks and overlays to {out_dir}")
    return {"images": float(len(images)), "videos": float(len(videos))}


def _relative(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:
        return Path(path.name)
