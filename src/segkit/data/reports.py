"""Dataset reports for the dataset scripts (``dataset_stats``, ``browse_dataset``, ``loading_speed``): a datamodule
from config overrides, image sizes and per-class pixel statistics, a browse grid of overlays (drawn by
``segkit.visualize``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset

from segkit import SegkitError
from segkit.data.class_weights import ClassCounts, count_pixels, enet_weights, median_freq_weights
from segkit.data.labels import LabelTable
from segkit.visualize import colorize, legend_strip
from segkit.visualize import overlay as blend


def compose_datamodule(overrides: Sequence[str], config_name: str = "train"):
    """``SegmentationDataModule`` of ``conf/<config_name>.yaml`` + overrides, outside a Hydra run. A mistaken
    override or data config is a ``SegkitError`` of one line, as for the entry points (``segkit.config_errors``)."""
    from segkit.build import build_datamodule, compose
    from segkit.config_errors import explain_config_error

    try:
        return build_datamodule(compose(config_name, list(overrides)))
    except SegkitError:
        raise
    except Exception as err:
        line = explain_config_error(err, list(overrides), lambda items: compose(config_name, items))
        if line is None:
            raise
        raise SegkitError(line) from None


def image_sizes(dataset: Dataset, limit: int | None = None) -> Counter:
    """(height, width) -> number of images among the first ``limit``; file datasets read headers only."""
    from PIL import Image

    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    sizes: Counter = Counter()
    pairs = getattr(dataset, "pairs", None)
    for i in range(n):
        if pairs is not None:
            try:
                with Image.open(pairs[i][0]) as image:
                    w, h = image.size
            except OSError as err:  # PIL's UnidentifiedImageError among them
                raise SegkitError(
                    f"cannot read image '{pairs[i][0]}' ({type(err).__name__}): the file is empty, cut short or not "
                    "an image; replace or remove it"
                ) from None
        else:
            h, w = dataset[i][0].shape[:2]
        sizes[(int(h), int(w))] += 1
    return sizes


def stats_table(counts: ClassCounts, labels: LabelTable) -> str:
    """Per-class pixel share with the ENet and median-frequency weights, as a text table."""
    share = counts.share
    enet, median = enet_weights(counts), median_freq_weights(counts)
    width = max(len(n) for n in labels.names) + 2
    lines = [f"{'id':>3}  {'class':<{width}}{'pixels':>14}{'share %':>10}{'enet':>9}{'med_freq':>10}"]
    for k, name in enumerate(labels.names):
        lines.append(
            f"{k:>3}  {name:<{width}}{counts.pixels[k]:>14,}{100 * share[k]:>10.2f}{enet[k]:>9.3f}{median[k]:>10.3f}"
        )
    return "\n".join(lines)


def dataset_report(dataset: Dataset, labels: LabelTable, limit: int | None = None) -> tuple[str, ClassCounts]:
    """The ``dataset_stats`` report: images, sizes, per-class pixel share (labelled pixels only)."""
    counts = count_pixels(dataset, labels.num_classes, labels.ignore_index, limit=limit)
    sizes = image_sizes(dataset, limit)
    ignored = _ignored_share(counts, sizes)
    size_text = ", ".join(f"{w}x{h}: {n}" for (h, w), n in sizes.most_common(8))
    head = [
        f"images: {len(dataset)}"
        + (f" (statistics over the first {counts.images})" if counts.images < len(dataset) else ""),  # type: ignore[arg-type]
        f"sizes (WxH): {size_text}" + (" ..." if len(sizes) > 8 else ""),
        f"classes: {labels.num_classes} (table '{labels.name}'), ignored pixels: {100 * ignored:.2f}%",
        "",
    ]
    return "\n".join(head) + stats_table(counts, labels), counts


def _ignored_share(counts: ClassCounts, sizes: Counter) -> float:
    total = sum(h * w * n for (h, w), n in sizes.items())
    return max(0.0, 1.0 - counts.pixels.sum() / total) if total else 0.0


def overlay(image: np.ndarray, mask: np.ndarray, labels: LabelTable, alpha: float = 0.5) -> np.ndarray:
    """RGB image with the mask's class colours blended in; ignore pixels left as they are."""
    return blend(image, colorize(mask, labels.colors), alpha, keep=mask == labels.ignore_index)


def browse_grid(
    dataset: Dataset,
    labels: LabelTable,
    indices: Sequence[int],
    cols: int = 4,
    tile_width: int = 320,
    alpha: float = 0.5,
) -> np.ndarray:
    """A grid of overlays (RGB uint8) with a legend of the classes that occur in it underneath."""
    tiles, seen = [], set()
    for i in indices:
        image, mask = dataset[i]
        seen |= {int(v) for v in np.unique(mask) if v != labels.ignore_index}
        tile = overlay(image, mask, labels, alpha)
        h = max(1, round(tile.shape[0] * tile_width / tile.shape[1]))
        tile = cv2.resize(tile, (tile_width, h), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"#{i}", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(tile)
    tile_h = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * tile_h, cols * tile_width, 3), 255, dtype=np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, cols)
        grid[r * tile_h : r * tile_h + tile.shape[0], c * tile_width : (c + 1) * tile_width] = tile
    return np.concatenate([grid, legend_strip(labels.names, labels.colors, sorted(seen), grid.shape[1])], axis=0)
