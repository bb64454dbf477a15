"""torchvision's own segmentation models behind segkit's net contract: the same parameters as torchvision's builds,
checkpoints of another class count, and learning on a fixed batch (through the MobileNet models: the wrapper has
no per-architecture code, so the ResNet ones are covered by the contract and parameter tests)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from segkit import SegkitError
from segkit.models.nets.torchvision_seg import TorchvisionSegmentation
from tests.models.net_checks import (
    MODEL_CONFIGS,
    QUICK_LEARNING,
    check_learns,
    config_maker,
    count_params,
    model_config,
    on_meta,
)

WRAPPERS = [name for name in MODEL_CONFIGS if name.startswith("tv_")]

# Parameters at 21 classes, measured; a change here should be deliberate.
PARAMS_21 = {
    "tv_fcn_resnet50": 35_322_218,
    "tv_deeplabv3_resnet50": 42_004_074,
    "tv_deeplabv3_mobilenet_v3_large": 11_029_328,
    "tv_lraspp_mobilenet_v3_large": 3_221_538,
}


def tv_count(arch: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_params(torchvision.models.get_model(arch, weights=None, weights_backbone=None, **kwargs))


@pytest.mark.parametrize("name", PARAMS_21)
def test_param_count_pinned(name):
    assert count_params(on_meta(config_maker(name), in_channels=3)) == PARAMS_21[name]


@pytest.mark.parametrize("name", WRAPPERS)
def test_wrappers_are_torchvision(name):
    cfg = model_config(name)
    aux = {"aux_loss": True} if cfg["aux"] else {}
    assert count_params(on_meta(config_maker(name), in_channels=3)) == tv_count(cfg["arch"], num_classes=21, **aux)


@pytest.mark.parametrize("name", ["tv_deeplabv3_mobilenet_v3_large", "tv_lraspp_mobilenet_v3_large"])
def test_learns(name):
    torch.manual_seed(0)
    check_learns(config_maker(name)(num_classes=4, in_channels=3), **QUICK_LEARNING)


def test_loads_checkpoint_with_other_class_count(tmp_path):
    """A saved 21-class torchvision LRASPP loads into a 5-class wrapper: all but the class layers."""
    path = tmp_path / "lraspp.pth"
    source = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=21
    )
    torch.save(source.state_dict(), path)
    net = TorchvisionSegmentation(
        num_classes=5, in_channels=4, arch="lraspp_mobilenet_v3_large", weights_path=str(path)
    )
    assert torch.equal(net.model.classifier.cbr[0].weight, source.classifier.cbr[0].weight)
    first = net.model.backbone["0"][0].weight
    assert first.shape[1] == 4 and torch.equal(first[:, :3], source.backbone["0"][0].weight)
    assert net.model.classifier.low_classifier.out_channels == 5


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(SegkitError, match=r"not found; fix model\.weights_path"):
        TorchvisionSegmentation(num_classes=3, arch="lraspp_mobilenet_v3_large", weights_path=str(tmp_path / "x.pth"))
