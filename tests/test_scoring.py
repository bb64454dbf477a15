"""Scores at the labels' own resolution: a net that sees a resized image is scored against the full mask."""

from __future__ import annotations

import json
from functools import partial

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from segkit import SegkitError
from segkit.build import build_datamodule
from segkit.data.datamodule import SegmentationDataModule
from segkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segkit.losses import CrossEntropyLoss
from segkit.metrics import scores_from_confusion
from segkit.models.module import SegmentationModule
from segkit.tasks.evaluate import evaluate_from_config
from segkit.tasks.train import train
from tests.conftest import TINY, compose_config

COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
TABLE = {"name": "rgb", "classes": [{"name": n} for n in ("red", "green", "blue")], "ignore_ids": [255]}
RESIZE = (12, 17)


class Stripes(Dataset):
    """Images whose pixel colour is the class, in stripes 1-3 pixels wide that a downscale blurs; two sizes mix
    in one split, and a few pixels are void."""

    def __init__(self, split: str, labels) -> None:
        rng = np.random.default_rng(1 if split == "val" else 0)
        self.samples = []
        for i in range(5):
            h, w = (30, 41) if i % 2 else (35, 48)
            widths = rng.integers(1, 4, size=w)
            columns = np.repeat(rng.integers(0, 3, size=w), widths)[:w]
            mask = np.tile(columns, (h, 1)).astype(np.int64)
            mask[rng.integers(0, h, 3), rng.integers(0, w, 3)] = 255
            self.samples.append((COLORS[np.where(mask == 255, 0, mask)], mask))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]


def colour_net() -> nn.Module:
    """A 1x1 convolution that reads the class off the normalised colour: exact at full resolution."""
    net = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        net.bias.zero_()
    return net


def hand_scores(net: nn.Module, resize: tuple[int, int], downsampled_masks: bool) -> dict:
    """The same pipeline written out: normalise, bilinear resize, net, bilinear upsampling, argmax, one confusion."""
    confusion = np.zeros((3, 3), dtype=np.int64)
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    for image, mask in Stripes("val", None).samples:
        full = torch.from_numpy(((image - mean) / std).astype(np.float32).transpose(2, 0, 1))[None]
        x = F.interpolate(full, size=resize, mode="bilinear", align_corners=False)
        with torch.no_grad():
            logits = net(x)
        if downsampled_masks:
            target = cv2.resize(mask.astype(np.uint8), (resize[1], resize[0]), interpolation=cv2.INTER_NEAREST)
            pred = logits.argmax(1)[0].numpy()
        else:
            target = mask
            pred = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
        valid = target != 255
        np.add.at(confusion, (target[valid].astype(np.int64), pred[valid]), 1)
    return {k: float(v) for k, v in scores_from_confusion(torch.from_numpy(confusion)).items() if v.ndim == 0}


def validate(net: nn.Module, resize: tuple[int, int] | None, val_batch_size: int) -> dict:
    datamodule = SegmentationDataModule(
        dataset=Stripes, labels=TABLE, input={"eval_size": resize}, val_batch_size=val_batch_size
    )
    module = SegmentationModule(net, CrossEntropyLoss(), partial(torch.optim.SGD, lr=0.1), spec=datamodule.spec)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (result,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    return result


@pytest.mark.parametrize("val_batch_size", [1, 4])  # 4: a batch mixes two original sizes
def test_resized_input_is_scored_against_the_full_masks(val_batch_size):
    net = colour_net()
    full = validate(net, None, val_batch_size)
    assert full["val/mIoU"] == pytest.approx(1.0)  # the colour net is exact at full resolution
    resized = validate(net, RESIZE, val_batch_size)
    by_hand = hand_scores(net, RESIZE, downsampled_masks=False)
    for key in ("mIoU", "pixAcc", "mAcc", "fwIoU"):
        assert resized[f"val/{key}"] == pytest.approx(by_hand[key], abs=1e-6), key
    downsampled = hand_scores(net, RESIZE, downsampled_masks=True)
    assert abs(resized["val/mIoU"] - downsampled["mIoU"]) > 0.02  # what scoring at the input size would report
    assert resized["val/mIoU"] < 0.95


def test_eval_scores_a_resized_run_at_full_resolution(tmp_path):
    """src/eval.py scores like validation did, and writes its predictions at the masks' size."""
    run = tmp_path / "run"
    overrides = ["debug=limit", "test=false", "model=unet_small", "model.base_width=4", "model.depth=2"]
    metrics = train(compose_config("train", TINY + overrides + ["data.input.eval_size=[40,40]"], output_dir=run))
    out = tmp_path / "eval"
    cfg = compose_config(
        "eval",
        ["extras.print_config=false", "progress=false", f"ckpt={run / 'checkpoints' / 'last.ckpt'}"]
        + ["save_predictions=true", "prediction_formats=[train_ids]", "batch_size=3"],
        output_dir=out,
    )
    cfg.output_dir = str(out)
    scores = evaluate_from_config(cfg)
    assert scores["val/mIoU"] == pytest.approx(metrics["val/mIoU"], abs=1e-6)
    predictions = sorted((out / "predictions" / "train_ids").glob("*.png"))
    assert len(predictions) == 8 and cv2.imread(str(predictions[0]), cv2.IMREAD_UNCHANGED).shape == (64, 64)
    assert json.loads((out / "metrics.json").read_text())["images"] == 8


def test_a_non_default_ignore_index_works_end_to_end(tmp_path):
    """ignore 254: padding and rotation fill with it, the loss and the metrics skip it, nothing reads 255."""
    overrides = [
        "data.labels.ignore_index=254",
        "+data.train_transform.rotate=40",
        "data.input.crop_size=[80,80]",
        "debug=limit",
        "trainer.max_epochs=1",
        "test=false",
        "model=unet_small",
        "model.base_width=4",
        "model.depth=2",
    ]
    cfg = compose_config("train", TINY + overrides, output_dir=tmp_path)
    datamodule = build_datamodule(cfg)
    assert datamodule.ignore_index == 254
    _, mask = datamodule.split_dataset("train")[(0, 3)]
    values = set(np.unique(mask.numpy()).tolist())
    assert 254 in values and 255 not in values and values <= {0, 1, 2, 3, 4, 5, 254}
    metrics = train(cfg)
    assert np.isfinite(metrics["val/loss"]) and 0 <= metrics["val/mIoU"] <= 1


@pytest.mark.parametrize("ignore_index", [300, -1])
def test_an_ignore_index_masks_cannot_carry_is_refused(ignore_index):
    cfg = compose_config("train", TINY + [f"data.labels.ignore_index={ignore_index}"])
    with pytest.raises(
        SegkitError, match=rf"ignore_index={ignore_index}; masks travel through the transforms as uint8"
    ):
        build_datamodule(cfg)


@pytest.mark.parametrize(
    ("key", "owner"),
    [("ignore_index=255", "the label table's ignore_index"), ("crop_size=[8,8]", "data.input.crop_size")],
)
def test_input_spec_keys_in_the_train_transform_are_refused(key, owner):
    """The mask fill is the table's ignore id and the crop the input spec's: set there, never twice."""
    cfg = compose_config("train", TINY + ["data.labels.ignore_index=254", f"+data.train_transform.{key}"])
    with pytest.raises(SegkitError, match=rf"data.train_transform.{key.split('=')[0]} is set by {owner}; remove it"):
        build_datamodule(cfg)


def test_segkit_error_type_for_data_checks():
    with pytest.raises(SegkitError):
        SegmentationDataModule(dataset=Stripes, labels={**TABLE, "ignore_index": 999})
