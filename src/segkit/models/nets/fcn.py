"""FCN-32s / 16s / 8s (Long, Shelhamer & Darrell, 2015) on torchvision's VGG16.

fc6/fc7 are convolutions (ImageNet classifier weights reshaped when pretrained); upsamplers are
transposed convolutions initialised to bilinear interpolation; score layers for the pool3/pool4
skips start at zero so training starts from the 32s prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import adapt_first_conv, torchvision_model
from segkit.models.nets.common import bilinear_upsampler, crop_to, pad_to_multiple

VGG_ARCHS = ("vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


class FCN(nn.Module):
    """FCN on a VGG backbone; ``variant`` is ``32s``, ``16s`` or ``8s``."""

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
        if backbone not in VGG_ARCHS:
            raise SegkitError(f"model.backbone={backbone!r}; this FCN takes one of {VGG_ARCHS}")
        self.variant = variant
        vgg = torchvision_model(backbone, pretrained=pretrained, weights_path=weights_path)
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
        self.fc = nn.Sequential(fc6, nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                                fc7, nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)
        if variant == "32s":
            self.upscore_final = bilinear_upsampler(num_classes, 32)
        else:
            self.upscore2 = bilinear_upsampler(num_classes, 2)
            self.score_pool4 = _zero_conv(512, num_classes)
            if variant == "16s":
                self.upscore_final = bilinear_upsampler(num_classes, 16)
            else:
                self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
                self.score_pool3 = _zero_conv(256, num_classes)
                self.upscore_final = bilinear_upsampler(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 32)
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        score = self.score_fr(self.fc(self.to_pool5(pool4)))
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
