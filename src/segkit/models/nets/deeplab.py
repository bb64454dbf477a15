"""DeepLabv3 (Chen et al., 2017) and DeepLabv3+ (Chen et al., 2018) on a dilated torchvision ResNet or MobileNetV3.

DeepLabv3 classifies the ASPP features (atrous rates 6/12/18 at output stride 16, doubled at 8,
plus image pooling) and upsamples bilinearly; its layout equals torchvision's ``deeplabv3_resnet*``
(same parameter count), with an optional auxiliary FCN head on layer3 as torchvision has.
DeepLabv3+ adds a light decoder that refines the ASPP output with stride-4 low-level features,
recovering boundaries at output stride 16 for much less compute than stride 8. As published, its ASPP and
decoder use atrous depthwise-separable convolutions (``separable=True``: 26.7M parameters on ResNet-50, the
layout of segmentation_models_pytorch's DeepLabV3Plus); ``separable=False`` gives full 3x3 convolutions (40.4M).
Both need a trunk they can dilate: any ResNet (output stride 8 or 16), or MobileNetV3 at output stride 16 (the
trunk of torchvision's ``deeplabv3_mobilenet_v3_large``), whose stride-8 map then feeds the auxiliary head.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import DILATABLE_TRUNKS, pyramid_indices
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ASPP, ConvBNReLU, FCNHead, SeparableConvBNReLU, resize_to


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    if output_stride not in (8, 16):
        raise SegkitError(f"model.output_stride={output_stride}; DeepLab takes 8 or 16")
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


class DeepLabV3(SegmentationNet):
    """DeepLabv3: returns ``{"out", "aux"}`` in train mode when ``aux``, the logits otherwise.

    The auxiliary FCN head on layer3 is trained with loss weight 0.5, as in torchvision's reference recipe.
    """

    default_aux_weights = {"aux": 0.5}
    trunks = DILATABLE_TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        output_stride: int = 8,
        aux: bool = True,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        rates = aspp_rates(output_stride)
        self.backbone = self.build_trunk(backbone, in_channels, output_stride, pretrained, weights_path)
        c3, c4 = self.backbone.channels[-2:]
        self.head = nn.Sequential(ASPP(c4, rates), ConvBNReLU(256, 256, 3), nn.Conv2d(256, num_classes, 1))
        self.aux_heads = nn.ModuleDict({"aux": FCNHead(c3, num_classes)} if aux else {})

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1])

    def aux_logits(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: head(features[-2]) for name, head in self.aux_heads.items()}


class DeepLabV3Plus(SegmentationNet):
    """DeepLabv3+: ASPP on the last features, upsampled to stride 4 and fused with projected layer1 features.

    The decoder refines the fusion with ``decoder_convs`` 3x3 convolutions of 256 channels: the paper's best
    decoder (Table 2) and the authors' code have two, segmentation_models_pytorch one.
    """

    trunks = DILATABLE_TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        output_stride: int = 16,
        low_level_channels: int = 48,
        separable: bool = True,
        decoder_convs: int = 2,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if decoder_convs < 1:
            raise SegkitError(f"model.decoder_convs={decoder_convs}; the decoder needs at least one 3x3 conv")
        rates = aspp_rates(output_stride)
        self.backbone = self.build_trunk(backbone, in_channels, output_stride, pretrained, weights_path)
        (self.low_level_index,) = pyramid_indices(self.backbone, (4,))
        c1, c4 = self.backbone.channels[self.low_level_index], self.backbone.channels[-1]
        self.aspp = ASPP(c4, rates, dropout=0.1, separable=separable)
        self.low_level = ConvBNReLU(c1, low_level_channels, 1)
        conv = SeparableConvBNReLU if separable else ConvBNReLU
        widths = [256 + low_level_channels] + [256] * decoder_convs
        self.decoder = nn.Sequential(
            *(conv(cin, cout, 3) for cin, cout in zip(widths, widths[1:])), nn.Conv2d(256, num_classes, 1)
        )

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(features[self.low_level_index])
        high = resize_to(self.aspp(features[-1]), low.shape[-2:])
        return self.decoder(torch.cat([high, low], dim=1))
