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
from segkit.models.backbones import DENSENET_ARCHS, RESNET_ARCHS, VGG_ARCHS, build_backbone, vgg_fully_connected
from segkit.models.blocks import ConvBNReLU, bilinear_upsampler, crop_to, pad_to_multiple

BACKBONES = VGG_ARCHS + RESNET_ARCHS + DENSENET_ARCHS


class FCN(nn.Module):
    """FCN; ``variant`` is ``32s``, ``16s`` or ``8s``; ``backbone`` a torchvision VGG, ResNet or DenseNet name.

    ``weights_path`` is a state dict of that torchvision classifier; ``dropout`` applies after fc6/fc7
    (VGG) or in the head (ResNet/DenseNet). Every backbone comes from ``build_backbone``; only the ``head``
    on its stride-32 features depends on the family.
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
        self.backbone = build_backbone(backbone, in_channels, 32, pretrained, weights_path)
        strides, channels = self.backbone.strides, self.backbone.channels
        self.skips = (strides.index(8), strides.index(16))
        skip_channels = [channels[i] for i in self.skips]
        if backbone in VGG_ARCHS:
            fc6, fc7 = vgg_fully_connected(backbone, pretrained, weights_path)
            top_channels = fc7.out_channels
            self.head = nn.Sequential(
                fc6, nn.ReLU(inplace=True), nn.Dropout2d(dropout), fc7, nn.ReLU(inplace=True), nn.Dropout2d(dropout)
            )
            self._register_load_state_dict_pre_hook(_rename_vgg_keys(self.backbone))
        else:
            top_channels = channels[-1] // 4
            self.head = nn.Sequential(ConvBNReLU(channels[-1], top_channels, 3), nn.Dropout(dropout))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 32)
        features = self.backbone(x)
        pool3, pool4 = (features[i] for i in self.skips)
        score = self.score_fr(self.head(features[-1]))
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


def _rename_vgg_keys(backbone: nn.Module):
    """A state-dict pre-hook that reads FCN-VGG checkpoints written before the backbone contract, whose VGG
    layers sat in ``to_pool3``/``to_pool4``/``to_pool5`` (split after pools 3 and 4) and fc6/fc7 in ``fc``."""
    names = list(backbone.keys())
    pools = [i for i, name in enumerate(names) if isinstance(backbone[name], nn.MaxPool2d)]
    offsets = {"to_pool3": 0, "to_pool4": pools[2] + 1, "to_pool5": pools[3] + 1}

    def hook(state_dict, prefix, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            part, _, rest = key[len(prefix) :].partition(".")
            if part in offsets:
                index, _, leaf = rest.partition(".")
                state_dict[f"{prefix}backbone.{names[offsets[part] + int(index)]}.{leaf}"] = state_dict.pop(key)
            elif part == "fc":
                state_dict[f"{prefix}head.{rest}"] = state_dict.pop(key)

    return hook
