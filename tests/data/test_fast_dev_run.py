"""Each ``data=<name>`` composes from the real configs and trains one fast_dev_run batch from its fixture tree."""

from __future__ import annotations

import pytest
import torch

from segkit.build import build_datamodule, build_module
from segkit.tasks.train import train
from tests.conftest import compose_config
from tests.data import trees

# TINY without its synthetic-only keys, plus small crops for the 16x24 fixture images.
SMALL = [
    "data.batch_size=2",
    "data.val_batch_size=1",
    "data.num_workers=0",
    "data.input.crop_size=[16,16]",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
    "debug=fdr",
    "model=unet_small",
    "model.base_width=4",
]


def run(tmp_path, *overrides: str) -> dict:
    cfg = compose_config("train", [*SMALL, *overrides], output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert metrics["train/loss"] > 0 and 0.0 <= metrics["val/mIoU"] <= 1.0
    return metrics


@pytest.mark.parametrize(
    "name,make,extra",
    [
        ("camvid", trees.camvid_tree, []),
        ("cityscapes", trees.cityscapes_tree, ["data/labels=cityscapes_categories"]),
        ("ade20k", trees.ade20k_tree, ["data.reduce_zero_label=false"]),
        ("voc", trees.voc_tree, ["data/train_transform=resized_crop_flip", "data.input.crop_size=[16,16]"]),
    ],
)
def test_dataset_trains_one_batch(name, make, extra, tmp_path):
    root = make(tmp_path / name)
    run(tmp_path, f"data={name}", f"data.root={root}", *extra)


def test_sunrgbd_depth_reaches_the_model_as_a_fourth_channel(tmp_path):
    root = trees.sunrgbd_tree(tmp_path / "sun")
    overrides = [*SMALL, "data=sunrgbd", f"data.root={root}", "data.use_depth=true"]
    cfg = compose_config("train", overrides, output_dir=tmp_path / "run")
    dm = build_datamodule(cfg)
    assert dm.in_channels == 4
    net = build_module(cfg, dm).net
    assert net.stem[0].in_channels == 4
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 4, 16, 16) and masks.shape == (2, 16, 16)
    with torch.no_grad():
        assert net(images).shape == (2, 37, 16, 16)
    run(tmp_path, "data=sunrgbd", f"data.root={root}", "data.use_depth=true")


def test_folder_with_own_table_file_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = trees.folder_tree(tmp_path / "folder", n=5)
    table = trees.folder_table(tmp_path / "my_rgb.yaml")
    run(
        tmp_path,
        "data=folder",
        f"data.root={root}",
        f"data.labels={table}",
        "loss.class_weights=enet",
        "data.dataset.split_seed=1",
    )
    assert list((tmp_path / "cache" / "class_counts").glob("folder-my_rgb-*.json"))
