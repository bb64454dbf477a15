"""The net's input spec travels with the net: built once from data.input, it builds the transforms, is stored in the
checkpoint once, and eval / predict apply it whatever data group, folder or split they are pointed at."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from segkit import SegkitError
from segkit.data.input_spec import InputSpec
from segkit.data.labels import load_table
from segkit.inference import Resized, WholeImage, mode_for
from segkit.tasks.evaluate import evaluate_from_config
from segkit.tasks.predict import predict_from_config
from segkit.tasks.train import train
from tests.conftest import CAMVID, TINY, compose_config

CPU_RUN = [item for item in TINY if not item.startswith("data.")]

TABLE = load_table("synthetic")


def test_the_spec_is_built_from_data_input_and_round_trips_through_its_record():
    spec = InputSpec.from_config({"crop_size": [32, 48], "eval_size": [40, 60]}, TABLE, 3)
    assert (spec.crop_size, spec.eval_size, spec.num_classes, spec.ignore_index) == ((32, 48), (40, 60), 6, 255)
    again = InputSpec.from_record(spec.to_record(), "test")
    assert again == spec and again.labels.source_ids == TABLE.source_ids
    four = InputSpec.from_config({"mean": [0.5] * 4, "std": [0.25] * 4}, TABLE, 3)  # RGB-D stats, RGB data
    assert four.mean == (0.5,) * 3 and four.std == (0.25,) * 3


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"resize": [8, 8]}, r"data.input.resize is not an input-spec key; use mean, std, crop_size, eval_size"),
        ({"eval_size": [0, 8]}, r"data.input.eval_size=\[0, 8\]; give \[height, width\]"),
        ({"std": [0.2, 0.0, 0.2]}, r"data.input.std=\[0.2, 0.0, 0.2\]; every entry must be positive"),
        ({"mean": [0.5, 0.5]}, r"data.input.mean and data.input.std must each hold one value per input channel \(3\)"),
    ],
)
def test_bad_input_keys_are_one_line_naming_the_key(cfg, message):
    with pytest.raises(SegkitError, match=message):
        InputSpec.from_config(cfg, TABLE, 3)


def _record(**changes):
    record = InputSpec.from_config({}, TABLE, 3).to_record()
    for dotted, value in changes.items():
        node, *path = record, *dotted.split("__")
        for key in path[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(path[-1]) if isinstance(node, list) else path[-1]] = value
    return record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"labels__classes__0__color": [300, 0, 0]},
            r"colour \[300, 0, 0\] must be \[r, g, b\] of whole numbers 0-255",
        ),
        ({"labels__classes__0__color": "999"}, r"colour '999' must be \[r, g, b\]"),
        ({"eval_size": [8192, 8192]}, r"eval_size=\[8192, 8192\] with 6 classes makes 402653184 class scores"),
        ({"labels__merge": {"x": ["disc"]}}, r"segkit.input.labels.merge is not a key of an expanded table"),
        ({"labels__classes__0__name": None}, r"classes entries must be \{name, color, ids, source_colors\} mappings"),
        ({"labels__ignore_ids": [3.9]}, r"ignore_ids must be a list of ids from 0 to 65535"),
    ],
    ids=["colour_range", "colour_text", "eval_size_scores", "merge", "name", "ignore_ids"],
)
def test_a_stored_record_is_checked_value_by_value(changes, message):
    with pytest.raises(SegkitError, match=message) as err:
        InputSpec.from_record(_record(**changes), "checkpoint 'x.ckpt'")
    assert "\n" not in str(err.value) and str(err.value).startswith("checkpoint 'x.ckpt'")


def test_the_spec_decides_how_a_net_is_applied():
    sized = InputSpec.from_config({"eval_size": [40, 60]}, TABLE, 3)
    whole = InputSpec.from_config({}, TABLE, 3)
    assert repr(mode_for(sized)) == repr(Resized((40, 60))) and repr(mode_for(whole)) == repr(WholeImage())
    assert repr(mode_for(sized, Resized())) == "Resized(size=(40, 60))"  # inference=resize: the net's own size
    assert repr(mode_for(sized, Resized((8, 8)))) == "Resized(size=(8, 8))"  # an explicit choice wins


def test_eval_on_another_data_config_adopts_the_nets_spec_and_refuses_other_classes(tmp_path):
    from segkit.build import build_datamodule

    spec = InputSpec.from_config({"eval_size": [40, 60], "mean": [0.1, 0.2, 0.3]}, TABLE, 3)
    datamodule = build_datamodule(compose_config("train", TINY))
    datamodule.adopt_input(spec)
    assert datamodule.spec.eval_size == (40, 60) and datamodule.spec.mean == (0.1, 0.2, 0.3)
    renamed = InputSpec.from_config({}, load_table({"classes": [{"name": f"c{i}"} for i in range(6)]}), 3)
    with pytest.raises(SegkitError, match=r"trained on classes \['c0', 'c1'.* but data 'synthetic'"):
        datamodule.adopt_input(renamed)
    with pytest.raises(SegkitError, match=r"the net predicts 2 classes but data 'synthetic' has 6"):
        datamodule.adopt_input(InputSpec.from_config({}, load_table("binary"), 3))


VAL_IMAGES = 30  # of CamVid's 101: every route below scores them, at 360x480


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory):
    """CamVid with its first ``VAL_IMAGES`` val images: the folders linked, val.txt cut short."""
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid is not at {CAMVID}")
    root = tmp_path_factory.mktemp("camvid")
    for name in ("train", "trainannot", "val", "valannot"):
        (root / name).symlink_to(CAMVID / name, target_is_directory=True)
    shutil.copy(CAMVID / "train.txt", root)
    lines = (CAMVID / "val.txt").read_text().splitlines()[:VAL_IMAGES]
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory, camvid_root) -> dict:
    """A small U-Net trained a few hundred steps on CamVid crops at quarter resolution, validated at 90x120."""
    run = tmp_path_factory.mktemp("camvid_run")
    overrides = [
        "data=camvid",
        f"data.root={camvid_root}",
        "data.input.crop_size=[64,96]",
        "data.input.eval_size=[90,120]",
        "data.train_transform.base_size=[90,120]",
        "data.train_transform.scale_range=[0.75,1.25]",
        "data.batch_size=8",
        "data.val_batch_size=8",
        "data.num_workers=0",
        "model=unet_small",
        "model.base_width=8",
        "model.depth=3",
        "optimizer.lr=3e-3",
        "trainer.max_epochs=6",
        "trainer.limit_train_batches=15",
        "trainer.check_val_every_n_epoch=3",
        "test=false",
        "callbacks.early_stopping=null",
        "callbacks.local_curves=null",
        "logger=csv",
    ]
    metrics = train(compose_config("train", CPU_RUN + overrides, output_dir=run))
    return {"run": run, "best": metrics["best_model_path"], "score": metrics["best/val/mIoU"], "root": camvid_root}


def _eval(tmp_path, name: str, *overrides: str) -> float:
    out = tmp_path / name
    cfg = compose_config("eval", ["progress=false", "precision=fp32", "batch_size=8", *overrides], output_dir=out)
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return evaluate_from_config(cfg)["val/mIoU"]


def test_eval_reproduces_the_val_score_through_every_route_and_predict_writes_what_it_scores(camvid_run, tmp_path):
    score, best, run, root = camvid_run["score"], camvid_run["best"], camvid_run["run"], camvid_run["root"]
    assert score > 0.15  # the net learned something, so the way it is applied shows in the score
    routes = {
        "ckpt": [f"ckpt={best}", "save_predictions=true", "prediction_formats=[train_ids]"],
        "run_dir": [f"run_dir={run}", f"ckpt={best}"],
        "data_group": [f"ckpt={best}", "data=camvid", f"data.root={root}"],  # the group's own input spec differs
        "data_root": [f"ckpt={best}", f"data_root={root}"],
        "resize": [f"ckpt={best}", "inference=resize"],  # size null: the net's eval size
    }
    for name, overrides in routes.items():
        assert _eval(tmp_path, name, *overrides) == pytest.approx(score, abs=0.005), name
    whole = _eval(tmp_path, "whole", f"ckpt={best}", "inference=whole")  # negative control: the 360x480 image as is
    assert abs(whole - score) > 0.005

    # predict on a few val images writes the masks eval scored for them
    names = [line.split()[0] for line in (root / "val.txt").read_text().splitlines()[:4]]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in names:
        shutil.copy(root / name, inputs)
    out = tmp_path / "predicted"
    cfg = compose_config("predict", [f"ckpt={best}", f"input={inputs}", "save_ids=true", "precision=fp32"])
    with open_dict(cfg):
        cfg.output, cfg.progress = str(out), False
    predict_from_config(cfg)
    for name in names:
        stem = name.split("/")[-1].rsplit(".", 1)[0]
        predicted = cv2.imread(str(out / f"{stem}_ids.png"), cv2.IMREAD_UNCHANGED)
        scored = cv2.imread(str(tmp_path / "ckpt" / "predictions" / "train_ids" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert predicted.shape == scored.shape == (360, 480)
        assert np.array_equal(predicted, scored), stem
    report = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert report["images"] == VAL_IMAGES and "90" in report["inference"]


def test_the_checkpoint_spec_is_read_back_as_is(camvid_run):
    record = torch.load(camvid_run["best"], weights_only=True)["segkit"]["input"]
    assert (record["crop_size"], record["eval_size"]) == ([64, 96], [90, 120])
    assert record["labels"]["name"] == "camvid" and len(record["labels"]["classes"]) == 11


def test_export_takes_the_checkpoints_eval_size_as_its_example(camvid_run, tmp_path, monkeypatch):
    from segkit.tasks import export as export_task

    shapes = []
    monkeypatch.setattr(export_task, "export", lambda net, output, **kw: shapes.append(kw["shape"]) or {})
    export_task.export_from_config(compose_config("export", [f"ckpt={camvid_run['best']}"], output_dir=tmp_path))
    sized = [f"ckpt={camvid_run['best']}", "height=64", "width=80"]
    export_task.export_from_config(compose_config("export", sized, output_dir=tmp_path))
    assert shapes == [(1, 3, 90, 120), (1, 3, 64, 80)]
