"""One backbone contract: ``build_backbone`` cuts a classifier into stages for any net.

``stages`` holds what every family returns (``Backbone``: named stages with their channels and strides); one module
per family builds it (``resnet``, ``densenet``, ``vgg`` with FCN's fc layers, ``mobilenet``, ``efficientnet``,
``regnet``, ``convnext``, ``swin``, and SegFormer's ``mit``, the one family not from torchvision, which keeps the
same attributes); ``weights`` downloads or reads the classifier's weights and loads them; ``surgery`` adapts the first convolution to ``in_channels``. ``TRUNKS`` names every trunk ``build_backbone`` takes;
a net declares the ones it works with (``SegmentationNet.trunks``) and picks its stages by stride with
``pyramid_indices``.
"""

from __future__ import annotations

from segkit import SegkitError
from segkit.models.backbones.convnext import CONVNEXT_ARCHS, build_convnext
from segkit.models.backbones.densenet import DENSENET_ARCHS, build_densenet
from segkit.models.backbones.efficientnet import EFFICIENTNET_ARCHS, build_efficientnet
from segkit.models.backbones.mit import MIT_ARCHS, build_mit
from segkit.models.backbones.mobilenet import MOBILENET_ARCHS, build_mobilenet
from segkit.models.backbones.regnet import REGNET_ARCHS, build_regnet
from segkit.models.backbones.resnet import RESNET_ARCHS, build_resnet, dilate_basic_layers
from segkit.models.backbones.stages import Backbone
from segkit.models.backbones.surgery import adapt_first_conv, replace_first_conv
from segkit.models.backbones.swin import SWIN_ARCHS, build_swin
from segkit.models.backbones.vgg import VGG_ARCHS, build_vgg, vgg_conv_stages, vgg_fully_connected
from segkit.models.backbones.weights import download_state_dict, load_into, load_state_dict_file, torchvision_model

FAMILIES = (
    (RESNET_ARCHS, build_resnet),
    (DENSENET_ARCHS, build_densenet),
    (VGG_ARCHS, build_vgg),
    (MOBILENET_ARCHS, build_mobilenet),
    (EFFICIENTNET_ARCHS, build_efficientnet),
    (REGNET_ARCHS, build_regnet),
    (CONVNEXT_ARCHS, build_convnext),
    (SWIN_ARCHS, build_swin),
    (MIT_ARCHS, build_mit),  # SegFormer's Mix Transformer: not in torchvision, weights from the authors' release
)

TRUNKS: tuple[str, ...] = tuple(name for archs, _ in FAMILIES for name in archs)
"""Every name ``build_backbone`` takes, family by family."""

DILATABLE_TRUNKS: tuple[str, ...] = RESNET_ARCHS + ("mobilenet_v3_large", "mobilenet_v3_small")
"""The trunks that trade strides for dilation (``output_stride`` 16, and 8 for the ResNets), for context nets."""


def build_backbone(
    name: str,
    in_channels: int = 3,
    output_stride: int = 32,
    pretrained: bool = False,
    weights_path: str | None = None,
) -> Backbone:
    """The stages of ``torchvision.models.<name>`` (or of SegFormer's ``mit_b*``) as a ``Backbone``: the one way
    nets get a pretrained trunk.

    ``pretrained`` loads torchvision's DEFAULT ImageNet weights (cached under ``$TORCH_HOME/hub/checkpoints``;
    MiT has none there and says where the authors' file is), ``weights_path`` a local state dict of the same
    torchvision model (for MiT: the authors' ``mit_b*.pth``, keys mapped); ``in_channels != 3`` keeps the RGB filters
    of the first convolution (``adapt_first_conv``). ``output_stride`` below 32 trades strides for dilation where
    the family allows it. A new family is one builder in ``FAMILIES``.
    """
    for archs, builder in FAMILIES:
        if name in archs:
            return builder(name, in_channels, output_stride, pretrained, weights_path)
    raise SegkitError(f"model.backbone={name!r}; choose one of {TRUNKS}")


def pyramid_indices(backbone: Backbone, strides: tuple[int, ...] = (4, 8, 16, 32)) -> list[int]:
    """The indices of the backbone's returned maps at ``strides`` (the deepest one where a dilated trunk returns a
    stride twice): a pyramid decoder (FPN, UPerNet) takes its levels so from trunks that also return a stride-2 map
    (VGG, MobileNet, EfficientNet)."""
    missing = [s for s in strides if s not in backbone.strides]
    if missing:
        raise SegkitError(
            f"the backbone returns maps at strides {backbone.strides}, not at {missing}; the net needs strides "
            f"{list(strides)}: choose another model.backbone (or model.output_stride=32)"
        )
    return [len(backbone.strides) - 1 - backbone.strides[::-1].index(s) for s in strides]


__all__ = [
    "CONVNEXT_ARCHS",
    "DENSENET_ARCHS",
    "DILATABLE_TRUNKS",
    "EFFICIENTNET_ARCHS",
    "FAMILIES",
    "MIT_ARCHS",
    "MOBILENET_ARCHS",
    "REGNET_ARCHS",
    "RESNET_ARCHS",
    "SWIN_ARCHS",
    "TRUNKS",
    "VGG_ARCHS",
    "Backbone",
    "adapt_first_conv",
    "build_backbone",
    "dilate_basic_layers",
    "download_state_dict",
    "load_into",
    "load_state_dict_file",
    "pyramid_indices",
    "replace_first_conv",
    "torchvision_model",
    "vgg_conv_stages",
    "vgg_fully_connected",
]
