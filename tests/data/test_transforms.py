"""The training pipeline's crops: the class-focused crop and its fall-backs."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from segkit import SegkitError
from segkit.data.transforms import train_transforms


def scene(pole_columns: slice | None = slice(200, 202)) -> tuple[np.ndarray, np.ndarray]:
    """A 180x240 image whose mask is class 1 (class 0 in the top rows, class 3 on the left) except a thin two-pixel
    "pole" (class 2) near the right edge: only the focus class may draw the crop, not any non-zero class."""
    image = np.random.default_rng(0).integers(0, 255, (180, 240, 3), dtype=np.uint8)
    mask = np.ones((180, 240), np.uint8)
    mask[:20], mask[:, :60] = 0, 3
    if pole_columns is not None:
        mask[:, pole_columns] = 2
    return image, mask


def crops_holding(transform, image: np.ndarray, mask: np.ndarray, cls: int, n: int = 60) -> int:
    hits = 0
    for seed in range(n):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        assert tuple(out["mask"].shape) == (64, 64)
        hits += int((out["mask"] == cls).any())
    return hits


def test_focus_crop_holds_a_focus_pixel_as_often_as_asked():
    image, mask = scene()
    kwargs = dict(crop_size=(64, 64), scale_range=(1.0, 1.0), hflip=0.0, focus_classes=[2])
    always = crops_holding(train_transforms(**kwargs, focus_p=1.0), image, mask, 2)
    never = crops_holding(train_transforms(**kwargs, focus_p=0.0), image, mask, 2)
    half = crops_holding(train_transforms(**kwargs, focus_p=0.5), image, mask, 2)
    assert always == 60
    # a random 64-wide crop of 240 columns holds columns 200-201 for ~1/4 of the offsets
    assert never < 30
    assert never < half < always


def test_focus_crop_without_the_class_in_view_is_a_random_crop():
    image, mask = scene(pole_columns=None)
    transform = train_transforms(crop_size=(64, 64), scale_range=(1.0, 1.0), hflip=0.0, focus_classes=[2], focus_p=1.0)
    corners = set()
    for seed in range(20):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        corners.add(tuple(out["image"][:, 0, 0].tolist()))
    assert len(corners) > 10  # crops land in many places, not stuck at one corner


def test_focus_crop_is_a_function_of_the_seed():
    image, mask = scene()
    transform = train_transforms(crop_size=(64, 64), scale_range=(0.75, 1.5), focus_classes=[2], focus_p=0.5)
    for seed in (3, 11):
        transform.set_random_seed(seed)
        first = transform(image=image, mask=mask)
        transform.set_random_seed(seed)
        second = transform(image=image, mask=mask)
        assert (first["image"] == second["image"]).all() and (first["mask"] == second["mask"]).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(crop="resized", crop_size=(64, 64), focus_classes=[2]), "focus_classes needs crop=scale"),
        (dict(crop_size=None, focus_classes=[2]), "focus_classes needs crop=scale"),
        (dict(crop_size=(64, 64), focus_classes=[2], focus_p=1.5), "focus_p=1.5"),
        (dict(crop_size=(64, 64), focus_classes=[2], focus_p=None), "focus_p=None"),
        # the augmentation numbers: out of range, text, nan and bool are one line naming the key and the range
        (dict(crop_size=(64, 64), color_jitter=-0.2), r"color_jitter=-0.2; use a jitter strength from 0 to 1"),
        (dict(crop_size=(64, 64), color_jitter="abc"), r"color_jitter='abc'; use a jitter strength"),
        (dict(crop_size=(64, 64), color_jitter=float("nan")), r"color_jitter=nan; use"),
        (dict(crop_size=(64, 64), hflip=1.5), r"hflip=1.5; use a probability from 0 to 1"),
        (dict(crop_size=(64, 64), hflip=True), r"hflip=True; use a probability"),
        (dict(crop_size=(64, 64), rotate=-10), r"rotate=-10; use a largest angle in degrees from 0 to 180"),
        (dict(crop_size=(64, 64), focus_classes=[2, 255]), "holds the ignore id 255"),
    ],
)
def test_focus_crop_bad_settings_name_the_key(kwargs, words):
    with pytest.raises(SegkitError, match=words):
        train_transforms(**kwargs)


def test_focus_crops_have_the_input_specs_crop_size():
    """The crop size comes from data.input.crop_size alone, through the spec: FocusCrop and RandomCrop both cut it."""
    from segkit.data.input_spec import InputSpec
    from segkit.data.labels import load_table

    spec = InputSpec.from_config({"crop_size": [24, 32]}, load_table("camvid"), 3)
    image, mask = np.zeros((60, 80, 3), np.uint8), np.zeros((60, 80), np.uint8)
    mask[30, 40] = 2  # one pole pixel: the focus crop must hold it
    for focus in ([2], None):
        factory = functools.partial(train_transforms, focus_classes=focus, focus_p=1.0, scale_range=(1.0, 1.0))
        out = spec.train_transform(factory)(image=image, mask=mask)
        assert tuple(out["image"].shape) == (3, 24, 32) and out["mask"].shape == (24, 32)
        if focus:
            assert (out["mask"] == 2).any()


def test_focus_classes_and_pixel_shuffle_train_from_the_config(tmp_path):
    """Both new keys compose, train one batch through src/train.py's path, and unknown class ids are refused."""
    from omegaconf import open_dict

    from segkit.tasks.train import train
    from tests.conftest import compose_config

    overrides = [
        "data.dataset.num_samples={train: 4, val: 2, test: 2}",
        "data.dataset.height=32",
        "data.dataset.width=32",
        "data.batch_size=2",
        "data.input.crop_size=[32,32]",
        "+data.train_transform.focus_classes=[1]",
        "model.pixel_shuffle=2",
        "trainer.fast_dev_run=true",
        "extras.print_config=false",
        "callbacks.progress_bar=null",
        "test=false",
    ]
    cfg = compose_config("train", overrides, output_dir=tmp_path)
    metrics = train(cfg)
    assert metrics["train/loss"] > 0
    with open_dict(cfg):
        cfg.data.train_transform.focus_classes = [99]
    with pytest.raises(SegkitError, match=r"focus_classes has \[99\], not a train id"):
        train(cfg)
