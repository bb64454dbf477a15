"""Pictures of masks: palettes, colour masks, alpha overlays, class legends and the confusion-matrix figure.

The only place segkit draws: label tables (default colours), the dataset reports (browse grid), eval, predict
and the W&B dashboard all use these. Pure NumPy/OpenCV on H x W x 3 uint8 RGB arrays; matplotlib is imported
only by ``confusion_figure``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC palette (n x 3 uint8): index i's colour interleaves i's bits over R, G, B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def default_color(k: int) -> tuple[int, int, int]:
    """A distinct colour for train id ``k`` of a table that gives none: VOC's colour of ``k + 1`` (0 is black)."""
    r, g, b = voc_palette(k + 2)[k + 1]
    return int(r), int(g), int(b)


def colorize(ids: np.ndarray, colors: Sequence[Sequence[int]], ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Train ids (H x W) -> RGB uint8; ids outside ``0..len(colors)-1`` (ignore) get ``ignore_color``."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:] = np.asarray(ignore_color, dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    ids = np.asarray(ids)
    safe = np.where((ids >= 0) & (ids < len(colors)), ids, 255).astype(np.int64)
    return palette[safe]


def overlay(
    image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5, keep: np.ndarray | None = None
) -> np.ndarray:
    """Alpha-blend a colour mask over an RGB image of the same size: ``(1 - alpha) * image + alpha * mask``;
    pixels where ``keep`` (H x W bool, e.g. ignore pixels) is true stay as in the image. Extra image channels
    (depth) are dropped."""
    image = image[..., :3]
    if image.shape[:2] != color_mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {color_mask.shape[:2]} differ in size")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color_mask.astype(np.float32)
    out = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return np.where(keep[..., None], image, out) if keep is not None else out


def draw_legend(
    image: np.ndarray,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    classes: Sequence[int] | None = None,
    scale: float | None = None,
) -> np.ndarray:
    """A copy of ``image`` with a box of colour swatches and class names in the top-left corner.

    ``classes`` picks which train ids to list (e.g. those present in the mask); all by default. The text
    scales with the image height so the legend stays readable on small and large images.
    """
    out = image.copy()
    classes = list(range(len(names))) if classes is None else [int(c) for c in classes]
    if not classes:
        return out
    scale = scale if scale is not None else max(0.3, min(1.0, image.shape[0] / 720))
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    line = int(22 * scale) + 4
    swatch = line - 6
    text_w = max(cv2.getTextSize(names[c], font, 0.5 * scale * 1.6, thickness)[0][0] for c in classes)
    box_w, box_h = swatch + text_w + 16, line * len(classes) + 6
    h, w = out.shape[:2]
    box_w, box_h = min(box_w, w), min(box_h, h)
    region = out[:box_h, :box_w].astype(np.float32)
    out[:box_h, :box_w] = (0.35 * region).astype(np.uint8)
    for row, c in enumerate(classes):
        y = 4 + row * line
        if y + swatch > h:
            break
        color = tuple(int(v) for v in colors[c])
        cv2.rectangle(out, (4, y), (4 + swatch, y + swatch), color, thickness=-1)
        cv2.putText(
            out,
            names[c],
            (10 + swatch, y + swatch - 2),
            font,
            0.5 * scale * 1.6,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return out


def legend_strip(
    names: Sequence[str], colors: Sequence[Sequence[int]], classes: Sequence[int], width: int, entry_width: int = 200
) -> np.ndarray:
    """A white strip of colour swatches and ``<id> <name>`` entries for ``classes``, wrapped to ``width`` pixels
    (to put under a grid of images, where ``draw_legend`` would hide part of one)."""
    per_row = max(1, width // entry_width)
    rows = max(1, -(-len(classes) // per_row))
    strip = np.full((rows * 24 + 8, width, 3), 255, dtype=np.uint8)
    for n, k in enumerate(classes):
        r, c = divmod(n, per_row)
        x, y = c * entry_width + 8, r * 24 + 8
        cv2.rectangle(strip, (x, y), (x + 16, y + 16), tuple(int(v) for v in colors[k]), -1)
        cv2.rectangle(strip, (x, y), (x + 16, y + 16), (0, 0, 0), 1)
        cv2.putText(
            strip, f"{k} {names[k]}"[:24], (x + 22, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    return strip


def normalize_confusion(confusion: np.ndarray) -> np.ndarray:
    """Rows (true classes) scaled to sum to 1; rows of classes absent from the truth stay 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def confusion_figure(confusion: np.ndarray, names: Sequence[str], normalize: bool = True):
    """A matplotlib Figure of the confusion matrix (rows: truth, columns: prediction), row-normalised by default."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matrix = normalize_confusion(confusion) if normalize else np.asarray(confusion, dtype=np.float64)
    k = len(names)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    ax.set_xticks(range(k), labels=list(names), rotation=90)
    ax.set_yticks(range(k), labels=list(names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for t in range(k):
            for p in range(k):
                value = matrix[t, p]
                if value >= 0.005:
                    ax.text(
                        p,
                        t,
                        f"{value:.2f}" if normalize else f"{int(value)}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value > 0.5 * (matrix.max() or 1) else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def save_confusion_png(confusion: np.ndarray, names: Sequence[str], path, normalize: bool = True) -> None:
    import matplotlib.pyplot as plt

    fig = confusion_figure(confusion, names, normalize)
    fig.savefig(path)
    plt.close(fig)


def write_rgb(path, image: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG/JPEG (OpenCV wants BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write '{path}'")
