"""The one LightningDataModule: a dataset family + a label table + albumentations pipelines."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import albumentations as A
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from segkit import SegkitError
from segkit.data.input_spec import InputSpec
from segkit.data.labels import LabelTable, load_table
from segkit.data.pipeline import DecodedCache, TransformedDataset, collate_eval
from segkit.data.samplers import SeededSampler, UnpaddedDistributedSampler
from segkit.data.transforms import check_focus_classes, train_transforms

SPEC_KEYS = ("crop_size", "mean", "std", "ignore_index")


def _train_factory(train_transform: Callable[..., Callable] | None) -> Callable[..., Callable]:
    """``data.train_transform``: a factory of the augmentation options (``train_transforms`` by default). The crop
    size, normalisation and mask fill come from the input spec and the label table, so a key for them here is
    refused in one line rather than silently overridden."""
    if train_transform is None:
        return train_transforms
    if isinstance(train_transform, (A.BaseCompose, A.BasicTransform)):
        raise SegkitError(
            "data.train_transform is a built pipeline; give a factory instead (_partial_: true), which segkit calls "
            "with the input spec's crop_size, mean, std and the label table's ignore_index"
        )
    given = sorted(set(getattr(train_transform, "keywords", {}) or {}) & set(SPEC_KEYS))
    if given:
        where = "the label table's ignore_index" if given[0] == "ignore_index" else f"data.input.{given[0]}"
        raise SegkitError(f"data.train_transform.{given[0]} is set by {where}; remove it from data.train_transform")
    return train_transform


class SegmentationDataModule(LightningDataModule):
    """Builds the train/val/test splits of one dataset family, remapped through one label table.

    Args:
        dataset: a factory ``dataset(split=..., labels=LabelTable) -> Dataset`` (a Hydra ``_partial_``).
        labels: the label table: its YAML mapping, a ``LabelTable``, a table YAML path or a shipped table's name.
        splits: stage -> the dataset's split name, e.g. ``{train: train, val: val, test: test}``.
        input: ``data.input``, the net's input spec (``mean``, ``std``, training ``crop_size``, ``eval_size``), or an
            ``InputSpec`` whose label table and channels must be this data's; ``self.spec`` is built from it once.
        train_transform: the augmentation pipeline's factory (a Hydra ``_partial_`` of ``train_transforms``, the
            default), called with the spec's crop size, mean/std and the table's ignore id. Validation and test use
            ``spec.eval_transform()`` (normalisation; the net sees ``eval_size`` through ``spec.inference()``).
        unknown_ids: ``error`` or ``ignore`` for mask values the table does not know (overrides the table).
        in_channels: the image channels the datasets return (3, or 4 for RGB-D); None: 4 with
            ``use_depth`` else 3.
        root: the dataset folder, passed to the factory (``data.root``); None for generated data.
        reduce_zero_label: overrides the table's (ADE20K: id 0 ignored, or trained as "other").
        use_depth: passed to the factory when set (SUN RGB-D's depth as a fourth channel).
        cache_mb: MiB of decoded samples each loading process keeps in memory (``DecodedCache``), per split; 0 reads
            every sample from its files each time.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        labels: Mapping | LabelTable | str,
        splits: Mapping[str, str | None] | None = None,
        input: Mapping | InputSpec | None = None,  # noqa: A002 - the config key users write: data.input
        train_transform: Callable[..., Callable] | None = None,
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
        cache_mb: float = 0,
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
        if isinstance(input, InputSpec):
            if input.labels.names != self.labels.names or input.in_channels != in_channels:
                raise SegkitError("the input spec's label table and channels must be the data's own")
            self.spec = dataclasses.replace(input, labels=self.labels)
        else:
            self.spec = InputSpec.from_config(input, self.labels, in_channels)
        self.train_transform = self.spec.train_transform(_train_factory(train_transform))
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers = num_workers
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, int | float) or not 0 <= cache_mb < math.inf:
            raise SegkitError(f"data.cache_mb={cache_mb}: give the MiB of decoded images to keep in memory, 0 for none")
        self.cache_mb = cache_mb
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed, self.in_channels, self.name, self.root = seed, in_channels, name, root
        self._datasets: dict[str, Dataset] = {}

    # the facts of the input spec the loss, the metrics and the net's head are built from
    num_classes = property(lambda self: self.spec.num_classes)
    class_names = property(lambda self: self.spec.class_names)
    ignore_index = property(lambda self: self.spec.ignore_index)

    def adopt_input(self, spec: InputSpec) -> None:
        """Evaluate a trained net on this data: its input spec (normalisation, eval size) replaces this config's,
        this data's label table stays (it reads this dataset's masks) but must have the net's classes."""
        if spec.num_classes != self.num_classes:
            raise SegkitError(
                f"the net predicts {spec.num_classes} classes but data '{self.name}' has {self.num_classes}; evaluate "
                "on the dataset it was trained on or pick a data= group with its label table"
            )
        if spec.class_names != self.class_names:
            raise SegkitError(
                f"the net was trained on classes {list(spec.class_names)} but data '{self.name}' (table "
                f"'{self.labels.name}') has {list(self.class_names)}; choose the label table it was trained with "
                "(data/labels=...)"
            )
        if spec.in_channels != self.in_channels:
            raise SegkitError(
                f"the net takes {spec.in_channels}-channel images but data '{self.name}' gives {self.in_channels}"
            )
        self.spec = dataclasses.replace(spec, labels=self.labels)
        self._datasets = {k: v for k, v in self._datasets.items() if k == "train"}

    def split_dataset(self, stage: str) -> Dataset:
        """The transformed dataset of ``stage`` (train / val / test), built once."""
        if stage not in self._datasets:
            split = self.splits.get(stage)
            if split is None:
                raise SegkitError(f"data.splits has no split for stage '{stage}'; set data.splits.{stage}=<name>")
            transform = self.train_transform if stage == "train" else self.spec.eval_transform()
            if stage == "train":
                check_focus_classes(self.train_transform, self.labels.num_classes, self.labels.name)
            raw = self.raw_dataset(stage)
            if self.cache_mb > 0:
                raw = DecodedCache(raw, self.cache_mb)
            self._datasets[stage] = TransformedDataset(raw, transform, full_mask=stage != "train")
        return self._datasets[stage]

    def eval_dataset(self, stage: str) -> Dataset:
        """``stage`` (the train split too) as evaluation reads it: the spec's eval transform, masks as read."""
        if stage != "train":
            return self.split_dataset(stage)
        return TransformedDataset(self.raw_dataset(stage), self.spec.eval_transform(), full_mask=True)

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
