"""A checkpoint is untrusted input: nothing it holds runs as code, in eval, predict or export.

Each hostile file would create ``marker`` if segkit unpickled it fully or instantiated what it names; every
entry point must refuse it with one line naming the file or key, and the marker must never appear.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from segkit import SegkitError
from segkit.loading import load_model, read_checkpoint
from segkit.models.backbones import load_state_dict_file
from segkit.safe_config import check_data_config, check_net_config
from segkit.tasks.evaluate import evaluate_from_config
from segkit.tasks.export import export_from_config
from segkit.tasks.predict import predict_from_config
from segkit.tasks.train import train
from tests.conftest import ROOT, TINY, compose_config


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: what a crafted checkpoint would do with ``weights_only=False``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("run")
    overrides = ["debug=limit", "trainer.max_epochs=1", "test=false", "model=unet_small", "model.base_width=4"]
    train(compose_config("train", TINY + overrides + ["model.depth=2"], output_dir=run))
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def hostile_files(ckpt: dict, folder: Path, marker: Path) -> dict[str, Path]:
    """One file per attack, each of which would create ``marker`` if it were executed."""
    folder.mkdir(parents=True, exist_ok=True)
    hp = ckpt["hyper_parameters"]
    mkdir = {"_target_": "os.mkdir", "path": str(marker)}
    variants = {
        "pickle": dict(ckpt, evil=Payload(marker)),
        "model_target": dict(ckpt, hyper_parameters={**hp, "model": mkdir}),
        "nested_model_target": dict(ckpt, hyper_parameters={**hp, "model": {**hp["model"], "base_width": mkdir}}),
        "data_target": dict(ckpt, hyper_parameters={**hp, "data": {**hp["data"], "_target_": "os.mkdir"}}),
        "nested_data_target": dict(ckpt, hyper_parameters={**hp, "data": {**hp["data"], "dataset": mkdir}}),
        "module_path_target": dict(
            ckpt, hyper_parameters={**hp, "model": {**hp["model"], "_target_": "segkit.models.nets.unet.os.mkdir"}}
        ),
    }
    files = {}
    for name, content in variants.items():
        files[name] = folder / f"{name}.ckpt"
        torch.save(content, files[name])
    return files


EXPECTED = {
    "pickle": "not a segkit checkpoint or holds objects segkit will not unpickle",
    "model_target": r"model._target_='os.mkdir' is not a segkit net",
    "nested_model_target": r"model.base_width._target_='os.mkdir' is a nested _target_",
    "data_target": r"data._target_='os.mkdir' is not a segkit data module",
    "nested_data_target": r"data.dataset._target_='os.mkdir' is not a segkit data module",
    "module_path_target": r"unknown architecture 'segkit.models.nets.unet.os.mkdir'",
}


def _run_entry(entry: str, ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / f"out_{entry}"
    if entry == "eval":
        cfg = compose_config("eval", ["extras.print_config=false", "progress=false", f"ckpt={ckpt}"], output_dir=out)
        with open_dict(cfg):
            cfg.output_dir = str(out)
        evaluate_from_config(cfg)
    elif entry == "predict":
        image = tmp_path / "input.png"
        cv2.imwrite(str(image), np.zeros((20, 24, 3), np.uint8))
        cfg = compose_config("predict", [f"ckpt={ckpt}", f"input={image}", f"output={out}", "progress=false"])
        predict_from_config(cfg)
    else:
        cfg = compose_config("export", [f"ckpt={ckpt}", f"output={out}/m.onnx", "height=32", "width=32"])
        export_from_config(cfg)


@pytest.mark.parametrize("entry", ["eval", "predict", "export"])
def test_hostile_checkpoints_are_refused_and_run_nothing(checkpoint, tmp_path, entry):
    marker = tmp_path / "pwned"
    files = hostile_files(checkpoint, tmp_path / "files", marker)
    for name, path in files.items():
        with pytest.raises(SegkitError, match=EXPECTED[name]) as err:
            _run_entry(entry, path, tmp_path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message, (name, message)
        assert not marker.exists(), f"{name} ran code through {entry}"


def test_the_payload_is_live_without_the_safe_load(checkpoint, tmp_path):
    """Negative control: the pickle really runs code when fully unpickled, so the test above can fail."""
    marker = tmp_path / "pwned"
    path = hostile_files(checkpoint, tmp_path / "files", marker)["pickle"]
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_hostile_run_directory_config_is_refused(checkpoint, tmp_path):
    """A checkpoint without a stored model config is rebuilt from its run directory's config, checked the same way."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    bare = {**checkpoint, "hyper_parameters": {}}
    torch.save(bare, run / "checkpoints" / "last.ckpt")
    config = OmegaConf.create(checkpoint["hyper_parameters"])
    config.model.depth = {"_target_": "os.mkdir", "path": str(tmp_path / "pwned")}
    (run / ".hydra").mkdir()
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    with pytest.raises(SegkitError, match=r"run config .* model.depth._target_='os.mkdir' is a nested _target_"):
        load_model(run)
    assert not (tmp_path / "pwned").exists()


def test_cli_prints_one_line_for_a_pickle_payload(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    path = hostile_files(checkpoint, tmp_path / "files", marker)["pickle"]
    result = subprocess.run(
        [sys.executable, "src/eval.py", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert result.returncode == 1 and len(errors) == 1 and str(path) in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not marker.exists()


def test_weights_file_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": torch.zeros(1), "evil": Payload(marker)}, tmp_path / "weights.pth")
    with pytest.raises(SegkitError, match="could not be read as tensors") as err:
        load_state_dict_file(tmp_path / "weights.pth")
    assert "\n" not in str(err.value) and not marker.exists()


def test_garbage_file_is_one_line(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SegkitError, match="not a segkit checkpoint") as err:
        read_checkpoint(tmp_path / "garbage.ckpt")
    assert "\n" not in str(err.value) and "garbage.ckpt" in str(err.value)


def test_segkit_and_torchvision_targets_pass_the_allow_list():
    for model in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        cfg = compose_config("train", [f"model={model.stem}"])
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        model_cfg.pop("aux_weights", None)
        assert check_net_config(model_cfg, "test") == cfg.model._target_
    assert check_net_config({"_target_": "torchvision.models.segmentation.fcn_resnet50"}) == (
        "torchvision.models.segmentation.fcn_resnet50"
    )
    for data in sorted((ROOT / "conf" / "data").glob("*.yaml")):
        check_data_config(compose_config("train", [f"data={data.stem}"]).data, "test")
    for bad in ("torchvision.models.segmentation.deeplabv3.IntermediateLayerGetter", "torch.load", "os.system"):
        with pytest.raises(SegkitError, match="is not a segkit net"):
            check_net_config({"_target_": bad})
    with pytest.raises(SegkitError, match=r"model._partial_ is not allowed"):
        check_net_config({"_target_": "segkit.models.nets.unet.UNet", "_partial_": True})


def test_a_torchvision_builder_checkpoint_loads_without_downloading(checkpoint, tmp_path):
    """The allow-list's other half: a checkpoint of torchvision's own fcn_resnet50 rebuilds with no weights fetched."""
    import torchvision

    net = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=6, aux_loss=False
    )
    hp = {**checkpoint["hyper_parameters"], "model": {"_target_": "torchvision.models.segmentation.fcn_resnet50"}}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({**checkpoint, "hyper_parameters": hp, "state_dict": state}, tmp_path / "tv.ckpt")
    loaded = load_model(tmp_path / "tv.ckpt")
    x = torch.randn(1, 3, 33, 47)
    assert torch.allclose(loaded.net(x)["out"], net.eval()(x)["out"])
