"""FCN (Long et al., 2015) on VGG16, ResNet and DenseNet trunks: parameter counts against the paper and torchvision,
backbone swaps by override, local weights files, and learning on a fixed batch."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torchvision

from segkit import SegkitError
from segkit.models.nets.fcn import FCN
from tests.conftest import compose_config
from tests.models.net_checks import QUICK_LEARNING, check_learns, config_maker, count_params, on_meta

# Parameters at 21 classes, measured; a change here should be deliberate.
PARAMS_21 = {
    "fcn8_vgg": 134_489_759,
    "fcn8_resnet50": 33_116_319,
    "fcn8_resnet101": 52_108_447,
    "fcn8_densenet121": 9_478_367,
}
PUBLISHED = {"fcn8_vgg": 134e6}  # Long et al. 2015, Table 1: FCN-8s on VGG16, 134M


@pytest.mark.parametrize("name", PARAMS_21)
def test_param_count_pinned(name):
    assert count_params(on_meta(config_maker(name), in_channels=3)) == PARAMS_21[name]
    if name in PUBLISHED:
        assert abs(PARAMS_21[name] / PUBLISHED[name] - 1) < 0.05


@pytest.mark.parametrize("name", ["fcn8_resnet50", "fcn8_densenet121"])
def test_learns(name):
    torch.manual_seed(0)
    check_learns(config_maker(name)(num_classes=4, in_channels=3), **QUICK_LEARNING)


def test_fcn_resnet50_matches_torchvision_plus_learned_upsampler():
    """FCN-32s on ResNet-50 is torchvision's fcn_resnet50 head on an undilated backbone; the only extra
    parameters are the learnable 32x bilinear upsampler (K x K x 64 x 64)."""
    with torch.device("meta"):
        ours = FCN(num_classes=21, variant="32s", backbone="resnet50")
        theirs = torchvision.models.get_model("fcn_resnet50", weights=None, weights_backbone=None, num_classes=21)
    assert count_params(ours) == count_params(theirs) + 21 * 21 * 64 * 64


def test_backbone_override_composes():
    """``model=fcn8_vgg model.backbone=resnet101`` gives FCN-8s on ResNet-101 (dropout aside, fcn8_resnet101)."""
    import hydra

    cfg = compose_config("train", ["model=fcn8_vgg", "model.backbone=resnet101", "model.pretrained=false"])
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model, num_classes=21, in_channels=3)
    assert count_params(net) == PARAMS_21["fcn8_resnet101"]
    for backbone in ("densenet201", "resnet18"):
        with torch.device("meta"):
            assert count_params(FCN(21, backbone=backbone)) > 0


def test_weights_path_loads_backbone(resnet50_file):
    net = FCN(num_classes=3, backbone="resnet50", weights_path=str(resnet50_file))
    saved = torch.load(resnet50_file, weights_only=True)
    assert torch.equal(net.backbone.layer2[1].conv1.weight, saved["layer2.1.conv1.weight"])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(SegkitError, match=r"not found; fix model\.weights_path"):
        partial(FCN, backbone="resnet50")(num_classes=3, weights_path=str(tmp_path / "missing.pth"))
