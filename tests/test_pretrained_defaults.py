"""Backbone nets start from ImageNet weights by default, as smp and mmseg users expect; without internet the
error says how to go on; tests build them with random init (conftest.offline_init)."""

from __future__ import annotations

import urllib.error
from unittest import mock

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from segkit import SegkitError
from segkit.models.nets import torchvision_seg

from .conftest import CONF_DIR, compose_config

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def raw_model_config(name: str):
    """The model config as the user gets it (composed without the tests' offline switch)."""
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    for parent in cfg.get("defaults", []):
        cfg = OmegaConf.merge(raw_model_config(parent), cfg)
    return cfg


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_backbone_configs_default_to_imagenet_weights(name):
    cfg = raw_model_config(name)
    if name.startswith("tv_"):  # torchvision's whole COCO model stays opt-in; its ImageNet trunk is the default
        assert cfg.pretrained is False and cfg.pretrained_backbone is True
    elif "pretrained" in cfg:
        assert cfg.pretrained is True, f"conf/model/{name}.yaml should start from ImageNet weights"
    else:  # nets without a torchvision trunk have nothing to load
        assert "backbone" not in cfg or cfg.backbone is None or name == "drn_c_26", name


def test_tests_compose_them_with_random_init(tmp_path):
    cfg = compose_config("train", ["model=pspnet_resnet50"], output_dir=tmp_path)
    assert cfg.model.pretrained is False


@pytest.mark.parametrize("arch", ["deeplabv3_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_nets_take_the_imagenet_trunk(arch):
    name, prefix = torchvision_seg.BACKBONES[arch]
    state = torchvision.models.get_model(name, weights=None).state_dict()
    with mock.patch.object(torchvision_seg, "download_state_dict", lambda *_: state):
        net = torchvision_seg.TorchvisionSegmentation(num_classes=5, arch=arch, pretrained_backbone=True)
    trunk = net.model.backbone.state_dict()
    assert trunk and all(torch.equal(v, state[prefix + k]) for k, v in trunk.items())


def test_offline_download_says_how_to_go_on():
    weights = torchvision.models.get_model_weights("resnet50").DEFAULT
    offline = mock.patch.object(type(weights), "get_state_dict", side_effect=urllib.error.URLError("no network"))
    with offline, pytest.raises(SegkitError) as err:
        torchvision_seg.TorchvisionSegmentation(num_classes=3, arch="fcn_resnet50", pretrained_backbone=True)
    message = str(err.value)
    assert "\n" not in message
    for fix in ("$TORCH_HOME/hub/checkpoints", "model.weights_path=", "model.pretrained_backbone=false"):
        assert fix in message
