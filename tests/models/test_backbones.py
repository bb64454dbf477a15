"""The backbone contract: stage shapes, channels and strides per family, dilation as torchvision does it, weights
from a local file or torchvision's API, RGB-D first convolutions, and the trunk declarations nets build on
(``TRUNKS``, ``pyramid_indices``)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import (
    FAMILIES,
    TRUNKS,
    Backbone,
    adapt_first_conv,
    build_backbone,
    pyramid_indices,
    replace_first_conv,
    torchvision_model,
    vgg_conv_stages,
    vgg_fully_connected,
)


def feature_shapes(net: nn.Module, size: int = 64, in_channels: int = 3) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(f.shape[1:]) for f in net.eval()(torch.randn(1, in_channels, size, size))]


def check_contract(net: Backbone, size: int = 64, in_channels: int = 3) -> None:
    shapes = feature_shapes(net, size, in_channels)
    assert [s[0] for s in shapes] == net.channels
    assert [size // s[1] for s in shapes] == net.strides


@pytest.mark.parametrize(
    "name, output_stride",
    [("resnet18", 32), ("resnet18", 16), ("resnet34", 8), ("resnet50", 8), ("densenet121", 32), ("vgg16_bn", 32)]
    + [("mobilenet_v2", 32), ("mobilenet_v3_large", 32), ("mobilenet_v3_large", 16), ("mobilenet_v3_small", 32)]
    + [("convnext_tiny", 32), ("swin_t", 32), ("efficientnet_b0", 32), ("efficientnet_v2_s", 32)]
    + [("regnet_x_400mf", 32), ("regnet_y_400mf", 32)],
)
def test_every_family_gives_stage_features_with_their_channels_and_strides(name, output_stride):
    net = build_backbone(name, in_channels=4, output_stride=output_stride)
    check_contract(net, in_channels=4)
    assert net.strides[-1] == output_stride


@pytest.mark.parametrize(
    "name, channels, strides",
    [
        ("resnet18", [64, 128, 256, 512], [4, 8, 16, 32]),
        ("resnet152", [256, 512, 1024, 2048], [4, 8, 16, 32]),
        ("densenet121", [256, 512, 1024, 1024], [4, 8, 16, 32]),
        ("densenet161", [384, 768, 2112, 2208], [4, 8, 16, 32]),
        ("densenet169", [256, 512, 1280, 1664], [4, 8, 16, 32]),
        ("densenet201", [256, 512, 1792, 1920], [4, 8, 16, 32]),
        ("vgg16", [64, 128, 256, 512, 512], [2, 4, 8, 16, 32]),
        ("mobilenet_v2", [16, 24, 32, 96, 1280], [2, 4, 8, 16, 32]),
        ("mobilenet_v3_large", [16, 24, 40, 112, 960], [2, 4, 8, 16, 32]),
        ("convnext_tiny", [96, 192, 384, 768], [4, 8, 16, 32]),
        ("convnext_base", [128, 256, 512, 1024], [4, 8, 16, 32]),
        ("convnext_large", [192, 384, 768, 1536], [4, 8, 16, 32]),
        ("swin_b", [128, 256, 512, 1024], [4, 8, 16, 32]),
        ("swin_v2_b", [128, 256, 512, 1024], [4, 8, 16, 32]),
        ("efficientnet_b7", [32, 48, 80, 224, 2560], [2, 4, 8, 16, 32]),
        ("efficientnet_v2_l", [32, 64, 96, 224, 1280], [2, 4, 8, 16, 32]),
        ("regnet_x_32gf", [336, 672, 1344, 2520], [4, 8, 16, 32]),
        ("regnet_y_128gf", [528, 1056, 2904, 7392], [4, 8, 16, 32]),
    ],
)
def test_declared_channels_and_strides(name, channels, strides):
    with torch.device("meta"):
        net = build_backbone(name)
    assert (net.channels, net.strides) == (channels, strides)


@pytest.mark.parametrize(
    "name", ["resnet50", "densenet121", "vgg16", "mobilenet_v2", "convnext_tiny", "efficientnet_b0", "regnet_x_400mf"]
)
def test_backbone_holds_the_classifier_trunk_only(name):
    """Parameters: torchvision's classifier minus its fully connected head, plus the 4th input channel."""
    with torch.device("meta"):
        net = build_backbone(name, in_channels=4)
    with torch.device("cpu" if name.startswith("regnet") else "meta"):  # torchvision sizes RegNets by reading tensors
        full = torchvision.models.get_model(name, weights=None)
    head = full.fc if hasattr(full, "fc") else full.classifier
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    extra = first.out_channels * first.kernel_size[0] * first.kernel_size[1]
    count = sum(p.numel() for p in net.parameters())
    assert count == sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in head.parameters()) + extra


def test_resnet_keeps_the_stage_names_of_its_checkpoints():
    keys = build_backbone("resnet18").state_dict().keys()
    assert {"stem.0.weight", "stem.1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight"} <= set(keys)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_dilation_keeps_the_previous_rate_in_the_first_block(name):
    """torchvision's rule (``previous_dilation`` in Bottleneck layers), for BasicBlock ResNets too: the formerly
    strided conv keeps the previous rate, every conv after it gets the new one. Then the dilated net computes the
    undilated net's features exactly, on a grid 2x (layer3) and 4x (layer4) denser."""
    torch.manual_seed(0)
    plain = build_backbone(name, output_stride=32).eval()
    dilated = build_backbone(name, output_stride=8).eval()
    dilated.load_state_dict(plain.state_dict())
    if name in ("resnet18", "resnet34"):
        first3, first4 = dilated.layer3[0], dilated.layer4[0]
        assert (first3.conv1.dilation, first3.conv2.dilation, dilated.layer3[1].conv1.dilation) == (
            (1, 1),
            (2, 2),
            (2, 2),
        )
        assert (first4.conv1.dilation, first4.conv2.dilation, dilated.layer4[1].conv1.dilation) == (
            (2, 2),
            (4, 4),
            (4, 4),
        )
    else:  # torchvision's own dilation, the reference the BasicBlock nets follow
        assert [b.conv2.dilation[0] for b in dilated.layer4] == [2, 4, 4]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, _, c3, c4 = plain(x)
        _, _, d3, d4 = dilated(x)
    torch.testing.assert_close(d3[..., ::2, ::2], c3, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d4[..., ::4, ::4], c4, rtol=1e-4, atol=1e-4)


def test_vgg_conv_stages_share_the_backbone_modules():
    net = build_backbone("vgg11")
    stages = vgg_conv_stages(net)
    assert len(stages) == 5 and not any(isinstance(m, nn.MaxPool2d) for m in stages.modules())
    assert stages[0][0] is net["0"]


def test_unsupported_strides_and_names_are_clear_errors():
    for name in (
        "densenet121",
        "vgg16",
        "mobilenet_v2",
        "convnext_tiny",
        "swin_t",
        "efficientnet_b0",
        "regnet_x_400mf",
    ):
        with pytest.raises(SegkitError, match=f"output_stride=8: the {name} backbone supports"):
            build_backbone(name, output_stride=8)
    with pytest.raises(SegkitError, match="model.backbone='resnet51'; choose one of"):
        build_backbone("resnet51")
    with pytest.raises(SegkitError, match="unknown torchvision model"):
        torchvision_model("resnet51")


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
    net = build_backbone("resnet18", in_channels=4, output_stride=8, weights_path=str(resnet18_file))
    first = net.stem[0].weight
    assert torch.equal(first[:, :3], saved["conv1.weight"])
    assert torch.allclose(first[:, 3], saved["conv1.weight"].mean(1))
    assert torch.equal(net.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])


def test_mobilenet_weights_path(tmp_path):
    state = torchvision.models.mobilenet_v3_large().state_dict()
    torch.save(state, tmp_path / "mnv3.pth")
    net = build_backbone("mobilenet_v3_large", output_stride=16, weights_path=str(tmp_path / "mnv3.pth"))
    assert torch.equal(net["16"][0].weight, state["features.16.0.weight"])


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
    net = build_backbone("densenet121", weights_path=str(tmp_path / "densenet121.pth"))
    assert torch.equal(net.block2.denselayer3.conv2.weight, state["features.denseblock2.denselayer3.conv2.weight"])


def test_vgg_loads_features_and_fc_from_full_classifier_file(tmp_path):
    """A whole VGG state dict: the backbone takes ``features.*`` under their own indices, FCN's fc6/fc7 the
    classifier's first two Linear layers, reshaped."""
    state = {f"features.{k}": torch.randn_like(v) for k, v in build_backbone("vgg11").state_dict().items()}
    state["classifier.0.weight"] = torch.randn(4096, 25088)
    state["classifier.0.bias"] = torch.randn(4096)
    state["classifier.3.weight"] = torch.randn(4096, 4096)
    state["classifier.3.bias"] = torch.randn(4096)
    torch.save(state, tmp_path / "vgg11.pth")
    net = build_backbone("vgg11", weights_path=str(tmp_path / "vgg11.pth"))
    assert torch.equal(net["3"].weight, state["features.3.weight"])
    fc6, fc7 = vgg_fully_connected("vgg11", weights_path=str(tmp_path / "vgg11.pth"))
    assert torch.equal(fc6.weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(fc7.bias, state["classifier.3.bias"])
    del state["classifier.3.weight"]
    torch.save(state, tmp_path / "features_only.pth")
    with pytest.raises(SegkitError, match="has no VGG classifier"):
        vgg_fully_connected("vgg11", weights_path=str(tmp_path / "features_only.pth"))


def test_missing_and_mismatched_files_are_clear_errors(tmp_path, resnet18_file):
    with pytest.raises(SegkitError, match=r"missing\.pth' not found; fix model\.weights_path"):
        build_backbone("resnet18", weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(SegkitError, match=r"resnet18\.pth' does not fit ResNet"):
        build_backbone("resnet34", weights_path=str(resnet18_file))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(SegkitError, match=r"weights file '.*junk\.pth' is not a torch.save file"):
        build_backbone("densenet121", weights_path=str(tmp_path / "junk.pth"))


@pytest.mark.parametrize(
    "name",
    ["resnet18", "densenet121", "vgg11", "mobilenet_v2", "convnext_tiny", "swin_t", "efficientnet_b0"]
    + ["regnet_x_400mf"],
)
def test_pretrained_without_internet_says_what_to_do(monkeypatch, name):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(SegkitError, match=f"could not download {name} weights") as err:
        build_backbone(name, pretrained=True)
    assert "\n" not in str(err.value)
    for fix in ("$TORCH_HOME/hub/checkpoints", "model.weights_path=", "model.pretrained=false"):
        assert fix in str(err.value)


# Per family, its smallest model: where torchvision keeps the first convolution and one deep tensor, and where
# the backbone keeps them.
LOCAL_WEIGHTS = [
    ("convnext_tiny", "features.0.0.weight", "stem.0.weight", "features.7.2.block.5.weight", "stage4.2.block.5.weight"),
    (
        "swin_t",
        "features.0.0.weight",
        "stem.0.weight",
        "features.5.5.attn.qkv.weight",
        "stage3.blocks.5.attn.qkv.weight",
    ),
    ("efficientnet_b0", "features.0.0.weight", "0.0.weight", "features.8.0.weight", "8.0.weight"),
    (
        "regnet_x_400mf",
        "stem.0.weight",
        "stem.0.weight",
        "trunk_output.block4.block4-11.f.c.0.weight",
        "block4.block4-11.f.c.0.weight",
    ),
]


@pytest.mark.parametrize("name, first, first_here, deep, deep_here", LOCAL_WEIGHTS, ids=[w[0] for w in LOCAL_WEIGHTS])
def test_weights_path_loads_a_torchvision_state_dict_and_keeps_rgb_filters(
    tmp_path, name, first, first_here, deep, deep_here
):
    """``weights_path``: the state dict of the same torchvision model, saved locally, loads into the trunk; an RGB-D
    trunk keeps its RGB filters and gives the depth channel their mean."""
    state = torchvision.models.get_model(name, weights=None).state_dict()
    torch.save(state, tmp_path / f"{name}.pth")
    net = build_backbone(name, in_channels=4, weights_path=str(tmp_path / f"{name}.pth"))
    own = net.state_dict()
    assert torch.equal(own[first_here][:, :3], state[first])
    assert torch.allclose(own[first_here][:, 3], state[first].mean(1))
    assert torch.equal(own[deep_here], state[deep])


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_returns_normalised_nchw_maps_for_any_input_size(name):
    """An odd input that is a multiple of neither the patch, the window nor 32 gives NCHW maps of ceil(size /
    stride), each normalised over its channels by its stage's LayerNorm; the next stage reads the stream before
    that norm, as in the classifier."""
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        maps = net(x)
        assert [tuple(m.shape[1:]) for m in maps] == [(96, 12, 16), (192, 6, 8), (384, 3, 4), (768, 2, 2)]
        for m in maps:
            torch.testing.assert_close(m.mean(1), torch.zeros_like(m[:, 0]), atol=1e-4, rtol=0)
        torch.nn.init.zeros_(net.stage1.norm.weight)
        again = net(x)
    assert not again[0].any()
    for before, after in zip(maps[1:], again[1:]):
        torch.testing.assert_close(after, before)


def test_swin_keeps_sane_keys_and_the_classifier_norm():
    """Stages by name; the last stage's norm is the classifier's final LayerNorm (pretrained with it), the other
    three are new: the trunk holds the classifier minus its head, plus those three norms."""
    with torch.device("meta"):
        net = build_backbone("swin_t")
        full = torchvision.models.swin_t()
    keys = set(net.state_dict())
    assert {"stem.0.weight", "stage1.blocks.0.attn.qkv.weight", "stage2.downsample.reduction.weight"} <= keys
    assert {f"stage{i}.norm.weight" for i in (1, 2, 3, 4)} <= keys
    new_norms = sum(2 * c for c in net.channels[:3])
    count = sum(p.numel() for p in net.parameters())
    assert (
        count == sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in full.head.parameters()) + new_norms
    )


def test_trunks_name_every_family_and_each_name_once():
    assert tuple(name for archs, _ in FAMILIES for name in archs) == TRUNKS
    assert len(set(TRUNKS)) == len(TRUNKS)
    for name in ("resnet50", "convnext_tiny", "swin_v2_b", "efficientnet_v2_l", "regnet_y_128gf", "regnet_x_400mf"):
        assert name in TRUNKS
    assert {n for n in torchvision.models.list_models(torchvision.models) if n.startswith("regnet")} <= set(TRUNKS)


def test_pyramid_indices_pick_the_maps_at_the_strides_asked():
    with torch.device("meta"):
        vgg, resnet = build_backbone("vgg11"), build_backbone("resnet18", output_stride=8)
    assert pyramid_indices(vgg) == [1, 2, 3, 4]
    assert pyramid_indices(vgg, (8, 32)) == [2, 4]
    assert pyramid_indices(resnet, (4, 8)) == [0, 3]  # the deepest map at stride 8
    with pytest.raises(SegkitError) as err:
        pyramid_indices(resnet)
    assert "\n" not in str(err.value) and "strides [4, 8, 8, 8], not at [16, 32]" in str(err.value)
