"""eval reproduces training's validation metrics; predict writes outputs of the input sizes; bad checkpoints
fail with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from segkit import SegkitError
from segkit.loading import load_model
from segkit.tasks.evaluate import evaluate_from_config
from segkit.tasks.predict import predict_from_config
from segkit.tasks.train import train
from tests.conftest import ROOT, TINY, compose_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny U-Net trained for 2 short epochs on synthetic data, with a Hydra-style saved config."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_config(
        "train", TINY + ["debug=limit", "model=unet_small", "model.base_width=4", "model.depth=2"], output_dir=run
    )
    metrics = train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return {
        "run": run,
        "metrics": metrics,
        "best": Path(metrics["best_model_path"]),
        "last": run / "checkpoints" / "last.ckpt",
    }


def eval_cfg(out: Path, *overrides: str):
    cfg = compose_config("eval", ["extras.print_config=false", "progress=false", *overrides], output_dir=out)
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return cfg


def test_eval_reproduces_training_val_metrics(trained, tmp_path):
    metrics = trained["metrics"]
    last = evaluate_from_config(eval_cfg(tmp_path / "last", f"ckpt={trained['last']}", "batch_size=3"))
    for key in ("val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU"):
        assert last[key] == pytest.approx(metrics[key], abs=1e-6), key
    best = evaluate_from_config(eval_cfg(tmp_path / "best", f"ckpt={trained['run']}"))  # a run dir: its best checkpoint
    assert best["val/mIoU"] == pytest.approx(metrics["best/val/mIoU"], abs=1e-6)

    report = json.loads((tmp_path / "last" / "metrics.json").read_text())
    assert report["mIoU"] == pytest.approx(metrics["val/mIoU"], abs=1e-6) and report["images"] == 8
    assert set(report["IoU"]) == {k.split("/")[-1] for k in metrics if k.startswith("val/IoU/")}
    table = (tmp_path / "last" / "iou.md").read_text()
    assert table.startswith("| class | IoU (%) |") and "**mean**" in table
    assert cv2.imread(str(tmp_path / "last" / "confusion.png")) is not None


def test_eval_on_test_split_with_tta_and_saved_predictions(trained, tmp_path):
    out = evaluate_from_config(
        eval_cfg(
            tmp_path,
            f"run_dir={trained['run']}",
            "split=test",
            "inference=tta",
            "inference.scales=[0.75,1.0]",
            "save_predictions=true",
        )
    )
    assert 0.0 <= out["test/mIoU"] <= 1.0
    ids = sorted((tmp_path / "predictions" / "train_ids").glob("*.png"))
    colors = sorted((tmp_path / "predictions" / "color").glob("*.png"))
    assert len(ids) == len(colors) == 8
    mask = cv2.imread(str(ids[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and mask.max() < 6
    assert cv2.imread(str(colors[0])).shape == (64, 64, 3)


def test_predict_writes_outputs_at_input_sizes(trained, tmp_path):
    rng = np.random.default_rng(0)
    demo = tmp_path / "demo"
    (demo / "sub").mkdir(parents=True)
    sizes = {"a.png": (37, 53), "b.jpg": (37, 53), "c.png": (61, 29), "sub/d.png": (101, 77)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(demo / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "out"
    cfg = compose_config(
        "predict",
        [
            f"ckpt={trained['last']}",
            f"input={demo}",
            f"output={out}",
            "batch_size=2",
            "save_ids=true",
            "progress=false",
            "device=cpu",
        ],
        output_dir=tmp_path,
    )
    predict_from_config(cfg)
    for name, (h, w) in sizes.items():
        stem = out / Path(name).parent / Path(name).stem
        assert cv2.imread(f"{stem}_mask.png").shape == (h, w, 3)
        assert cv2.imread(f"{stem}_overlay.png").shape == (h, w, 3)
        assert cv2.imread(f"{stem}_ids.png", cv2.IMREAD_UNCHANGED).shape == (h, w)

    glob_out = tmp_path / "glob"
    predict_from_config(
        compose_config(
            "predict",
            [
                f"ckpt={trained['last']}",
                f"input={demo}/*.png",
                f"output={glob_out}",
                "progress=false",
                "inference=slide",
                "inference.crop=[32,32]",
            ],
        )
    )
    assert sorted(p.name for p in glob_out.iterdir()) == ["a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png"]


def test_predict_on_a_video(trained, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 40))
    for i in range(5):
        writer.write(np.full((40, 48, 3), 40 * i, np.uint8))
    writer.release()
    predict_from_config(
        compose_config(
            "predict", [f"ckpt={trained['last']}", f"input={video}", f"output={tmp_path / 'v'}", "progress=false"]
        )
    )
    capture = cv2.VideoCapture(str(tmp_path / "v" / "clip_overlay.mp4"))
    ok, frame = capture.read()
    assert ok and frame.shape == (40, 48, 3)


def test_a_checkpoint_stores_its_input_spec_once(trained, tmp_path):
    """The input spec (label table, channels, normalisation, crop and eval sizes) is stored once, as
    ``segkit.input``, and read back as is; a record without it is refused (no fallback to the run config)."""
    model = load_model(trained["last"])
    spec = model.spec
    assert spec.class_names == ("background", "disc", "box", "triangle", "ring", "dotted_ellipse")
    assert (spec.in_channels, spec.mean, spec.std) == (3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (spec.crop_size, spec.eval_size, spec.ignore_index) == (None, None, 255)  # synthetic: whole images
    assert spec.labels.to_source_ids(np.array([[1, 255]])).tolist() == [[spec.labels.source_ids[1][0], 0]]

    ckpt = torch.load(trained["last"], map_location="cpu", weights_only=True)
    assert set(ckpt["segkit"]) == {"input", "precision", "precision_reason"}
    assert ckpt["segkit"]["input"] == spec.to_record()
    data = ckpt["hyper_parameters"]["data"]
    assert "input" not in data and data["labels"] == "synthetic"  # the run config names the table only
    older = {"class_names": list(spec.class_names), "num_classes": 6, "ignore_index": 255}
    torch.save(dict(ckpt, segkit=older), tmp_path / "older.ckpt")
    with pytest.raises(SegkitError, match=r"older.ckpt': its 'segkit' record has no input spec") as err:
        load_model(tmp_path / "older.ckpt")
    assert "\n" not in str(err.value)


def test_checkpoint_errors_are_one_clear_line(trained, tmp_path):
    with pytest.raises(SegkitError, match="does not exist"):
        load_model(tmp_path / "nope.ckpt")
    ckpt = torch.load(trained["last"], map_location="cpu", weights_only=True)

    unknown = dict(
        ckpt, hyper_parameters={**ckpt["hyper_parameters"], "model": {"_target_": "segkit.models.nets.nope.Nope"}}
    )
    torch.save(unknown, tmp_path / "unknown.ckpt")
    with pytest.raises(SegkitError, match="unknown architecture 'segkit.models.nets.nope.Nope'.*update segkit"):
        load_model(tmp_path / "unknown.ckpt")

    nine = [{"name": str(i), "color": [0, 0, 0], "ids": [i]} for i in range(9)]
    record = {**ckpt["segkit"]["input"], "labels": {**ckpt["segkit"]["input"]["labels"], "classes": nine}}
    torch.save(dict(ckpt, segkit={**ckpt["segkit"], "input": record}), tmp_path / "classes.ckpt")
    with pytest.raises(SegkitError, match="other shapes .* for 9 classes"):
        load_model(tmp_path / "classes.ckpt")

    with pytest.raises(SegkitError, match="the net predicts 6 classes but data 'camvid' has 11"):
        evaluate_from_config(eval_cfg(tmp_path, f"ckpt={trained['last']}", "data=camvid", f"data.root={tmp_path}"))

    renamed = [f"data.labels.classes.{i}.name=c{i}" for i in range(6)]
    with pytest.raises(SegkitError, match=r"trained on classes \['background', 'disc'.* has \['c0', 'c1'"):
        evaluate_from_config(eval_cfg(tmp_path, f"ckpt={trained['last']}", "data=synthetic", *renamed))

    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(SegkitError, match="not a segkit checkpoint"):
        load_model(tmp_path / "foreign.ckpt")


def test_cli_help_and_missing_checkpoint_message(tmp_path):
    for script in ("src/eval.py", "src/predict.py"):  # --help does not import torch: a second each
        help_text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert help_text.returncode == 0 and "inference" in help_text.stdout
    run = subprocess.run(
        [sys.executable, "src/eval.py", "ckpt=missing.ckpt", "extras.print_config=false", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "ckpt='missing.ckpt' does not exist" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
