"""FCN-32s / 16s / 8s (Long, Shelhamer & Darrell, 2015) on torchvision's VGG, ResNet or DenseNet.

On VGG, fc6/fc7 are convolutions (ImageNet classifier weights reshaped when pretrained). ResNet and
DenseNet have no fully connected layers worth keeping, so their stride-32 features go through
torchvision's FCN head (3x3 conv to a quarter of the channels, BN, ReLU, dropout) instead; the
stride-16 and stride-8 skips come from layer3/layer2 (ResNet) or dense blocks 3/2 (DenseNet).
Upsamplers are transposed convolutions initialised to bilinear interpolation; score layers for the
skips start at zero so training starts from the 32s prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import (
    DENSENET_ARCHS,
    RESNET_ARCHS,
    VGG_ARCHS,
    adapt_first_conv,
    build_backbone,
    torchvision_model,
)
from segkit.models.nets.blocks import ConvBNReLU
from segkit.models.nets.common import bilinear_upsampler, crop_to, pad_to_multiple

BACKBONES = VGG_ARCHS + RESNET_ARCHS + DENSENET_ARCHS


class FCN(nn.Module):
    """FCN; ``variant`` is ``32s``, ``16s`` or ``8s``; ``backbone`` a torchvision VGG, ResNet or DenseNet name.

    ``weights_path`` is a state dict of that torchvision classifier; ``dropout`` applies after fc6/fc7
    (VGG) or in the head (ResNet/DenseNet).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        variant: str = "8s",
        backbone: str = "vgg16",
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if variant not in ("32s", "16s", "8s"):
            raise SegkitError(f"model.variant={variant!r}; choose 32s, 16s or 8s")
        if backbone not in BACKBONES:
            raise SegkitError(f"model.backbone={backbone!r}; FCN takes one of {BACKBONES}")
        self.variant = variant
        if backbone in VGG_ARCHS:
            top_channels, skip_channels = self._build_vgg(backbone, in_channels, pretrained, weights_path, dropout)
        else:
            self.backbone = build_backbone(backbone, in_channels, 32, pretrained, weights_path)
            c2, c3, c4 = self.backbone.channels[1:]
            top_channels, skip_channels = c4 // 4, (c2, c3)
            self.head = nn.Sequential(ConvBNReLU(c4, top_channels, 3), nn.Dropout(dropout))
        self.score_fr = nn.Conv2d(top_channels, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)
        if variant == "32s":
            self.upscore_final = bilinear_upsampler(num_classes, 32)
        else:
            self.upscore2 = bilinear_upsampler(num_classes, 2)
            self.score_pool4 = _zero_conv(skip_channels[1], num_classes)
            if variant == "16s":
                self.upscore_final = bilinear_upsampler(num_classes, 16)
            else:
                self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
                self.score_pool3 = _zero_conv(skip_channels[0], num_classes)
                self.upscore_final = bilinear_upsampler(num_classes, 8)

    def _build_vgg(
        self, arch: str, in_channels: int, pretrained: bool, weights_path: str | None, dropout: float
    ) -> tuple[int, tuple[int, int]]:
        vgg = torchvision_model(arch, pretrained=pretrained, weights_path=weights_path)
        features = list(vgg.features.children())
        features[0] = adapt_first_conv(features[0], in_channels)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        self.to_pool3 = nn.Sequential(*features[: pools[2] + 1])
        self.to_pool4 = nn.Sequential(*features[pools[2] + 1 : pools[3] + 1])
        self.to_pool5 = nn.Sequential(*features[pools[3] + 1 :])
        fc6 = nn.Conv2d(512, 4096, 7, padding=3)
        fc7 = nn.Conv2d(4096, 4096, 1)
        with torch.no_grad():  # the classifier's Linear layers are these convolutions, reshaped
            fc6.weight.copy_(vgg.classifier[0].weight.view(4096, 512, 7, 7))
            fc6.bias.copy_(vgg.classifier[0].bias)
            fc7.weight.copy_(vgg.classifier[3].weight.view(4096, 4096, 1, 1))
            fc7.bias.copy_(vgg.classifier[3].bias)
        self.fc = nn.Sequential(
            fc6, nn.ReLU(inplace=True), nn.Dropout2d(dropout), fc7, nn.ReLU(inplace=True), nn.Dropout2d(dropout)
        )
        return 4096, (256, 512)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stride-8 and stride-16 skip features and the stride-32 features that score_fr classifies."""
        if hasattr(self, "backbone"):
            _, c2, c3, c4 = self.backbone(x)
            return c2, c3, self.head(c4)
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        return pool3, pool4, self.fc(self.to_pool5(pool4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 32)
        pool3, pool4, top = self._features(x)
        score = self.score_fr(top)
        if self.variant != "32s":
            score = self.upscore2(score) + self.score_pool4(pool4)
            if self.variant == "8s":
                score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return crop_to(self.upscore_final(score), size)


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv
