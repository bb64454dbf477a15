"""torchvision backbones with ImageNet weights from torchvision's weights API or a local file.

``pretrained=True`` downloads through torchvision (cached under ``$TORCH_HOME/hub/checkpoints``);
``weights_path`` loads a locally saved state dict of the same torchvision model instead.
"""

from __future__ import annotations

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
        model.load_state_dict(load_state_dict_file(weights_path), strict=True)
    elif pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
            raise SegkitError(
                f"could not download {arch} weights ({weights.url}): {type(err).__name__}: {err}. Without internet, "
                f"copy the file to $TORCH_HOME/hub/checkpoints/ or set model.weights_path=/path/to/state_dict.pth, "
                f"or train from scratch with model.pretrained=false"
            ) from err
        model.load_state_dict(state)
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (bare, or under a ``state_dict``/``model`` key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SegkitError(f"weights file '{path}' not found; fix model.weights_path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise SegkitError(f"weights file '{path}' could not be read ({err}); save it with torch.save(model.state_dict())") from err
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
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        conv.bias is not None, conv.padding_mode,
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
            net = torchvision_model(arch, pretrained=pretrained, weights_path=weights_path,
                                    replace_stride_with_dilation=dilate)
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
