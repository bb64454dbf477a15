"""ResNet trunks: stages ``stem, layer1..layer4``, dilated for output strides 16 and 8."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from segkit.models.backbones.stages import Backbone, check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_resnet(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> Backbone:
    """Stages ``stem, layer1..layer4`` (strides 4, 8, 16, 32 undilated); output stride 16 dilates layer4, 8
    layer3 and layer4, as in DeepLab/PSPNet. Bottleneck ResNets are dilated by torchvision itself
    (``replace_stride_with_dilation``); torchvision's BasicBlock refuses dilation, so ResNet-18/34 follow the same
    rule by hand (``dilate_basic_layers``)."""
    check_stride(name, output_stride, (32, 16, 8))
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
