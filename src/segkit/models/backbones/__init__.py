"""One backbone contract: ``build_backbone`` cuts a torchvision classifier into stages for any net.

``stages`` holds what every family returns (``Backbone``: named stages with their channels and strides); one module
per family builds it (``resnet``, ``densenet``, ``vgg`` with FCN's fc layers, ``mobilenet``); ``weights`` downloads
or reads the classifier's weights and loads them; ``surgery`` adapts the first convolution to ``in_channels``.
"""

from __future__ import annotations

from segkit import SegkitError
from segkit.models.backbones.densenet import DENSENET_ARCHS, build_densenet
from segkit.models.backbones.mobilenet import MOBILENET_ARCHS, build_mobilenet
from segkit.models.backbones.resnet import RESNET_ARCHS, build_resnet, dilate_basic_layers
from segkit.models.backbones.stages import Backbone
from segkit.models.backbones.surgery import adapt_first_conv, replace_first_conv
from segkit.models.backbones.vgg import VGG_ARCHS, build_vgg, vgg_conv_stages, vgg_fully_connected
from segkit.models.backbones.weights import download_state_dict, load_into, load_state_dict_file, torchvision_model

FAMILIES = (
    (RESNET_ARCHS, build_resnet),
    (DENSENET_ARCHS, build_densenet),
    (VGG_ARCHS, build_vgg),
    (MOBILENET_ARCHS, build_mobilenet),
)


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


__all__ = [
    "DENSENET_ARCHS",
    "FAMILIES",
    "MOBILENET_ARCHS",
    "RESNET_ARCHS",
    "VGG_ARCHS",
    "Backbone",
    "adapt_first_conv",
    "build_backbone",
    "dilate_basic_layers",
    "download_state_dict",
    "load_into",
    "load_state_dict_file",
    "replace_first_conv",
    "torchvision_model",
    "vgg_conv_stages",
    "vgg_fully_connected",
]
