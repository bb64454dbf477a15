"""Model zoo I (part a): FCN on ResNet/DenseNet, SegNet, PSPNet, DeepLabv3(+), torchvision's own models.

Nets are built from their real ``conf/model`` files. The ResNet-101 variants share every line of code
with their ResNet-50 siblings, so they get parameter counts and a framework run, not the slower checks.
To fit a 2-core CPU budget, the 25-step learning check trains the dilated heads (PSPNet, DeepLabv3/v3+)
on ResNet-18 instead of ResNet-50 (the head code is the same; only the torchvision trunk is deeper), and
covers torchvision's wrapper through its MobileNet models (the wrapper has no per-architecture code).
"""

from __future__ import annotations

from functools import partial

import hydra
import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from segkit import SegkitError
from segkit.models.blocks import main_logits
from segkit.models.nets.deeplab import DeepLabV3, DeepLabV3Plus
from segkit.models.nets.fcn import FCN
from segkit.models.nets.pspnet import PSPNet
from segkit.models.nets.torchvision_seg import TorchvisionSegmentation
from tests.conftest import CONF_DIR, compose_config
from tests.models.zoo_checks import check_learns, check_output_shapes, count_params

CONFIGS = [
    "fcn8_resnet50",
    "fcn8_resnet101",
    "fcn8_densenet121",
    "segnet",
    "pspnet_resnet50",
    "pspnet_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "tv_fcn_resnet50",
    "tv_deeplabv3_resnet50",
    "tv_deeplabv3_mobilenet_v3_large",
    "tv_lraspp_mobilenet_v3_large",
]
CHECKED = [name for name in CONFIGS if not name.endswith("resnet101")]

# The learning check: config name -> overrides that keep it affordable on CPU (see the module docstring).
LEARNING = {
    "fcn8_resnet50": {},
    "fcn8_densenet121": {},
    "segnet": {},
    "pspnet_resnet50": {"backbone": "resnet18"},
    "deeplabv3_resnet50": {"backbone": "resnet18"},
    "deeplabv3plus_resnet50": {"backbone": "resnet18"},
    "tv_deeplabv3_mobilenet_v3_large": {},
    "tv_lraspp_mobilenet_v3_large": {},
}
# Adam learning rates for the 25-step check where the default 1e-3 is not the right scale.
LEARNING_RATES: dict[str, float] = {}

# Parameters at 21 classes, measured; a change here should be deliberate.
PARAMS_21 = {
    "fcn8_vgg": 134_489_759,
    "fcn8_resnet50": 33_116_319,
    "fcn8_resnet101": 52_108_447,
    "fcn8_densenet121": 9_478_367,
    "segnet": 29_451_413,
    "pspnet_resnet50": 48_957_802,
    "pspnet_resnet101": 67_949_930,
    "deeplabv3_resnet50": 42_004_074,
    "deeplabv3_resnet101": 60_996_202,
    "deeplabv3plus_resnet50": 26_682_725,  # separable ASPP + decoder; segmentation_models_pytorch's count at 19
    "deeplabv3plus_resnet101": 45_674_853,
    "tv_fcn_resnet50": 35_322_218,
    "tv_deeplabv3_resnet50": 42_004_074,
    "tv_deeplabv3_mobilenet_v3_large": 11_029_328,
    "tv_lraspp_mobilenet_v3_large": 3_221_538,
}
PUBLISHED = {"fcn8_vgg": 134e6, "segnet": 29.5e6}  # Long et al. 2015 (134M); Badrinarayanan et al. 2017 (29.5M)


def model_config(name: str):
    """``conf/model/<name>.yaml`` as the framework instantiates it: ``aux_weights`` split off for the module,
    random init (``pretrained: false``) so the tests run offline."""
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    if "pretrained" in cfg:
        cfg.pretrained = False
    aux_weights = cfg.pop("aux_weights", None)
    return cfg, (OmegaConf.to_container(aux_weights) if aux_weights else None)


def maker(name: str):
    cfg, _ = model_config(name)
    return partial(hydra.utils.instantiate, cfg)


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    """The net without allocating or initialising weights: for counting parameters fast."""
    with torch.device("meta"):
        return maker(name)(**{"num_classes": 21, "in_channels": 3, **kwargs})


def tv_count(arch: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_params(torchvision.models.get_model(arch, weights=None, weights_backbone=None, **kwargs))


@pytest.mark.parametrize("name", CHECKED + ["fcn8_vgg"])
def test_output_shapes(name):
    torch.manual_seed(0)
    check_output_shapes(maker(name))


@pytest.mark.parametrize("name", LEARNING)
def test_learns(name):
    torch.manual_seed(0)
    _, aux_weights = model_config(name)
    net = maker(name)(num_classes=4, in_channels=3, **LEARNING[name])
    check_learns(net, steps=25, lr=LEARNING_RATES.get(name, 1e-3), aux_weights=aux_weights)


def test_aux_output_in_train_mode_only():
    net = PSPNet(num_classes=3, backbone="resnet18")
    x = torch.randn(2, 3, 33, 47)
    out = net.train()(x)
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 3, 33, 47)
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 33, 47)


@pytest.mark.parametrize("name", PARAMS_21)
def test_param_count_pinned(name):
    assert count_params(on_meta(name)) == PARAMS_21[name]
    if name in PUBLISHED:
        assert abs(PARAMS_21[name] / PUBLISHED[name] - 1) < 0.05


def test_deeplabv3plus_separable_convs():
    """The published layout is atrous depthwise-separable; separable=False is the full-conv variant (40.4M)."""
    with torch.device("meta"):
        full = DeepLabV3Plus(21, separable=False)
        sep = DeepLabV3Plus(21)
    assert count_params(full) == 40_352_181
    depthwise = [m for m in sep.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert sorted(m.dilation[0] for m in depthwise) == [1, 1, 6, 12, 18]  # three ASPP branches, two decoder convs
    with torch.device("meta"):
        assert count_params(DeepLabV3Plus(21, decoder_convs=1)) == 26_682_725 - (256 * 9 + 256 * 256 + 2 * 256)
    with pytest.raises(SegkitError, match="decoder_convs"):
        DeepLabV3Plus(21, decoder_convs=0)


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
@pytest.mark.parametrize("aux", [True, False])
def test_deeplabv3_matches_torchvision(arch, aux):
    with torch.device("meta"):
        ours = DeepLabV3(num_classes=21, backbone=arch, aux=aux)
    assert count_params(ours) == tv_count(f"deeplabv3_{arch}", num_classes=21, aux_loss=aux)


def test_fcn_resnet50_matches_torchvision_plus_learned_upsampler():
    """FCN-32s on ResNet-50 is torchvision's fcn_resnet50 head on an undilated backbone; the only extra
    parameters are the learnable 32x bilinear upsampler (K x K x 64 x 64)."""
    with torch.device("meta"):
        ours = FCN(num_classes=21, variant="32s", backbone="resnet50")
    assert count_params(ours) == tv_count("fcn_resnet50", num_classes=21, aux_loss=False) + 21 * 21 * 64 * 64


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("tv_")])
def test_torchvision_wrappers_are_torchvision(name):
    cfg, _ = model_config(name)
    assert count_params(on_meta(name)) == tv_count(cfg.arch, num_classes=21, **({"aux_loss": True} if cfg.aux else {}))


def test_backbone_override_composes():
    """``model=fcn8_vgg model.backbone=resnet101`` gives FCN-8s on ResNet-101 (dropout aside, fcn8_resnet101)."""
    cfg = compose_config("train", ["model=fcn8_vgg", "model.backbone=resnet101"])
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model, num_classes=21, in_channels=3)
    assert count_params(net) == PARAMS_21["fcn8_resnet101"]
    for backbone in ("densenet201", "resnet18"):
        with torch.device("meta"):
            assert count_params(FCN(21, backbone=backbone)) > 0


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


@pytest.mark.parametrize("net_cls", [PSPNet, DeepLabV3])
def test_weights_path_changes_outputs(net_cls, resnet50_file):
    x = torch.randn(2, 3, 40, 40)
    torch.manual_seed(0)
    random_init = net_cls(num_classes=3, backbone="resnet50").eval()
    torch.manual_seed(0)
    loaded = net_cls(num_classes=3, backbone="resnet50", weights_path=str(resnet50_file)).eval()
    saved = torch.load(resnet50_file, weights_only=True)
    assert torch.equal(loaded.backbone.layer4[0].conv2.weight, saved["layer4.0.conv2.weight"])
    with torch.no_grad():
        assert not torch.allclose(main_logits(random_init(x)), main_logits(loaded(x)))


def test_fcn_weights_path_loads_backbone(resnet50_file):
    net = FCN(num_classes=3, backbone="resnet50", weights_path=str(resnet50_file))
    saved = torch.load(resnet50_file, weights_only=True)
    assert torch.equal(net.backbone.layer2[1].conv1.weight, saved["layer2.1.conv1.weight"])


def test_torchvision_wrapper_loads_checkpoint_with_other_class_count(tmp_path):
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


@pytest.mark.parametrize(
    "make",
    [
        partial(FCN, backbone="resnet50"),
        partial(TorchvisionSegmentation, arch="lraspp_mobilenet_v3_large"),
    ],
)
def test_missing_weights_file_is_a_clear_error(make, tmp_path):
    with pytest.raises(SegkitError, match=r"not found; fix model\.weights_path"):
        make(num_classes=3, weights_path=str(tmp_path / "missing.pth"))


def test_wrong_weights_file_is_a_clear_error(resnet50_file):
    with pytest.raises(SegkitError, match="does not fit"):
        PSPNet(num_classes=3, backbone="resnet101", weights_path=str(resnet50_file))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_one_batch(name, tiny_cfg):
    from segkit.training import train

    train(tiny_cfg(f"model={name}", "debug=fdr"))
