"""The one LightningDataModule: a dataset family + a label table + albumentations pipelines."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import cv2
import numpy as np
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from segkit import SegkitError
from segkit.data.labels import LabelTable, load_table
from segkit.data.samplers import SeededSampler, UnpaddedDistributedSampler
from segkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeChannels, eval_transforms, train_transforms


class TransformedDataset(Dataset):
    """Applies an albumentations pipeline to ``(image, mask)`` and returns ``(float CxHxW, int64 HxW)``.

    Accepts an index or an ``(index, seed)`` pair from ``SeededSampler``; the seed fixes the augmentation.
    With ``full_mask`` (validation and test) the mask is returned as read, at its original size, whatever the
    transform does to the image: scores are computed at the labels' own resolution, the net's logits being
    resized back to the mask (``segkit.inference.at_label_size``). Eval transforms may therefore resize the
    image but must not crop or flip it.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None, full_mask: bool = False) -> None:
        self.dataset, self.transform, self.full_mask = dataset, transform, full_mask

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.dataset[index]
        original = mask
        mask = mask.astype(np.uint8)  # train ids < 256: OpenCV resizes/warps uint8 masks, not int64
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask = torch.as_tensor(np.asarray(original if self.full_mask else mask), dtype=torch.int64)
        return image, mask


def check_mask_fill(transform: Callable, ignore_index: int, table: str) -> None:
    """Padding and rotation must fill masks with the table's ignore id, or the filled border trains as a class."""
    for step in getattr(transform, "transforms", []):
        if hasattr(step, "pad_if_needed"):  # crops fill only when they pad
            pads = bool(step.pad_if_needed)
        else:  # PadIfNeeded, rotations, affine warps
            pads = getattr(step, "border_mode", None) == cv2.BORDER_CONSTANT
        fill = getattr(step, "fill_mask", None) if pads else None
        if fill is not None and not isinstance(fill, (list, tuple)) and int(fill) != ignore_index:
            raise SegkitError(
                f"data.train_transform fills masks with {int(fill)} ({type(step).__name__}) but label table "
                f"'{table}' ignores {ignore_index}; set data.train_transform.ignore_index={ignore_index}"
            )


def check_focus_classes(transform: Callable, num_classes: int, table: str) -> None:
    """``focus_classes`` are train ids of the table; one it does not have would silently never draw a crop."""
    for step in getattr(transform, "transforms", []):
        check_focus_classes(step, num_classes, table)  # FocusCrop sits inside OneOf
        unknown = [c for c in getattr(step, "classes", None) or [] if not 0 <= c < num_classes]
        if type(step).__name__ == "FocusCrop" and unknown:
            raise SegkitError(
                f"data.train_transform.focus_classes has {unknown}, not a train id of label table '{table}' "
                f"(0-{num_classes - 1}); list train ids, e.g. [2] for CamVid's pole"
            )


def collate_eval(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    """Stacks images and masks where they agree in size; otherwise keeps them as lists, so a batch may mix
    original sizes (full-resolution masks of a resized input, or whole images of different shapes)."""
    images, masks = zip(*batch, strict=True)

    def stack(items: tuple[torch.Tensor, ...]) -> torch.Tensor | list[torch.Tensor]:
        return torch.stack(items) if len({tuple(t.shape) for t in items}) == 1 else list(items)

    return stack(images), stack(masks)


def _normalization(transform: Callable | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of a pipeline's ``NormalizeChannels`` step (ImageNet's where it has none)."""
    for step in getattr(transform, "transforms", []):
        if isinstance(step, NormalizeChannels):
            return step.mean, step.std
    return IMAGENET_MEAN, IMAGENET_STD


def _crop_size(transform: Callable | None) -> list[int] | None:
    """``[height, width]`` of the crops a train pipeline feeds the net, or None where it trains on whole images."""
    for step in getattr(transform, "transforms", []):
        size = getattr(step, "size", None)  # RandomResizedCrop
        if size is None and type(step).__name__ in ("RandomCrop", "FocusCrop"):
            size = (step.height, step.width)
        if size is not None and type(step).__name__ in ("RandomCrop", "FocusCrop", "RandomResizedCrop"):
            return [int(size[0]), int(size[1])]
        inner = _crop_size(step) if getattr(step, "transforms", None) else None  # OneOf(FocusCrop, RandomCrop)
        if inner is not None:
            return inner
    return None


class SegmentationDataModule(LightningDataModule):
    """Builds the train/val/test splits of one dataset family, remapped through one label table.

    Args:
        dataset: a factory ``dataset(split=..., labels=LabelTable) -> Dataset`` (a Hydra ``_partial_``).
        labels: the label table: its YAML mapping, a ``LabelTable``, a table YAML path or a shipped table's name.
        splits: stage -> the dataset's split name, e.g. ``{train: train, val: val, test: test}``.
        train_transform / val_transform: albumentations pipelines (defaults: ``train_transforms()`` /
            ``eval_transforms()``).
        unknown_ids: ``error`` or ``ignore`` for mask values the table does not know (overrides the table).
        in_channels: the image channels the datasets return (3, or 4 for RGB-D); None: 4 with
            ``use_depth`` else 3.
        root: the dataset folder, passed to the factory (``data.root``); None for generated data.
        reduce_zero_label: overrides the table's (ADE20K: id 0 ignored, or trained as "other").
        use_depth: passed to the factory when set (SUN RGB-D's depth as a fourth channel).
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        labels: Mapping | LabelTable | str,
        splits: Mapping[str, str | None] | None = None,
        train_transform: Callable | None = None,
        val_transform: Callable | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        seed: int = 0,
        unknown_ids: str | None = None,
        in_channels: int | None = 3,
        name: str = "dataset",
        root: str | None = None,
        reduce_zero_label: bool | None = None,
        use_depth: bool | None = None,
    ) -> None:
        super().__init__()
        self.labels: LabelTable = load_table(labels, unknown=unknown_ids, reduce_zero_label=reduce_zero_label)
        if not 0 <= self.labels.ignore_index <= 255:
            raise SegkitError(
                f"label table '{self.labels.name}': ignore_index={self.labels.ignore_index}; masks travel through "
                f"the transforms as uint8, so use a value from {self.labels.num_classes} to 255 (255 is usual)"
            )
        expected = 4 if use_depth else 3
        if in_channels is None:
            in_channels = expected
        elif use_depth is not None and in_channels != expected:
            raise SegkitError(
                f"data.in_channels={in_channels} but data.use_depth={use_depth} gives {expected} "
                f"channels; leave data.in_channels=null"
            )
        self.use_depth = use_depth
        self.dataset_factory = dataset
        self.splits = dict(splits or {"train": "train", "val": "val", "test": "test"})
        self.train_transform = (
            train_transform if train_transform is not None else train_transforms(ignore_index=self.ignore_index)
        )
        self.val_transform = val_transform if val_transform is not None else eval_transforms()
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed, self.in_channels, self.name, self.root = seed, in_channels, name, root
        self._datasets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def ignore_index(self) -> int:
        return self.labels.ignore_index

    def describe(self) -> dict:
        """What a model trained on this data needs to be used without it, as plain types: the label table (names,
        colours, source ids, ignore index) and the input format (channels, normalisation, training input size).
        The training module stores it in every checkpoint (``segkit.loading.LoadedModel`` reads it back)."""
        mean, std = _normalization(self.val_transform)
        return {
            "class_names": list(self.labels.names),
            "colors": [[int(c) for c in color] for color in self.labels.colors],
            "source_ids": [[int(i) for i in ids] for ids in self.labels.source_ids],
            "ignore_index": int(self.ignore_index),
            "in_channels": int(self.in_channels),
            "mean": list(mean),
            "std": list(std),
            "input_size": _crop_size(self.train_transform),
        }

    def split_dataset(self, stage: str) -> Dataset:
        """The transformed dataset of ``stage`` (train / val / test), built once."""
        if stage not in self._datasets:
            split = self.splits.get(stage)
            if split is None:
                raise SegkitError(f"data.splits has no split for stage '{stage}'; set data.splits.{stage}=<name>")
            transform = self.train_transform if stage == "train" else self.val_transform
            if stage == "train":
                check_mask_fill(self.train_transform, self.ignore_index, self.labels.name)
                check_focus_classes(self.train_transform, self.labels.num_classes, self.labels.name)
            self._datasets[stage] = TransformedDataset(self.raw_dataset(stage), transform, full_mask=stage != "train")
        return self._datasets[stage]

    def raw_dataset(self, stage: str) -> Dataset:
        """The untransformed dataset of ``stage``: ``(image, train-id mask)`` as read (class statistics, tools)."""
        if stage in self._datasets:
            return self._datasets[stage].dataset  # type: ignore[attr-defined]
        split = self.splits.get(stage)
        if split is None:
            raise SegkitError(f"data.splits has no split for stage '{stage}'; set data.splits.{stage}=<name>")
        options: dict = {"root": self.root} if self.root is not None else {}
        if self.use_depth is not None:
            options["use_depth"] = self.use_depth
        return self.dataset_factory(split=split, labels=self.labels, **options)

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split_stage in needed.get(stage or "fit", ["train", "val"]):
            self.split_dataset(split_stage)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset("train")
        world, rank = self._world()
        if len(dataset) // world < self.batch_size:  # type: ignore[arg-type]
            per = f" ({len(dataset) // world} per process of {world})" if world > 1 else ""  # type: ignore[arg-type]
            raise SegkitError(
                f"{self.name}: the train split '{self.splits.get('train')}' has {len(dataset)} images{per}, fewer "  # type: ignore[arg-type]
                f"than one batch of data.batch_size={self.batch_size}, and incomplete batches are dropped; "
                f"lower data.batch_size or add images"
            )
        sampler = SeededSampler(dataset, seed=self.seed, num_replicas=world, rank=rank, shuffle=True, drop_last=True)
        return self._loader(dataset, sampler, self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.split_dataset(stage)
        world, rank = self._world()
        sampler = UnpaddedDistributedSampler(dataset, world, rank)
        return self._loader(dataset, sampler, self.val_batch_size, collate_fn=collate_eval)

    def _loader(
        self, dataset: Dataset, sampler, batch_size: int, drop_last: bool = False, collate_fn=None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )
