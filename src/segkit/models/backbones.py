"""torchvision backbones with ImageNet weights from torchvision's weights API or a local file.

``pretrained=True`` downloads through torchvision (cached under ``$TORCH_HOME/hub/checkpoints``);
``weights_path`` loads a locally saved state dict of the same torchvision model instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import nn

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


def download_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The DEFAULT weights of ``torchvision.models.<arch>`` through torchvision's weights API (cached)."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        raise SegkitError(
            f"could not download {arch} weights ({weights.url}): {type(err).__name__}: {err}. Without internet, "
            f"copy the file to $TORCH_HOME/hub/checkpoints/ or set model.weights_path=/path/to/state_dict.pth, "
            f"or train from scratch with model.pretrained=false"
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
    """A state dict saved with ``torch.save`` (bare, or under a ``state_dict``/``model`` key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SegkitError(f"weights file '{path}' not found; fix model.weights_path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise SegkitError(
            f"weights file '{path}' could not be read as tensors ({type(err).__name__}): it is not a state dict or "
            f"holds objects segkit will not unpickle; save it with torch.save(model.state_dict())"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SegkitError(f"weights file '{path}' holds a {type(state).__name__}, not a state dict")
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


RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class ResNetBackbone(nn.Module):
    """torchvision ResNet as a feature extractor: returns ``[c1, c2, c3, c4]`` (layer1..layer4).

    ``output_stride`` 32, 16 or 8 replaces the strides of layer4 (16) or layer3+layer4 (8) by dilation,
    as in DeepLab/PSPNet. ``channels`` lists the widths of the four outputs; ``strides`` their strides.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 32,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in RESNET_ARCHS:
            raise SegkitError(f"backbone '{arch}' is not a ResNet; choose one of {RESNET_ARCHS}")
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}.get(output_stride)
        if dilate is None:
            raise SegkitError(f"model.output_stride={output_stride}; choose 32, 16 or 8")
        if arch in ("resnet18", "resnet34") and output_stride != 32:
            # BasicBlock has no dilation support in torchvision; dilate its convolutions by hand.
            net = torchvision_model(arch, pretrained=pretrained, weights_path=weights_path)
            _dilate_basic_layers(net, dilate)
        else:
            net = torchvision_model(
                arch, pretrained=pretrained, weights_path=weights_path, replace_stride_with_dilation=dilate
            )
        self.stem = nn.Sequential(adapt_first_conv(net.conv1, in_channels), net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if arch in ("resnet50", "resnet101", "resnet152") else 1
        self.channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [4, 8, min(16, output_stride), output_stride]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


def _dilate_basic_layers(net: nn.Module, dilate: list[bool]) -> None:
    dilation = 1
    for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate):
        if not flag:
            continue
        dilation *= 2
        for block in layer:
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            for conv in (block.conv1, block.conv2):
                conv.stride = (1, 1)
                conv.dilation = (dilation, dilation)
                conv.padding = (dilation, dilation)


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


DENSENET_ARCHS = ("densenet121", "densenet161", "densenet169", "densenet201")


class DenseNetBackbone(nn.Module):
    """torchvision DenseNet as a feature extractor: ``[c1, c2, c3, c4]`` at strides 4, 8, 16, 32.

    c1..c3 are the outputs of dense blocks 1..3 (before the transition that halves channels and
    resolution), c4 is the final block after its BatchNorm and ReLU, as the classifier sees it.
    """

    def __init__(
        self,
        arch: str = "densenet121",
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in DENSENET_ARCHS:
            raise SegkitError(f"backbone '{arch}' is not a DenseNet; choose one of {DENSENET_ARCHS}")
        f = torchvision_model(arch, pretrained=pretrained, weights_path=weights_path).features
        self.stem = nn.Sequential(adapt_first_conv(f.conv0, in_channels), f.norm0, f.relu0, f.pool0)
        self.block1, self.block2, self.block3, self.block4 = f.denseblock1, f.denseblock2, f.denseblock3, f.denseblock4
        self.transition1, self.transition2, self.transition3 = f.transition1, f.transition2, f.transition3
        self.norm = nn.Sequential(f.norm5, nn.ReLU(inplace=True))
        self.channels = [t.norm.num_features for t in (f.transition1, f.transition2, f.transition3)]
        self.channels.append(f.norm5.num_features)
        self.strides = [4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.block1(self.stem(x))
        c2 = self.block2(self.transition1(c1))
        c3 = self.block3(self.transition2(c2))
        c4 = self.norm(self.block4(self.transition3(c3)))
        return [c1, c2, c3, c4]


VGG_ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


def vgg_features(arch: str, pretrained: bool = False, weights_path: str | None = None) -> nn.Sequential:
    """The ``features`` of ``torchvision.models.<arch>`` (a VGG) with its weights, without building the
    120M-parameter classifier that conv-only nets would drop anyway (seconds and ~0.5 GB saved per build)."""
    if arch not in VGG_ARCHS:
        raise SegkitError(f"backbone '{arch}' is not a VGG; choose one of {VGG_ARCHS}")
    from torchvision.models import vgg as tv_vgg

    layout = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[arch.removesuffix("_bn")]
    features = tv_vgg.make_layers(tv_vgg.cfgs[layout], batch_norm=arch.endswith("_bn"))
    for m in features.modules():  # torchvision VGG's own initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if weights_path or pretrained:
        state = load_state_dict_file(weights_path) if weights_path else download_state_dict(arch)
        holder = nn.Module()
        holder.features = features
        source = f"weights file '{weights_path}'" if weights_path else f"torchvision's {arch} weights"
        load_into(holder, {k: v for k, v in state.items() if not k.startswith("classifier.")}, source)
    return features


def vgg_conv_stages(features: nn.Sequential, in_channels: int = 3) -> nn.ModuleList:
    """The five conv stages of a VGG's ``features``, split at (and without) its max-pools.

    Nets that pool differently (SegNet keeps pooling indices) add their own pools between the stages.
    """
    stages, current = [], []
    for layer in features.children():
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
        else:
            current.append(layer)
    stages[0][0] = adapt_first_conv(stages[0][0], in_channels)
    return nn.ModuleList(stages)


class VGGBackbone(nn.Module):
    """torchvision VGG conv layers as a feature extractor: ``[pool1, ..., pool5]`` at strides 2..32."""

    def __init__(
        self,
        arch: str = "vgg16",
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.stages = vgg_conv_stages(vgg_features(arch, pretrained, weights_path), in_channels)
        self.pool = nn.MaxPool2d(2, 2)
        self.channels = [64, 128, 256, 512, 512]
        self.strides = [2, 4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = self.pool(stage(x))
            features.append(x)
        return features


def build_backbone(
    arch: str, in_channels: int = 3, output_stride: int = 32, pretrained: bool = False, weights_path: str | None = None
) -> ResNetBackbone | DenseNetBackbone:
    """A ResNet or DenseNet backbone by name, for heads that take either (``model.backbone=densenet121``)."""
    if arch in RESNET_ARCHS:
        return ResNetBackbone(arch, in_channels, output_stride, pretrained, weights_path)
    if arch in DENSENET_ARCHS:
        if output_stride != 32:
            raise SegkitError(f"model.output_stride={output_stride}: DenseNet backbones support only 32")
        return DenseNetBackbone(arch, in_channels, pretrained, weights_path)
    raise SegkitError(f"model.backbone={arch!r}; choose one of {RESNET_ARCHS + DENSENET_ARCHS}")
