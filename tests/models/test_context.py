"""Context-aggregating nets on dilated or pyramid features - PSPNet, DeepLabv3/v3+, GCN, DUC-HDC, EncNet (+JPU),
DRN-C-26, RefineNet, semantic FPN: their published layouts (dilation rates, head layers, parameter counts against
the papers and torchvision), local weights files, and learning on a fixed batch.

The learning checks train the heads on ResNet-18 instead of the configs' ResNet-50/101 (the head code is the same;
only the torchvision trunk is deeper); the configs' own backbones are built and run in test_model_contract.py.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError
from segkit.models.blocks import main_logits
from segkit.models.nets.deeplab import DeepLabV3, DeepLabV3Plus
from segkit.models.nets.drn import DRNC26, DRNC26Backbone
from segkit.models.nets.duc_hdc import DUCHDC
from segkit.models.nets.encnet import EncNet, Encoding
from segkit.models.nets.fpn import SemanticFPN
from segkit.models.nets.gcn import GCN
from segkit.models.nets.pspnet import PSPNet
from segkit.models.nets.refinenet import RefineNet
from segkit.models.targets import class_presence
from tests.models.net_checks import (
    QUICK_LEARNING,
    check_learns,
    check_output_shapes,
    config_maker,
    count_params,
    fixed_batch,
    on_meta,
)

# torchvision's trunks without their fc layer: ResNet-50 / 101 / 152.
TRUNKS = {"resnet50": 23_508_032, "resnet101": 42_500_160, "resnet152": 58_143_808}

# Parameters at 21 classes, measured; a change here should be deliberate. No counts are published for most of
# these (GCN, DUC-HDC, EncNet and PSPNet report accuracy only, and EncNet's own ResNets have a deep stem unlike
# torchvision's); they check by hand as the trunk plus the head, e.g. GCN's head = 4 GCN blocks
# 294*(256+512+1024+2048) + 4*6,258, 9 BR blocks of 7,980 and 5 deconvs of 7,056 = 1,261,092, and DUC-HDC's head
# = 4 dilated convs of 2048*21*64*9 + 21*64 = 99,095,808 (test_duc_head_follows_the_authors_code).
PARAMS_21 = {
    "pspnet_resnet50": 48_957_802,
    "pspnet_resnet101": 67_949_930,
    "deeplabv3_resnet50": 42_004_074,
    "deeplabv3_resnet101": 60_996_202,
    "deeplabv3plus_resnet50": 26_682_725,  # separable ASPP + decoder; segmentation_models_pytorch's count at 19
    "deeplabv3plus_resnet101": 45_674_853,
    "gcn_resnet50": 24_769_124,
    "gcn_resnet101": 43_761_252,
    "gcn_resnet152": 59_404_900,
    "duc_hdc_resnet101": 141_595_968,
    "duc_hdc_resnet152": 157_239_616,
    "encnet_resnet50": 35_875_295,
    "encnet_resnet101": 54_867_423,
    "drn_c_26": 20_624_357,
    "fpn_resnet50": 28_478_933,
    "refinenet_resnet101": 118_010_965,
}
# RefineNet-101: 118M (Nekrasov, Shen & Reid, "Light-Weight RefineNet", BMVC 2018, Table 1).
PUBLISHED = {"refinenet_resnet101": 118e6}


@pytest.mark.parametrize("name", PARAMS_21)
def test_param_count_pinned(name):
    assert count_params(on_meta(config_maker(name), in_channels=3)) == PARAMS_21[name]
    if name in PUBLISHED:
        assert abs(PARAMS_21[name] / PUBLISHED[name] - 1) < 0.05


# name -> (net at 4 classes, keyword arguments of check_learns beyond QUICK_LEARNING)
LEARNERS = {
    "pspnet": (partial(PSPNet, backbone="resnet18"), {}),
    "deeplabv3": (partial(DeepLabV3, backbone="resnet18"), {}),
    "deeplabv3plus": (partial(DeepLabV3Plus, backbone="resnet18"), {}),
    "gcn": (partial(GCN, backbone="resnet18"), {}),
    "duc_hdc": (partial(DUCHDC, backbone="resnet18"), {}),
    "encnet": (partial(EncNet, backbone="resnet18"), {"aux_weights": {"aux": 0.2}}),
    "encnet_jpu": (partial(EncNet, backbone="resnet18", jpu=True, head_channels=128), {}),
    "drn_c_26_narrow": (partial(DRNC26, channels=(8, 16, 32, 32, 64, 64, 64, 64)), {}),
    "refinenet_narrow": (partial(RefineNet, backbone="resnet18", features=64, top_features=128), {}),
    # the default chain's widths (256, 512 at the top) on a ResNet-18: the ResNet-101 default trains one batch in
    # the contract test; Adam over its 118M parameters here cost ~25 s for no further check
    "refinenet_default_widths": (partial(RefineNet, backbone="resnet18"), {"lr": 3e-4}),
    "fpn": (partial(SemanticFPN, backbone="resnet18"), {}),
}


@pytest.mark.parametrize("name", LEARNERS)
def test_learns(name):
    make, kwargs = LEARNERS[name]
    torch.manual_seed(0)
    check_learns(make(num_classes=4, in_channels=3), **QUICK_LEARNING, **kwargs)


# Options and variants that no config selects, on ResNet-18 (the shape contract does not depend on the depth).
VARIANTS = {
    "encnet_no_aux_no_se": partial(EncNet, backbone="resnet18", aux=False, se=False),
    "encnet_jpu": partial(EncNet, backbone="resnet18", jpu=True, head_channels=128),
    "duc_hdc_one_conv_bn_relu": partial(DUCHDC, backbone="resnet18", duc_dilations=(1,), duc_norm=True),
    "fpn_no_output_convs": partial(SemanticFPN, backbone="resnet18", output_convs=False),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_output_shapes(name):
    torch.manual_seed(0)
    check_output_shapes(VARIANTS[name])


# PSPNet, DeepLabv3/v3+


def test_deeplabv3plus_separable_convs():
    """The published layout is atrous depthwise-separable; separable=False is the full-conv variant (40.4M)."""
    with torch.device("meta"):
        full = DeepLabV3Plus(21, separable=False)
        sep = DeepLabV3Plus(21)
    assert count_params(full) == 40_352_181
    depthwise = [m for m in sep.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert sorted(m.dilation[0] for m in depthwise) == [1, 1, 6, 12, 18]  # three ASPP branches, two decoder convs
    with torch.device("meta"):
        assert count_params(DeepLabV3Plus(21, decoder_convs=1)) == 26_682_725 - (256 * 9 + 256 * 256 + 2 * 256)
    with pytest.raises(SegkitError, match="decoder_convs"):
        DeepLabV3Plus(21, decoder_convs=0)


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
@pytest.mark.parametrize("aux", [True, False])
def test_deeplabv3_matches_torchvision(arch, aux):
    import torchvision

    with torch.device("meta"):
        ours = DeepLabV3(num_classes=21, backbone=arch, aux=aux)
        theirs = torchvision.models.get_model(
            f"deeplabv3_{arch}", weights=None, weights_backbone=None, num_classes=21, aux_loss=aux
        )
    assert count_params(ours) == count_params(theirs)


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


def test_wrong_weights_file_is_a_clear_error(resnet50_file):
    with pytest.raises(SegkitError, match="does not fit"):
        PSPNet(num_classes=3, backbone="resnet101", weights_path=str(resnet50_file))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(SegkitError, match=r"not found; fix model\.weights_path"):
        PSPNet(num_classes=3, backbone="resnet18", weights_path=str(tmp_path / "missing.pth"))


# GCN


def test_gcn_bad_kernel_size_is_a_clear_error():
    with pytest.raises(SegkitError, match="model.kernel_size"):
        GCN(5, backbone="resnet18", kernel_size=4)


# DUC-HDC


def test_hybrid_dilation_rates():
    with torch.device("meta"):
        net = DUCHDC(21, backbone="resnet101")
    layer3 = [block.conv2.dilation[0] for block in net.backbone.layer3]
    layer4 = [block.conv2.dilation[0] for block in net.backbone.layer4]
    assert layer3 == [(1, 2, 5, 9)[i % 4] for i in range(23)]
    assert layer4 == [5, 9, 17]
    blocks = [*net.backbone.layer3, *net.backbone.layer4]
    assert all(block.conv2.padding == block.conv2.dilation and block.conv2.stride == (1, 1) for block in blocks)


def test_duc_head_follows_the_authors_code():
    """TuSimple-DUC's head: four 3x3 convs dilated 6/12/18/24, each 2048 -> K * 8^2 with a bias, summed, then the
    reshape to full resolution - no BatchNorm or ReLU. Its parameters are the trunk plus those four convs."""
    with torch.device("meta"):
        net = DUCHDC(21, backbone="resnet101")
    convs = list(net.duc.convs)
    assert [conv.dilation[0] for conv in convs] == [6, 12, 18, 24]
    assert all(c.kernel_size == (3, 3) and c.padding == c.dilation and c.bias is not None for c in convs)
    assert all(c.in_channels == 2048 and c.out_channels == 21 * 64 for c in convs)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in net.duc.modules())
    assert count_params(net) == TRUNKS["resnet101"] + 4 * (2048 * 21 * 64 * 9 + 21 * 64)
    with torch.device("meta"):
        single = DUCHDC(21, backbone="resnet101", duc_dilations=(1,))
    assert count_params(single) == TRUNKS["resnet101"] + 2048 * 21 * 64 * 9 + 21 * 64  # the paper's text: one conv
    with pytest.raises(SegkitError, match="model.duc_dilations"):
        DUCHDC(21, backbone="resnet18", duc_dilations=())


@pytest.mark.parametrize("norm", [False, True])
def test_duc_layer_order_and_output_stride(norm):
    """Features at stride 8 -> conv(s) -> (BN -> ReLU with ``duc_norm``) -> pixel shuffle x8 to full size."""
    net = DUCHDC(3, backbone="resnet18", duc_norm=norm).eval()
    order: list[str] = []
    for module in net.duc.modules():
        if not list(module.children()) and not isinstance(module, nn.Identity):
            module.register_forward_hook(lambda m, *_: order.append(type(m).__name__))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert net.backbone(x)[3].shape[-2:] == (8, 12)
        assert net(x).shape == (1, 3, 64, 96)
    assert order == ["Conv2d"] * 4 + (["BatchNorm2d", "ReLU"] if norm else []) + ["PixelShuffle"]
    assert all((conv.bias is None) == norm for conv in net.duc.convs)  # BN follows: a conv bias would be redundant
    assert net.duc.shuffle.upscale_factor == 8


# EncNet (+JPU)


def test_encnet_outputs_in_train_mode():
    x = torch.randn(2, 3, 33, 47)
    out = EncNet(5, backbone="resnet18").train()(x)
    assert set(out) == {"out", "aux", "se"} and out["aux"].shape == (2, 5, 33, 47) and out["se"].shape == (2, 5)
    out = EncNet(5, backbone="resnet18", aux=False, se=False).train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 33, 47)  # no auxiliary head: the logits alone


def test_encoding_layer_matches_its_definition():
    """Shapes, and the fast A^T X - (sum A) C form equals sum_i a_ik (x_i - c_k) written out."""
    torch.manual_seed(0)
    enc = Encoding(channels=16, num_codes=8)
    x = torch.randn(3, 16, 5, 7)
    out = enc(x)
    assert out.shape == (3, 8, 16)
    feats = x.flatten(2).transpose(1, 2)  # B x N x D
    residual = feats[:, :, None, :] - enc.codewords[None, None]  # B x N x K x D
    assign = torch.softmax(-enc.smoothing * residual.pow(2).sum(-1), dim=-1)
    torch.testing.assert_close(out, (assign[..., None] * residual).sum(1), rtol=1e-4, atol=1e-4)


def test_se_head_learns_class_presence():
    """Trained on the SE-loss alone, the B x K logits come to say which classes each image contains."""
    torch.manual_seed(0)
    num_classes = 6
    image, mask = fixed_batch(num_classes=num_classes, size=16, batch=2)
    target = class_presence(mask, num_classes)
    assert 0 < target.sum() < target.numel()
    net = EncNet(num_classes, backbone="resnet18", aux=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = F.binary_cross_entropy_with_logits(net(image)["se"], target)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] <= 0.5 * losses[0], losses
    with torch.no_grad():
        logits = net.train()(image)["se"]
    assert torch.equal((logits > 0).float(), target)


def test_encnet_jpu_head_is_1x1_as_in_fastfcn():
    """FastFCN's EncHead: a 1x1 conv (4 x 512 -> 512) after JPU, 3x3 on the dilated backbone; JPU rebuilds the
    stride-8 map from the stride-32 trunk. Counts: 55,610,847 - 2048 * 512 * (9 - 1) with the 1x1."""
    with torch.device("meta"):
        jpu = EncNet(21, backbone="resnet50", jpu=True)
        dilated = EncNet(21, backbone="resnet50")
        jpu_3x3 = EncNet(21, backbone="resnet50", jpu=True, head_kernel_size=3)
    assert jpu.head[0].kernel_size == (1, 1) and jpu.head[0].in_channels == 4 * 512
    assert dilated.head[0].kernel_size == (3, 3)
    assert count_params(jpu_3x3) == 55_610_847
    assert count_params(jpu) == 55_610_847 - 2048 * 512 * 8 == 47_222_239
    assert count_params(on_meta(config_maker("encnet_resnet50", jpu=True), in_channels=3)) == 47_222_239
    net = EncNet(3, backbone="resnet18", jpu=True, head_channels=32).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = net.backbone(x)
        assert [f.shape[-1] for f in feats] == [24, 12, 6, 3]  # strides 4 / 8 / 16 / 32: the trunk is undilated
        assert net.jpu(feats[1:]).shape[-2:] == (8, 12)  # JPU's output is at stride 8
    with pytest.raises(SegkitError, match="model.head_kernel_size=2"):
        EncNet(3, backbone="resnet18", head_kernel_size=2)


# DRN-C-26


def test_drn_learned_upsampling_shape():
    net = DRNC26(num_classes=3, in_channels=4, learned_upsampling=True, channels=(4, 8, 16, 16, 32, 32, 32, 32))
    assert net(torch.randn(1, 4, 57, 75)).shape == (1, 3, 57, 75)


def test_drn_c_26_backbone_matches_published_classifier():
    """DRN-C-26 (Yu et al. 2017) has 21.1M parameters as an ImageNet classifier: our trunk + a 512 -> 1000 1x1 conv."""
    with torch.device("meta"):
        classifier = count_params(DRNC26Backbone()) + 512 * 1000 + 1000
    assert classifier == pytest.approx(21.1e6, rel=0.05)


# Semantic FPN


def test_fpn_without_output_convs_is_smp_layout():
    """Without the pyramid's four 3x3 output convs: segmentation_models_pytorch's FPN layout."""
    with torch.device("meta"):
        assert count_params(SemanticFPN(num_classes=21, output_convs=False)) == 28_478_933 - 4 * (256 * 256 * 9 + 256)
