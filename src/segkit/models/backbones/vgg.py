"""VGG trunks (the five max-pool outputs), VGG's conv stages for nets that pool themselves, and fc6/fc7 as
convolutions for FCN."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones.stages import Backbone, check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import classifier_state, load_into

VGG_ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


def build_vgg(name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None) -> Backbone:
    """torchvision's VGG ``features`` under their own indices, returning the five max-pool outputs (strides
    2..32, what FCN's skips need). Built without the 120M-parameter classifier that conv-only nets would drop
    anyway (seconds and ~0.5 GB saved per build); FCN gets fc6/fc7 from ``vgg_fully_connected``."""
    check_stride(name, output_stride, (32,))
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
    state, source = classifier_state(name, pretrained, weights_path)
    if state is not None:
        holder = nn.Module()
        holder.features = features
        load_into(holder, {k: v for k, v in state.items() if not k.startswith("classifier.")}, source)
    features[0] = adapt_first_conv(features[0], in_channels)
    stages = OrderedDict((str(i), layer) for i, layer in enumerate(features))
    pools = [str(i) for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    return Backbone(stages, pools, [64, 128, 256, 512, 512], [2, 4, 8, 16, 32])


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
    state, source = classifier_state(name, pretrained, weights_path)
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
