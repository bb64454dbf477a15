"""Every net that takes a choice of trunk (``SegmentationNet.trunks``) builds and runs on each trunk it declares,
and refuses any other in one line that lists the fitting ones; the smallest model of each modern trunk family
(ConvNeXt, Swin, EfficientNet, RegNet) trains and exports in a Semantic FPN for real
(``scripts/check_trunks.py`` does the same for the big ones).

Over every ``conf/model`` choice whose net declares trunks, one config per net class, built from the real config
for each declared trunk on the meta device (shapes only: no weights are allocated or downloaded). Each trunk is
built and run once (``build_backbone`` on meta, its output shapes checked against its declared channels and
strides); a net gets a copy of it whose forward returns maps of those shapes, so the test costs one trunk per
name plus one head per pair, and what it checks is the net's side of the contract: that its head takes the
maps of every trunk it declares and gives logits at the input size.
"""

from __future__ import annotations

import copy
import functools

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from segkit import SegkitError
from segkit.models import base
from segkit.models.backbones import TRUNKS, build_backbone
from segkit.models.nets.fpn import SemanticFPN
from tests.conftest import CONF_DIR
from tests.models.net_checks import MODEL_CONFIGS, model_config

NUM_CLASSES, INPUT = 3, (2, 3, 64, 64)


def config_target(name: str) -> str:
    """The ``_target_`` of ``conf/model/<name>.yaml``, its ``defaults`` followed (without composing the run)."""
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    if "_target_" in cfg:
        return cfg._target_
    return next(config_target(parent) for parent in cfg.get("defaults", []) if isinstance(parent, str))


def nets_with_trunks() -> dict[str, type]:
    """Config name -> net class, the first config of each class whose net declares trunks."""
    nets: dict[str, type] = {}
    for name in MODEL_CONFIGS:
        cls = hydra.utils.get_class(config_target(name))
        if getattr(cls, "trunks", ()) and cls not in nets.values():
            nets[name] = cls
    return nets


NETS = nets_with_trunks()
PAIRS = [(name, trunk) for name, cls in NETS.items() for trunk in cls.trunks]


config_of = functools.cache(model_config)


def options_for(name: str, trunk: str) -> dict:
    """The config's options with ``backbone=trunk``; MobileNetV3 dilates to output stride 16 only, so the nets
    that take it (the context nets, whose configs run at 8 or 16) build it there."""
    options = {**config_of(name), "backbone": trunk, "num_classes": NUM_CLASSES, "in_channels": 3}
    if "output_stride" in options and trunk.startswith("mobilenet_v3"):
        options["output_stride"] = 16
    return options


@functools.cache
def trunk_on_meta(name: str, in_channels: int, output_stride: int) -> tuple[torch.nn.Module, list[torch.Size]]:
    """The trunk built once on the meta device, and the shapes of its maps for the test input, checked against
    its declared channels and strides."""
    with torch.device("meta"), torch.no_grad():
        trunk = build_backbone(name, in_channels, output_stride)
        maps = trunk.eval()(torch.empty(INPUT))
    assert [m.shape[1] for m in maps] == trunk.channels, name
    assert [-(-INPUT[-1] // m.shape[-1]) for m in maps] == trunk.strides, (name, [m.shape for m in maps])
    return trunk, [m.shape for m in maps]


def trunk_built_once(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None):
    """``build_backbone`` for the nets under test: a shallow copy of the trunk built once (the same layers, shared
    by every net built on it: on the meta device they hold no values to spoil), whose forward gives maps of the
    shapes the trunk gave. Nets that run the stages themselves (ICNet, SegNet) run the real layers."""
    trunk, shapes = trunk_on_meta(name, in_channels, output_stride)

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        assert tuple(x.shape) == INPUT, x.shape
        return [torch.empty(shape, device=x.device) for shape in shapes]

    view = copy.copy(trunk)
    view.forward = forward
    return view


@pytest.mark.parametrize("name, trunk", PAIRS, ids=[f"{n}-{t}" for n, t in PAIRS])
def test_net_runs_on_every_trunk_it_declares(name, trunk, monkeypatch):
    monkeypatch.setattr(base, "build_backbone", trunk_built_once)
    options = options_for(name, trunk)
    with torch.device("meta"):
        net = hydra.utils.instantiate(options).eval()
        out = net(torch.empty(INPUT))
    assert out.shape == (2, NUM_CLASSES, *INPUT[2:])


@pytest.mark.parametrize("name", list(NETS))
def test_declared_trunks_are_trunks(name):
    assert set(NETS[name].trunks) <= set(TRUNKS), set(NETS[name].trunks) - set(TRUNKS)


def test_an_undeclared_pair_is_refused_in_one_line_naming_the_fitting_trunks():
    from segkit.models.nets.deeplab import DeepLabV3Plus

    with pytest.raises(SegkitError) as err:
        DeepLabV3Plus(num_classes=3, backbone="swin_t", pretrained=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.backbone='swin_t': DeepLabV3Plus takes one of (")
    assert all(repr(trunk) in message for trunk in DeepLabV3Plus.trunks)
    assert "'swin_t'" not in message.partition("takes one of")[2]


SMALLEST_OF_EACH_FAMILY = ["convnext_tiny", "swin_t", "efficientnet_b0", "regnet_x_400mf"]


@pytest.mark.parametrize("trunk", SMALLEST_OF_EACH_FAMILY)
def test_fpn_on_each_trunk_family_trains_and_exports_to_onnx(trunk, tmp_path):
    """Random init, 64 x 64 images: logits at the input size, one SGD step with a finite gradient on every
    parameter (no stage left out of the graph), and an ONNX export that runs in onnxruntime and matches PyTorch
    (at the most dynamic axes that verify)."""
    pytest.importorskip("onnxruntime", reason="ONNX checks need the export extra: pip install -e '.[export]'")
    from segkit.exporters import export_onnx

    torch.manual_seed(0)
    net = SemanticFPN(num_classes=3, backbone=trunk, pretrained=False).train()
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    logits = net(images)
    assert logits.shape == (2, 3, 64, 64)
    loss = F.cross_entropy(logits, masks)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    torch.optim.SGD(net.parameters(), lr=0.01).step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    result = export_onnx(net.eval(), tmp_path / f"fpn_{trunk}.onnx", (1, 3, 64, 64), dynamic="batch+spatial")
    assert result.max_abs_diff and max(result.max_abs_diff.values()) < 1e-3, result.summary()
    assert result.dynamic == "batch+spatial", result.summary()  # any batch and image size, checked at a second one
