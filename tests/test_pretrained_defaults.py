"""Backbone nets start from ImageNet weights by default, as smp and mmseg users expect; without internet the
error says how to go on; tests build them with random init (conftest.offline_init)."""

from __future__ import annotations

import re
import urllib.error
from unittest import mock

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from segkit import SegkitError
from segkit.build import instantiate_user_config
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
    elif str(cfg.get("backbone")).startswith("mit_"):  # SegFormer's MiT is not in torchvision: nothing to download
        assert cfg.pretrained is False and cfg.weights_path is None, "the authors' file comes by weights_path"
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


DOWNLOADING = [
    name
    for name in MODEL_CONFIGS
    if raw_model_config(name).get("pretrained") or raw_model_config(name).get("pretrained_backbone")
]


@pytest.mark.parametrize("name", DOWNLOADING)
def test_offline_advice_of_every_model_names_the_file_and_the_key_that_reads_it(name):
    """Every model choice that downloads weights, built as its config says with the network gone: one line naming
    the file it needs, model.weights_path=/path/to/<that file> (the key that reads it from disk, for every family)
    and the switch this config turns the download on with (pretrained_backbone for torchvision's nets)."""
    cfg = raw_model_config(name)
    cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "defaults"])
    switch = "pretrained_backbone" if cfg.get("pretrained_backbone") else "pretrained"
    offline = mock.patch.object(
        torchvision.models._api, "load_state_dict_from_url", side_effect=urllib.error.URLError("no network")
    )
    with offline, torch.device("meta"), pytest.raises(SegkitError) as err:
        instantiate_user_config(cfg, num_classes=3, in_channels=3)
    message = str(err.value)
    assert "\n" not in message, message
    url = re.search(r"\((https://\S+\.pth)\)", message).group(1)
    file = url.rsplit("/", 1)[1]
    assert f"model.weights_path=/path/to/{file}" in message, message
    assert f"model.{switch}=false" in message, message
    assert f"copy {file} to " in message and "$TORCH_HOME/hub/checkpoints" in message, message


def test_torchvision_nets_read_the_imagenet_trunk_file_from_weights_path(tmp_path):
    """What the offline advice of a tv_* model says works: its trunk's ImageNet file (torchvision's classifier state
    dict) given as model.weights_path loads into the trunk, with no download; the head stays as initialised."""
    name, prefix = torchvision_seg.BACKBONES["lraspp_mobilenet_v3_large"]
    classifier = torchvision.models.get_model(name, weights=None)
    path = tmp_path / "mobilenet_v3_large-5c1a4163.pth"
    torch.save(classifier.state_dict(), path)
    no_download = mock.patch.object(torchvision_seg, "download_state_dict", side_effect=AssertionError("download"))
    with no_download:
        net = torchvision_seg.TorchvisionSegmentation(
            num_classes=4, arch="lraspp_mobilenet_v3_large", pretrained_backbone=True, weights_path=str(path)
        )
    trunk = net.model.backbone.state_dict()
    source = classifier.state_dict()
    assert trunk and all(torch.equal(v, source[prefix + k]) for k, v in trunk.items())
