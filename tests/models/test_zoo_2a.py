"""Model zoo II (part a): ENet, LinkNet, FC-DenseNet, DRN-C-26, UNet++ against the net contract."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from segkit import SegkitError
from segkit.models.nets.drn import DRNC26, DRNC26Backbone
from segkit.models.nets.enet import ENet
from segkit.models.nets.fcdensenet import FCDenseNet
from segkit.models.nets.linknet import LinkNet
from segkit.models.nets.unetpp import UNetPlusPlus
from tests.models.zoo_checks import check_learns, check_output_shapes, count_params

CONFIGS = [
    "enet",
    "linknet_resnet18",
    "linknet_resnet34",
    "fcdensenet56",
    "fcdensenet67",
    "fcdensenet103",
    "drn_c_26",
    "unetpp",
]

DRN_NARROW = (4, 8, 16, 16, 32, 32, 32, 32)

# The published layouts where they are cheap on CPU; the heavy nets with narrower widths (same code paths: the
# padding, pooling/unpooling and cropping that the shape contract is about do not depend on width).
SHAPE_NETS = {
    "enet": ENet,
    "linknet_resnet18": LinkNet,
    "fcdensenet56_narrow": partial(FCDenseNet, variant="56", growth_rate=4, stem_channels=8),
    "fcdensenet103_narrow": partial(FCDenseNet, variant="103", growth_rate=2, stem_channels=8),
    "drn_c_26_narrow": partial(DRNC26, channels=DRN_NARROW),
    "unetpp_narrow": partial(UNetPlusPlus, widths=(4, 8, 16, 32, 64)),
    "unetpp_narrow_deep_supervision": partial(UNetPlusPlus, widths=(4, 8, 16, 32, 64), deep_supervision=True),
}


@pytest.mark.parametrize("name", SHAPE_NETS)
def test_output_shapes(name):
    torch.manual_seed(0)
    check_output_shapes(SHAPE_NETS[name], batch=1)


def test_drn_learned_upsampling_shape():
    net = DRNC26(num_classes=3, in_channels=4, learned_upsampling=True, channels=DRN_NARROW)
    assert net(torch.randn(1, 4, 57, 75)).shape == (1, 3, 57, 75)


def test_unetpp_deep_supervision_outputs():
    net = UNetPlusPlus(num_classes=3, widths=(8, 16, 32), deep_supervision=True)
    x = torch.randn(1, 3, 33, 45)
    assert set(net.train()(x)) == {"out", "aux1"}
    assert isinstance(net.eval()(x), torch.Tensor)
    net = UNetPlusPlus(num_classes=3, widths=(8, 16, 32, 64, 128), deep_supervision=True)
    assert set(net.train()(x)) == {"out", "aux1", "aux2", "aux3"}


def test_enet_initial_block_keeps_16_channels():
    for cin in (1, 3, 4):
        assert ENet(num_classes=2, in_channels=cin).initial(torch.randn(1, cin, 16, 16)).shape[1] == 16
    assert ENet(num_classes=2).initial.conv.out_channels == 13
    with pytest.raises(SegkitError, match="in_channels"):
        ENet(num_classes=2, in_channels=16)


def test_fcdensenet_rejects_unknown_variant():
    with pytest.raises(SegkitError, match="model.variant"):
        FCDenseNet(num_classes=2, variant="80")


LEARN_SIZE = 32  # the fixed batch's side: 32 is a multiple of every net's stride and keeps 25 steps cheap

LEARNERS = {
    "enet": (ENet, 5e-3),
    "linknet_resnet18": (LinkNet, 1e-3),
    "fcdensenet56_narrow": (partial(FCDenseNet, variant="56", growth_rate=6, stem_channels=16), 1e-3),
    "drn_c_26_narrow": (partial(DRNC26, channels=(8, 16, 32, 32, 64, 64, 64, 64)), 1e-3),
}


@pytest.mark.parametrize("name", LEARNERS)
def test_learns(name):
    make, lr = LEARNERS[name]
    torch.manual_seed(0)
    check_learns(make(num_classes=4, in_channels=3), lr=lr, size=LEARN_SIZE)


def test_unetpp_learns_with_deep_supervision():
    """Covers the plain net too (``out`` is the same last head); the aux weights are the config's."""
    torch.manual_seed(0)
    net = UNetPlusPlus(num_classes=4, widths=(8, 16, 32, 64, 128), deep_supervision=True)
    check_learns(net, lr=1e-2, size=LEARN_SIZE, aux_weights={"aux1": 1.0, "aux2": 1.0, "aux3": 1.0})


# Counts at 21 classes unless said. Published figures, checked within 5%: ENet (Paszke et al. 2016) 0.37M;
# LinkNet-18 (Chaurasia & Culurciello 2017) 11.5M; FC-DenseNet67/103 (Jegou et al. 2017) 3.5M / 9.4M; UNet++
# (Zhou et al. 2018, binary segmentation, so at 1 class) 9.04M; DRN-C-26 (Yu et al. 2017) 21.1M for the ImageNet
# classifier, i.e. our backbone plus a 512 -> 1000 1x1 conv.
PUBLISHED = {
    "enet": (partial(ENet, num_classes=21), 0.37e6),
    "linknet_resnet18": (partial(LinkNet, num_classes=21), 11.5e6),
    "fcdensenet67": (partial(FCDenseNet, num_classes=21, variant="67"), 3.5e6),
    "fcdensenet103": (partial(FCDenseNet, num_classes=21, variant="103"), 9.4e6),
    "unetpp_1_class": (partial(UNetPlusPlus, num_classes=1), 9.04e6),
}

# Pinned exactly. FC-DenseNet56 is published as 1.5M, but the architecture the paper describes (growth 12, five
# blocks of 4 layers, bottleneck 4, 48-channel stem) has 1.38M - 8% under; the reference code's layout gives the
# same count, so we pin ours rather than distort the net.
PINNED = {
    "enet": (partial(ENet, num_classes=21), 379_036),
    "linknet_resnet18": (partial(LinkNet, num_classes=21), 11_535_893),
    "linknet_resnet34": (partial(LinkNet, num_classes=21, backbone="resnet34"), 21_644_053),
    "fcdensenet56": (partial(FCDenseNet, num_classes=21, variant="56"), 1_376_949),
    "fcdensenet67": (partial(FCDenseNet, num_classes=21, variant="67"), 3_463_365),
    "fcdensenet103": (partial(FCDenseNet, num_classes=21, variant="103"), 9_320_645),
    "drn_c_26": (partial(DRNC26, num_classes=21), 20_624_357),
    "unetpp": (partial(UNetPlusPlus, num_classes=21), 9_046_485),
    "unetpp_deep_supervision": (partial(UNetPlusPlus, num_classes=21, deep_supervision=True), 9_048_564),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_params_match_published(name):
    make, published = PUBLISHED[name]
    assert count_params(make()) == pytest.approx(published, rel=0.05)


def test_drn_c_26_backbone_matches_published_classifier():
    classifier = count_params(DRNC26Backbone()) + 512 * 1000 + 1000
    assert classifier == pytest.approx(21.1e6, rel=0.05)


@pytest.mark.parametrize("name", PINNED)
def test_params_pinned(name):
    make, expected = PINNED[name]
    assert count_params(make()) == expected


# Smaller than TINY's 64x64 so the heavy nets (FC-DenseNet103, DRN-C-26) stay cheap; 32 is still a multiple
# of every net's stride, and the shape tests cover the padding.
FDR = ["debug=fdr", "data.dataset.height=32", "data.dataset.width=32", "data.batch_size=2", "data.val_batch_size=2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_one_batch(tiny_cfg, name):
    from segkit.training import train

    train(tiny_cfg(f"model={name}", *FDR))


def test_unetpp_deep_supervision_config_runs_one_batch(tiny_cfg):
    from segkit.training import train

    train(tiny_cfg("model=unetpp", "model.deep_supervision=true", "model.widths=[8,16,32,64,128]", *FDR))
