"""The input spec of a net: what it was trained to take and what it predicts, as one record.

Built once from the data config (``data.input`` + the label table + the image channels), it builds the transforms
(``train_transform(crop_size, mean, std, ignore_index)``, ``eval_transform()``), says how the net is applied to a
whole image (``inference()``: resized to ``eval_size``, or as is), and is stored in every checkpoint as
``checkpoint["segkit"]["input"]``. Evaluation and prediction read it back as is, whatever data group, folder or
split the user points them at, so they apply the net exactly as training validated it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

from segkit import SegkitError
from segkit.data.labels import LabelTable
from segkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeChannels, check_size

MAX_CLASSES = 4096
MAX_CHANNELS = 64
MAX_EVAL_SCORES = 2**28  # class scores of one image at eval_size (1 GiB in fp32): more is a typo or a hostile file
TABLE_KEYS = {"name", "classes", "ignore_ids", "ignore_colors", "ignore_index", "unknown"}  # LabelTable.to_config
CLASS_KEYS = {"name", "color", "ids", "source_colors"}
INPUT_KEYS = ("mean", "std", "crop_size", "eval_size")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """``labels``: the label table (names, colours, source ids, ignore index); ``in_channels``: image channels;
    ``mean`` / ``std``: per-channel normalisation of ``x / 255``; ``crop_size``: the training crop [h, w] (None:
    whole images); ``eval_size``: the [h, w] the net sees in validation, evaluation and prediction (None: the whole
    image as read). Scores and predictions are always at the labels' / input's own resolution."""

    labels: LabelTable
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_size: tuple[int, int] | None = None
    eval_size: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, input_cfg: Mapping | None, labels: LabelTable, in_channels: int) -> InputSpec:
        """``data.input`` (keys ``mean``, ``std``, ``crop_size``, ``eval_size``), checked key by key."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(input_cfg, DictConfig):
            input_cfg = OmegaConf.to_container(input_cfg, resolve=True)
        cfg = dict(input_cfg or {})
        unknown = sorted(set(cfg) - set(INPUT_KEYS))
        if unknown:
            raise SegkitError(f"data.input.{unknown[0]} is not an input-spec key; use {', '.join(INPUT_KEYS)}")
        return cls.checked(
            labels,
            in_channels,
            cfg.get("mean", IMAGENET_MEAN),
            cfg.get("std", IMAGENET_STD),
            cfg.get("crop_size"),
            cfg.get("eval_size"),
            where="data.input",
        )

    @classmethod
    def checked(
        cls,
        labels: LabelTable,
        in_channels: Any,
        mean: Any,
        std: Any,
        crop_size: Any,
        eval_size: Any,
        where: str,
    ) -> InputSpec:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or not 1 <= in_channels <= MAX_CHANNELS:
            raise SegkitError(f"{where}.in_channels={in_channels!r}; expected a whole number from 1 to {MAX_CHANNELS}")
        mean, std = _numbers(f"{where}.mean", mean), _numbers(f"{where}.std", std)
        if len(mean) != len(std) or len(mean) < in_channels:
            raise SegkitError(
                f"{where}.mean and {where}.std must each hold one value per input channel ({in_channels}); "
                f"got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise SegkitError(f"{where}.std={list(std)}; every entry must be positive")
        for key, size in (("crop_size", crop_size), ("eval_size", eval_size)):
            check_size(f"{where}.{key}", None if size is None else _as_list(size))
        scores = 0 if eval_size is None else int(eval_size[0]) * int(eval_size[1]) * labels.num_classes
        if scores > MAX_EVAL_SCORES:
            raise SegkitError(
                f"{where}.eval_size={list(eval_size)} with {labels.num_classes} classes makes {scores} class scores per "
                f"image (at most {MAX_EVAL_SCORES}); use a smaller eval_size, or inference=whole / inference.size=[h, w]"
            )
        if labels.num_classes > MAX_CLASSES:
            raise SegkitError(f"label table '{labels.name}' has {labels.num_classes} classes; at most {MAX_CLASSES}")
        return cls(
            labels=labels,
            in_channels=in_channels,
            mean=mean[:in_channels],
            std=std[:in_channels],
            crop_size=None if crop_size is None else (int(crop_size[0]), int(crop_size[1])),
            eval_size=None if eval_size is None else (int(eval_size[0]), int(eval_size[1])),
        )

    # -- the label table's facts, under the names every caller uses
    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def colors(self) -> tuple[tuple[int, int, int], ...]:
        return self.labels.colors

    @property
    def ignore_index(self) -> int:
        return self.labels.ignore_index

    # -- what the spec builds
    def train_transform(self, factory: Callable[..., Callable]) -> Callable:
        """The training pipeline: ``factory`` (``data.train_transform``, a ``_partial_`` of augmentation options)
        given the spec's crop size, normalisation and the table's ignore id (the fill of padded mask pixels)."""
        return factory(crop_size=self.crop_size, mean=self.mean, std=self.std, ignore_index=self.ignore_index)

    def eval_transform(self) -> A.Compose:
        """Validation, test, eval and predict: normalisation only. The resize to ``eval_size`` happens on the
        tensor (``inference()``), the same step in all of them, and the masks stay at their own resolution."""
        pipeline = self.__dict__.get("_eval_pipeline")  # built once per spec: predict normalises every image with it
        if pipeline is None:
            pipeline = A.Compose([NormalizeChannels(mean=self.mean, std=self.std), ToTensorV2()])
            object.__setattr__(self, "_eval_pipeline", pipeline)
        return pipeline

    def inference(self):
        """How the net is applied to a whole image: ``Resized(eval_size)``, or ``WholeImage()``."""
        from segkit.inference import Resized, WholeImage

        return Resized(self.eval_size) if self.eval_size is not None else WholeImage()

    def normalize(self, image: np.ndarray):
        """An H x W x C uint8 image -> the C x H x W float tensor the net takes (``eval_transform``)."""
        return self.eval_transform()(image=image)["image"]

    # -- the checkpoint record
    def to_record(self) -> dict[str, Any]:
        """Plain values only (stored in checkpoints; ``from_record`` gives this spec back)."""
        return {
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_size": None if self.crop_size is None else list(self.crop_size),
            "eval_size": None if self.eval_size is None else list(self.eval_size),
            "labels": self.labels.to_config(),
        }

    @classmethod
    def from_record(cls, record: Any, source: str) -> InputSpec:
        """A stored record (already plain data: ``safe_config.plain_data``), checked value by value. The label
        table must be stored expanded: a ``base`` (a path or a shipped name to read) is refused."""
        where = "segkit.input"
        if not isinstance(record, dict):
            raise SegkitError(f"{source}: {where} is a {type(record).__name__}, not the record segkit stores")
        unknown = sorted(set(record) - {"in_channels", "labels", *INPUT_KEYS})
        missing = sorted({"in_channels", "labels", *INPUT_KEYS} - set(record))
        if unknown or missing:
            raise SegkitError(f"{source}: {where} has keys {unknown} it should not, lacks {missing}")
        labels = _stored_table(record["labels"], source, f"{where}.labels")
        try:
            return cls.checked(
                labels,
                record["in_channels"],
                record["mean"],
                record["std"],
                record["crop_size"],
                record["eval_size"],
                where=where,
            )
        except SegkitError as err:
            raise SegkitError(f"{source}: {err}") from None


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _numbers(key: str, value: Any) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_CHANNELS
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    if not ok:
        raise SegkitError(f"{key}={value!r}; expected a list of numbers, one per input channel")
    return tuple(float(v) for v in value)


def _ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 65535 for i in value
    )


def _stored_table(table: Any, source: str, where: str) -> LabelTable:
    """A stored, expanded label table -> ``LabelTable``; any malformed value is one line naming the record."""
    if not isinstance(table, dict) or not isinstance(table.get("classes"), list):
        raise SegkitError(f"{source}: {where} is not an expanded label table (a mapping with 'classes')")
    if "base" in table:
        raise SegkitError(f"{source}: {where}.base is not allowed: a stored table is stored expanded")
    extra = sorted(set(table) - TABLE_KEYS)
    if extra:
        raise SegkitError(
            f"{source}: {where}.{extra[0]} is not a key of an expanded table ({', '.join(sorted(TABLE_KEYS))})"
        )
    if len(table["classes"]) > MAX_CLASSES:
        raise SegkitError(f"{source}: {where} lists {len(table['classes'])} classes; at most {MAX_CLASSES}")
    for entry in table["classes"]:
        if not isinstance(entry, dict) or set(entry) - CLASS_KEYS or not isinstance(entry.get("name"), str):
            raise SegkitError(f"{source}: {where}.classes entries must be {{name, color, ids, source_colors}} mappings")
        if not _ids(entry.get("ids", [])):
            raise SegkitError(f"{source}: {where}.classes ids must be lists of ids from 0 to 65535")
    if not _ids(table.get("ignore_ids", [])):
        raise SegkitError(f"{source}: {where}.ignore_ids must be a list of ids from 0 to 65535")
    ignore = table.get("ignore_index", 255)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 255:
        raise SegkitError(f"{source}: {where}.ignore_index={ignore!r}; expected a whole number from 0 to 255")
    try:
        return LabelTable.from_config(table)
    except SegkitError as err:
        raise SegkitError(f"{source}: {where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a wrong value type in someone else's file: one line
        message = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise SegkitError(f"{source}: {where} cannot be read: {type(err).__name__}: {message}") from None
