"""One short real run with W&B (offline), the CSV log, EMA and the plateau schedule, then what it left behind:
W&B keys and media, the local curves PNG, EMA weights in the checkpoint."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segkit.callbacks import read_epoch_curves
from segkit.callbacks.wandb_dashboard import overrides_to_tags
from segkit.tasks.train import train
from tests.conftest import compose_config

RUN = [
    "data.dataset.num_samples={train: 8, val: 6, test: 4}",
    "data.dataset.height=32",
    "data.dataset.width=32",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
    "trainer.enable_model_summary=false",
    "test=false",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "model.base_width=4",
    "model.depth=2",
    "logger=many",
    "logger.tensorboard=null",
    "callbacks=ema",
    "callbacks.ema.decay=0.5",
    "callbacks.wandb_dashboard.num_images=3",
    "scheduler=plateau",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(out), "WANDB_SILENT": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        train(compose_config("train", RUN, output_dir=out))
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out


def read_wandb_records(path: Path) -> list:
    """The protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log: 7-byte file header, 32 KiB
    blocks, each record chunk behind a header of crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, records = 7, b"", []
    while pos + header <= len(data):
        room = block - pos % block
        if room < header:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0:
            break
        chunk, pos = data[pos + header : pos + header + length], pos + header + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history_keys(records: list) -> set[str]:
    """Logged keys; media show up as ``key/_type``, ``key/path`` ..., so their first two parts are kept too."""
    keys: set[str] = set()
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                keys |= {key, "/".join(key.split("/")[:2])}
    return keys


def test_wandb_run_holds_curves_tables_images_and_confusion(run_dir):
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(run_file)
    keys = history_keys(records)
    assert {"train/loss", "val/loss", "val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU", "val/IoU/disc"} <= keys
    assert {"val/iou_table", "val/confusion_matrix", "val/examples", "val/panels"} <= keys
    assert "val/examples/all_masks" in keys  # ground truth + prediction masks with class labels
    media = run_file.parent / "files" / "media"
    assert len(list(media.glob("table/val/iou_table_*.table.json"))) == 2  # one per validation
    assert list(media.glob("images/val/confusion_matrix_*.png"))
    assert list(media.glob("images/val/examples_*.png")) and list(media.glob("images/val/panels_*.png"))
    assert list(media.glob("images/mask/val/examples_*.mask.png"))
    config_keys = {u.key for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert {"model", "optimizer", "scheduler", "loss", "data", "trainer"} <= config_keys  # the resolved config


def test_local_curves_png(run_dir):
    png = run_dir / "curves.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    curves = read_epoch_curves(run_dir / "csv" / "metrics.csv")
    assert [e for e, _ in curves["val/mIoU"]] == [0, 1] and [e for e, _ in curves["train/loss_epoch"]] == [0, 1]


def test_ema_weights_are_checkpointed_and_differ_from_raw(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k in raw if k.endswith("weight") and raw[k].is_floating_point()]
    assert weights and any(not torch.equal(ema[k], raw[k]) for k in weights)
    assert ckpt["lr_schedulers"][0]["mode"] == "max"  # the plateau schedule on val/mIoU ran through Lightning


def test_overrides_become_tags():
    tags = overrides_to_tags(["optimizer=sgd", "+optimizer.lr=0.01", "paths.log_dir=/x", "model.name=" + "n" * 80])
    assert tags[:2] == ["optimizer=sgd", "optimizer.lr=0.01"] and len(tags) == 3 and len(tags[2]) == 64


@pytest.mark.parametrize("validate_at_limit", [True, False])
def test_a_time_limited_run_validates_the_weights_it_stops_at(tmp_path, validate_at_limit):
    """check_val_every_n_epoch far beyond the run: only ValidateAtTimeLimit makes the stop validate (and so
    checkpoint the final weights as best); without it (the negative control) nothing is validated."""
    overrides = [
        *RUN[:9],
        "test=false",
        "model.base_width=4",
        "model.depth=2",
        "logger=csv",
        "trainer.precision=32-true",
        "trainer.max_epochs=1000",
        "trainer.max_time=00:00:00:03",
        "trainer.check_val_every_n_epoch=1000",
        "trainer.num_sanity_val_steps=0",
        "callbacks.local_curves=null",
    ]
    if not validate_at_limit:
        overrides.append("callbacks.validate_at_time_limit=null")
    metrics = train(compose_config("train", overrides, output_dir=tmp_path))
    curves = read_epoch_curves(tmp_path / "csv" / "metrics.csv", keys=("val/mIoU", "train/loss_epoch"))
    rows, epochs = curves["val/mIoU"], [epoch for epoch, _ in curves["train/loss_epoch"]]
    if validate_at_limit:  # the epoch it stopped in is validated; only the last moments switch to every epoch
        assert rows and rows[-1][0] == max(epochs) and len(rows) < len(epochs) / 2, (rows, len(epochs))
        assert 0.0 <= metrics["val/mIoU"] <= 1.0
        # the stop's validation takes part in choosing the best checkpoint
        assert metrics["best/val/mIoU"] == pytest.approx(max(v for _, v in rows), abs=1e-6)
        best = torch.load(metrics["best_model_path"], weights_only=True)
        assert best["epoch"] == max(rows, key=lambda r: r[1])[0]
        assert Path(metrics["best_model_path"]).is_file()
    else:
        assert rows == [] and "val/mIoU" not in metrics


def test_ema_update_is_lightnings_in_one_kernel():
    """segkit's EMA callback averages as Lightning's (decay * average + (1 - decay) * weights, buffers included)
    and keeps its state key, so checkpoints of either load in the other."""
    from pytorch_lightning.callbacks import EMAWeightAveraging as LightningEMA

    from segkit.callbacks import EMAWeightAveraging

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    module = pl.LightningModule()
    module.net = net
    ours, theirs = EMAWeightAveraging(decay=0.9), LightningEMA(decay=0.9)
    assert ours.state_key == theirs.state_key
    assert "multi_avg_fn" in ours._kwargs and "avg_fn" not in ours._kwargs  # the foreach update, not the loop
    positional = EMAWeightAveraging("cpu", False, 0.5, 2)  # Lightning's argument order
    assert (str(positional._device), positional._use_buffers, positional.update_every_n_steps) == ("cpu", False, 2)
    average = [torch.zeros(3)]
    positional._kwargs["multi_avg_fn"](average, [torch.ones(3)], torch.tensor(1))
    torch.testing.assert_close(average[0], torch.full((3,), 0.5))  # decay 0.5: half-way to the weights
    for callback in (ours, theirs):
        callback.setup(None, module, "fit")
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net(torch.randn(2, 3, 8, 8))  # BatchNorm running statistics move too
        for callback in (ours, theirs):
            callback._average_model.update_parameters(module)
    a, b = ours._average_model.module.state_dict(), theirs._average_model.module.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert not torch.equal(a["net.0.weight"], net.state_dict()["0.weight"])  # an average, not the weights
