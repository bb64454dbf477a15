"""One backbone contract: ``build_backbone`` cuts a torchvision classifier into stages for any net.

``pretrained=True`` downloads through torchvision (cached under ``$TORCH_HOME/hub/checkpoints``);
``weights_path`` loads a locally saved state dict of the same torchvision model instead.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from segkit import SegkitError


def torchvision_model(arch: str, pretrained: bool = False, weights_path: str | None = None, **kwargs) -> nn.Module:
    """``torchvision.models.<arch>`` with random, downloaded (``pretrained``) or local (``weights_path``) weights."""
    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as err:
        raise SegkitError(f"unknown torchvision model '{arch}'") from err
    model = builder(weights=None, **kwargs)
    if weights_path:
        load_into(model, load_state_dict_file(weights_path), source=f"weights file '{weights_path}'")
    elif pretrained:
        load_into(model, download_state_dict(arch), source=f"torchvision's {arch} weights")
    return model


def download_state_dict(arch: str, switch: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """The DEFAULT weights of ``torchvision.models.<arch>`` through torchvision's weights API (cached); ``switch``
    is the config key that turns the download off, named in the error with the key that takes the same file from
    disk (``model.weights_path``: every net that downloads weights reads that file there)."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        file = weights.url.rsplit("/", 1)[-1]
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise SegkitError(
            f"could not download {arch} weights ({weights.url}): {reason}. Without internet, copy {file} to "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}/ ($TORCH_HOME/hub/checkpoints), or set "
            f"model.weights_path=/path/to/{file}, or train from scratch with {switch}=false"
        ) from err


# torchvision's DenseNet checkpoints still use the old names 'norm.1', 'conv.2', ... inside dense layers.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True):
    """``model.load_state_dict(state)`` with legacy DenseNet keys renamed and a SegkitError on a mismatch;
    returns the missing/unexpected keys (empty when ``strict``)."""
    state = {_rename_legacy_key(k): v for k, v in state.items()}
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise SegkitError(
            f"{source} does not fit {type(model).__name__}: {' '.join(first[1:3])[:300]}... Save the state dict of "
            f"the same torchvision architecture (torch.save(torchvision.models.<arch>().state_dict(), path)) "
            f"or fix model.backbone / model.weights_path"
        ) from err


def _rename_legacy_key(key: str) -> str:
    match = _LEGACY_DENSENET_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (bare, or under a ``state_dict``/``model`` key), read as untrusted
    data (``segkit.checkpoint_io.read_torch_file``: weights only, no compressed records)."""
    from segkit.checkpoint_io import read_torch_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise SegkitError(f"weights file '{path}' not found; fix model.weights_path")
    state = read_torch_file(path, what="weights file", fix="save it with torch.save(model.state_dict())")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegkitError(f"weights file '{path}' holds a {type(state).__name__} that is not a state dict of tensors")
    return state


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution for ``in_channels`` inputs: RGB filters kept, extra channels get their mean."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        old = conv.weight
        keep = min(in_channels, old.shape[1])
        new.weight[:, :keep] = old[:, :keep]
        if in_channels > keep:
            new.weight[:, keep:] = old.mean(dim=1, keepdim=True)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` found in ``model`` (in module order) for one taking ``in_channels``;
    for wrapped models whose stem has no fixed attribute name (torchvision's segmentation models)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, adapt_first_conv(module, in_channels))
            return model
    raise SegkitError(f"{type(model).__name__} has no Conv2d to adapt to in_channels={in_channels}")


RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DENSENET_ARCHS = ("densenet121", "densenet161", "densenet169", "densenet201")
VGG_ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
MOBILENET_ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


class Backbone(IntermediateLayerGetter):
    """A torchvision classifier cut into named stages; ``forward`` returns the output of each returned stage.

    Built on torchvision's ``IntermediateLayerGetter`` so the stages keep the names they are registered under
    (``stem``, ``layer1`` ... for ResNets): checkpoints of nets built on the former per-family backbone classes
    keep their keys. ``channels`` and ``strides`` list the width and stride of each returned feature map.
    """

    def __init__(
        self, stages: OrderedDict[str, nn.Module], returns: list[str], channels: list[int], strides: list[int]
    ) -> None:
        super().__init__(nn.Sequential(stages), {name: name for name in returns})
        self.channels = list(channels)
        self.strides = list(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(super().forward(x).values())


def build_backbone(
    name: str,
    in_channels: int = 3,
    output_stride: int = 32,
    pretrained: bool = False,
    weights_path: str | None = None,
) -> Backbone:
    """The stages of ``torchvision.models.<name>`` as a ``Backbone``: the one way nets get a pretrained trunk.

    ``pretrained`` loads torchvision's DEFAULT ImageNet weights (cached under ``$TORCH_HOME/hub/checkpoints``),
    ``weights_path`` a local state dict of the same torchvision model; ``in_channels != 3`` keeps the RGB filters
    of the first convolution (``adapt_first_conv``). ``output_stride`` below 32 trades strides for dilation where
    the family allows it. A new family is one builder in ``FAMILIES``.
    """
    for archs, builder in FAMILIES:
        if name in archs:
            return builder(name, in_channels, output_stride, pretrained, weights_path)
    known = tuple(a for archs, _ in FAMILIES for a in archs)
    raise SegkitError(f"model.backbone={name!r}; choose one of {known}")


def _check_stride(name: str, output_stride: int, allowed: tuple[int, ...]) -> None:
    if output_stride not in allowed:
        raise SegkitError(f"model.output_stride={output_stride}: the {name} backbone supports {allowed}")


def _resnet(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None) -> Backbone:
    """Stages ``stem, layer1..layer4`` (strides 4, 8, 16, 32 undilated); output stride 16 dilates layer4, 8
    layer3 and layer4, as in DeepLab/PSPNet. Bottleneck ResNets are dilated by torchvision itself
    (``replace_stride_with_dilation``); torchvision's BasicBlock refuses dilation, so ResNet-18/34 follow the same
    rule by hand (``dilate_basic_layers``)."""
    _check_stride(name, output_stride, (32, 16, 8))
    dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    if name in ("resnet18", "resnet34"):
        net = torchvision_model(name, pretrained=pretrained, weights_path=weights_path)
        dilate_basic_layers(net, dilate)
    else:
        net = torchvision_model(
            name, pretrained=pretrained, weights_path=weights_path, replace_stride_with_dilation=dilate
        )
    stem = nn.Sequential(adapt_first_conv(net.conv1, in_channels), net.bn1, net.relu, net.maxpool)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    stages = OrderedDict(stem=stem, **{f"layer{i}": layer for i, layer in enumerate(layers, 1)})
    expansion = layers[0][0].expansion  # 1 for BasicBlock, 4 for Bottleneck
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    strides = [4, 8, min(16, output_stride), output_stride]
    return Backbone(stages, ["layer1", "layer2", "layer3", "layer4"], channels, strides)


def dilate_basic_layers(net: nn.Module, dilate: list[bool]) -> None:
    """Replace the strides of ResNet-18/34's layer2..layer4 (where ``dilate``) by dilation, with torchvision's
    Bottleneck rule: the block that had the stride keeps the *previous* dilation in its (formerly strided) first
    conv, and every conv after it gets the new one, so the dilated net computes the undilated net's features on a
    denser grid."""
    dilation = 1
    for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate, strict=True):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.conv1.stride = (1, 1)
            for conv, rate in ((block.conv1, previous if i == 0 else dilation), (block.conv2, dilation)):
                conv.dilation = (rate, rate)
                conv.padding = (rate, rate)


def _densenet(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None) -> Backbone:
    """Dense blocks 1..3 (before the transition that halves channels and resolution) and block 4 after its
    BatchNorm and ReLU, as the classifier sees it: strides 4, 8, 16, 32."""
    _check_stride(name, output_stride, (32,))
    f = torchvision_model(name, pretrained=pretrained, weights_path=weights_path).features
    stages = OrderedDict(
        stem=nn.Sequential(adapt_first_conv(f.conv0, in_channels), f.norm0, f.relu0, f.pool0),
        block1=f.denseblock1,
        transition1=f.transition1,
        block2=f.denseblock2,
        transition2=f.transition2,
        block3=f.denseblock3,
        transition3=f.transition3,
        block4=f.denseblock4,
        norm=nn.Sequential(f.norm5, nn.ReLU(inplace=True)),
    )
    channels = [t.norm.num_features for t in (f.transition1, f.transition2, f.transition3)] + [f.norm5.num_features]
    return Backbone(stages, ["block1", "block2", "block3", "norm"], channels, [4, 8, 16, 32])


def _vgg(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None) -> Backbone:
    """torchvision's VGG ``features`` under their own indices, returning the five max-pool outputs (strides
    2..32, what FCN's skips need). Built without the 120M-parameter classifier that conv-only nets would drop
    anyway (seconds and ~0.5 GB saved per build); FCN gets fc6/fc7 from ``vgg_fully_connected``."""
    _check_stride(name, output_stride, (32,))
    from torchvision.models import vgg as tv_vgg

    layout = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[name.removesuffix("_bn")]
    features = tv_vgg.make_layers(tv_vgg.cfgs[layout], batch_norm=name.endswith("_bn"))
    for m in features.modules():  # torchvision VGG's own initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    state, source = _vgg_state(name, pretrained, weights_path)
    if state is not None:
        holder = nn.Module()
        holder.features = features
        load_into(holder, {k: v for k, v in state.items() if not k.startswith("classifier.")}, source)
    features[0] = adapt_first_conv(features[0], in_channels)
    stages = OrderedDict((str(i), layer) for i, layer in enumerate(features))
    pools = [str(i) for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    return Backbone(stages, pools, [64, 128, 256, 512, 512], [2, 4, 8, 16, 32])


def _vgg_state(name: str, pretrained: bool, weights_path: str | None) -> tuple[dict | None, str]:
    if weights_path:
        return load_state_dict_file(weights_path), f"weights file '{weights_path}'"
    if pretrained:
        return download_state_dict(name), f"torchvision's {name} weights"
    return None, ""


def vgg_conv_stages(backbone: Backbone) -> nn.ModuleList:
    """The five conv stages of a VGG backbone, split at (and without) its max-pools, sharing its modules.

    For nets that pool differently (SegNet keeps the pooling indices to unpool with them)."""
    stages, current = [], []
    for layer in backbone.values():
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
        else:
            current.append(layer)
    return nn.ModuleList(stages)


def vgg_fully_connected(name: str, pretrained: bool = False, weights_path: str | None = None) -> nn.Sequential:
    """VGG's fc6/fc7 as a 7x7 and a 1x1 convolution (FCN's "convolutionalised" classifier); with weights, the
    ImageNet classifier's Linear layers reshaped into them. Separate from ``build_backbone`` because only FCN
    wants these 120M parameters."""
    fc6, fc7 = nn.Conv2d(512, 4096, 7, padding=3), nn.Conv2d(4096, 4096, 1)
    for fc in (fc6, fc7):  # torchvision VGG's initialisation of its Linear layers
        nn.init.normal_(fc.weight, 0, 0.01)
        nn.init.zeros_(fc.bias)
    state, source = _vgg_state(name, pretrained, weights_path)
    if state is not None:
        try:
            with torch.no_grad():
                fc6.weight.copy_(state["classifier.0.weight"].view(4096, 512, 7, 7))
                fc6.bias.copy_(state["classifier.0.bias"])
                fc7.weight.copy_(state["classifier.3.weight"].view(4096, 4096, 1, 1))
                fc7.bias.copy_(state["classifier.3.bias"])
        except (KeyError, RuntimeError) as err:
            raise SegkitError(
                f"{source} has no VGG classifier (classifier.0/classifier.3) for FCN's fc6/fc7 ({err}); save the "
                f"state dict of the whole torchvision.models.{name}()"
            ) from None
    return nn.Sequential(fc6, fc7)


def _mobilenet(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None) -> Backbone:
    """torchvision MobileNetV2/V3 ``features`` under their own indices, returning the last block at each stride
    (2, 4, 8, 16, 32 for V2/V3). ``output_stride=16`` asks torchvision for its dilated MobileNetV3 (the
    DeepLabv3/LR-ASPP trunk), whose last stage then stays at stride 16."""
    allowed = (32, 16) if name.startswith("mobilenet_v3") else (32,)
    _check_stride(name, output_stride, allowed)
    kwargs = {"dilated": True} if output_stride == 16 else {}
    features = torchvision_model(name, pretrained=pretrained, weights_path=weights_path, **kwargs).features
    features[0][0] = adapt_first_conv(features[0][0], in_channels)
    stride, ends, channels, strides = 1, {}, {}, {}
    for i, block in enumerate(features):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        stride *= max(c.stride[0] for c in convs)
        ends[stride], channels[stride] = str(i), convs[-1].out_channels
    strides = sorted(ends)
    stages = OrderedDict((str(i), block) for i, block in enumerate(features))
    return Backbone(stages, [ends[s] for s in strides], [channels[s] for s in strides], strides)


FAMILIES = (
    (RESNET_ARCHS, _resnet),
    (DENSENET_ARCHS, _densenet),
    (VGG_ARCHS, _vgg),
    (MOBILENET_ARCHS, _mobilenet),
)
