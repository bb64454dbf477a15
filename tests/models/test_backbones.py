"""Backbones: feature shapes/strides, weights from a local file or torchvision's API, RGB-D first convs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from segkit import SegkitError
from segkit.models import backbones
from segkit.models.backbones import (
    DenseNetBackbone,
    ResNetBackbone,
    VGGBackbone,
    adapt_first_conv,
    build_backbone,
    replace_first_conv,
    torchvision_model,
    vgg_features,
)


def feature_shapes(net: nn.Module, size: int = 64, in_channels: int = 3) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(f.shape[1:]) for f in net.eval()(torch.randn(1, in_channels, size, size))]


@pytest.mark.parametrize("arch, output_stride", [("resnet18", 32), ("resnet18", 16), ("resnet18", 8), ("resnet50", 8)])
def test_resnet_strides_and_channels(arch, output_stride):
    """resnet18/34 are dilated by hand, the bottleneck ResNets by torchvision: both paths."""
    net = ResNetBackbone(arch, in_channels=4, output_stride=output_stride)
    shapes = feature_shapes(net, in_channels=4)
    assert [s[0] for s in shapes] == net.channels
    assert [64 // s[1] for s in shapes] == net.strides
    assert net.strides[-1] == output_stride


def test_densenet_features():
    net = DenseNetBackbone("densenet121", in_channels=4)
    shapes = feature_shapes(net, in_channels=4)
    assert [s[0] for s in shapes] == net.channels == [256, 512, 1024, 1024]
    assert [64 // s[1] for s in shapes] == net.strides == [4, 8, 16, 32]


@pytest.mark.parametrize(
    "arch, channels", [("densenet169", [256, 512, 1280, 1664]), ("densenet201", [256, 512, 1792, 1920])]
)
def test_densenet_channels(arch, channels):
    with torch.device("meta"):
        assert DenseNetBackbone(arch).channels == channels


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn", "vgg19_bn"])
def test_vgg_features(arch):
    net = VGGBackbone(arch, in_channels=4)
    shapes = feature_shapes(net, in_channels=4)
    assert [s[0] for s in shapes] == net.channels
    assert [64 // s[1] for s in shapes] == net.strides == [2, 4, 8, 16, 32]
    with torch.device("meta"):
        reference = torchvision.models.get_model(arch, weights=None).features
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters()) + 64 * 9


def test_build_backbone_by_name():
    assert isinstance(build_backbone("resnet34", output_stride=16), ResNetBackbone)
    assert isinstance(build_backbone("densenet121"), DenseNetBackbone)
    with pytest.raises(SegkitError, match="DenseNet backbones support only 32"):
        build_backbone("densenet121", output_stride=8)
    with pytest.raises(SegkitError, match="model.backbone='vgg16'"):
        build_backbone("vgg16")


def test_adapt_first_conv_keeps_rgb_and_fills_extra_with_mean():
    conv = nn.Conv2d(3, 8, 3, bias=True)
    new = adapt_first_conv(conv, 5)
    assert new.in_channels == 5
    assert torch.equal(new.weight[:, :3], conv.weight)
    assert torch.allclose(new.weight[:, 3:], conv.weight.mean(1, keepdim=True).expand(-1, 2, -1, -1))
    assert torch.equal(new.bias, conv.bias)
    assert adapt_first_conv(conv, 3) is conv


def test_replace_first_conv_in_nested_model():
    model = torchvision.models.mobilenet_v3_large()
    original = model.features[0][0].weight.clone()
    replace_first_conv(model, 4)
    assert model.features[0][0].in_channels == 4
    assert torch.equal(model.features[0][0].weight[:, :3], original)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
    return path


def test_resnet_weights_path_keeps_rgb_filters(resnet18_file):
    saved = torch.load(resnet18_file, weights_only=True)["state_dict"]
    net = ResNetBackbone("resnet18", in_channels=4, output_stride=8, weights_path=str(resnet18_file))
    first = net.stem[0].weight
    assert torch.equal(first[:, :3], saved["conv1.weight"])
    assert torch.allclose(first[:, 3], saved["conv1.weight"].mean(1))
    assert torch.equal(net.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])


def test_densenet_loads_legacy_checkpoint_keys(tmp_path):
    """torchvision's published DenseNet files name dense-layer parts 'norm.1', 'conv.2': they still load."""
    state = torchvision.models.densenet121().state_dict()
    legacy = {
        k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert legacy.keys() != state.keys()
    torch.save(legacy, tmp_path / "densenet121.pth")
    net = DenseNetBackbone("densenet121", weights_path=str(tmp_path / "densenet121.pth"))
    assert torch.equal(net.block2.denselayer3.conv2.weight, state["features.denseblock2.denselayer3.conv2.weight"])


def test_vgg_features_load_from_full_classifier_file(tmp_path):
    """A whole VGG state dict loads; its classifier entries (unused by conv-only nets) are skipped."""
    state = {f"features.{k}": torch.randn_like(v) for k, v in vgg_features("vgg11").state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 25088)
    torch.save(state, tmp_path / "vgg11.pth")
    features = vgg_features("vgg11", weights_path=str(tmp_path / "vgg11.pth"))
    assert torch.equal(features[3].weight, state["features.3.weight"])


def test_missing_and_mismatched_files_are_clear_errors(tmp_path, resnet18_file):
    with pytest.raises(SegkitError, match=r"missing\.pth' not found; fix model\.weights_path"):
        ResNetBackbone("resnet18", weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(SegkitError, match=r"resnet18\.pth' does not fit ResNet"):
        ResNetBackbone("resnet34", weights_path=str(resnet18_file))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(SegkitError, match="could not be read"):
        DenseNetBackbone("densenet121", weights_path=str(tmp_path / "junk.pth"))


def test_pretrained_without_internet_says_what_to_do(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(SegkitError, match=r"could not download resnet18 weights .*model\.weights_path"):
        torchvision_model("resnet18", pretrained=True)
    with pytest.raises(SegkitError, match="could not download densenet121"):
        DenseNetBackbone("densenet121", pretrained=True)


def test_unknown_names_are_clear_errors():
    with pytest.raises(SegkitError, match="unknown torchvision model"):
        torchvision_model("resnet51")
    with pytest.raises(SegkitError, match="not a DenseNet"):
        DenseNetBackbone("resnet50")
    with pytest.raises(SegkitError, match="not a VGG"):
        backbones.vgg_features("resnet50")
