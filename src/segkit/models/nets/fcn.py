"""FCN-32s / 16s / 8s (Long, Shelhamer & Darrell, 2015) on torchvision's VGG, ResNet or DenseNet.

On VGG, fc6/fc7 are convolutions (ImageNet classifier weights reshaped when pretrained). ResNet and
DenseNet have no fully connected layers worth keeping, so their stride-32 features go through
torchvision's FCN head (3x3 conv to a quarter of the channels, BN, ReLU, dropout) instead; the
stride-16 and stride-8 skips come from layer3/layer2 (ResNet) or dense blocks 3/2 (DenseNet).
Upsamplers are transposed convolutions initialised to bilinear interpolation; score layers for the
skips start at zero so training starts from the 32s prediction.

Two geometries. The default pads the input to a multiple of 32, keeps every map aligned ("same" padding, fc6
padded by 3) and crops the result back; its upsamplers see an edge-replicated map, so a constant score map
upsamples to a constant image, border included. ``caffe_form=True`` (VGG only) is Shelhamer's Caffe graph
(``shelhamer/fcn.berkeleyvision.org``, ``voc-fcn{32,16,8}s``): conv1_1 padded by 100, ceil-mode pooling, fc6 a
valid 7x7 convolution, unpadded deconvolutions, and the crops that realign the maps (5 and 9 for the pool4/pool3
scores, 19 / 27 / 31 for the final 32s / 16s / 8s upsampling), so weights converted from a Caffe-trained FCN give
the same outputs. ``at_once_scaling`` multiplies pool4 by 0.01 and pool3 by 0.0001 before their score layers,
as ``voc-fcn8s-atonce`` does to train all strides in one stage.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import DENSENET_ARCHS, RESNET_ARCHS, VGG_ARCHS, vgg_fully_connected
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, bilinear_upsampler, crop_to, pad_to_multiple

# Shelhamer's Crop offsets: where each map starts in the coordinates of the map it is added to (or of the input).
CAFFE_SKIP_OFFSETS = {"pool4": 5, "pool3": 9}
CAFFE_OUTPUT_OFFSETS = {"32s": 19, "16s": 27, "8s": 31}
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 0.0001}
CAFFE_CONV1_PADDING = 100


class FCN(SegmentationNet):
    """FCN; ``variant`` is ``32s``, ``16s`` or ``8s``; ``backbone`` a torchvision VGG, ResNet or DenseNet name.

    ``weights_path`` is a state dict of that torchvision classifier; ``dropout`` applies after fc6/fc7
    (VGG) or in the head (ResNet/DenseNet). Every backbone comes from ``build_backbone``; only the ``head``
    on its stride-32 features depends on the family. ``caffe_form`` and ``at_once_scaling``: see the module
    docstring; neither changes the parameters, so a state dict loads into either geometry.
    """

    trunks = VGG_ARCHS + RESNET_ARCHS + DENSENET_ARCHS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        variant: str = "8s",
        backbone: str = "vgg16",
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float = 0.5,
        caffe_form: bool = False,
        at_once_scaling: bool = False,
    ) -> None:
        super().__init__()
        if variant not in ("32s", "16s", "8s"):
            raise SegkitError(f"model.variant={variant!r}; choose 32s, 16s or 8s")
        if caffe_form and backbone not in VGG_ARCHS:
            raise SegkitError(f"model.caffe_form=true is the Caffe VGG graph; use a VGG backbone, not {backbone!r}")
        self.variant, self.caffe_form = variant, caffe_form
        self.skip_scales = AT_ONCE_SCALES if at_once_scaling else {"pool4": 1.0, "pool3": 1.0}
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        strides, channels = self.backbone.strides, self.backbone.channels
        self.skips = (strides.index(8), strides.index(16))
        skip_channels = [channels[i] for i in self.skips]
        if backbone in VGG_ARCHS:
            fc6, fc7 = vgg_fully_connected(backbone, pretrained, weights_path)
            top_channels = fc7.out_channels
            drop = nn.Dropout if caffe_form else nn.Dropout2d  # Caffe's Dropout layer drops single activations
            self.head = nn.Sequential(
                fc6, nn.ReLU(inplace=True), drop(dropout), fc7, nn.ReLU(inplace=True), drop(dropout)
            )
            self._register_load_state_dict_pre_hook(_rename_vgg_keys(self.backbone))
            if caffe_form:
                _caffe_geometry(self.backbone, fc6)
        else:
            top_channels = channels[-1] // 4
            self.head = nn.Sequential(ConvBNReLU(channels[-1], top_channels, 3), nn.Dropout(dropout))
        self.score_fr = nn.Conv2d(top_channels, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)
        up = _caffe_deconvolution if caffe_form else _edge_padded_upsampler
        if variant == "32s":
            self.upscore_final = up(num_classes, 32)
        else:
            self.upscore2 = up(num_classes, 2)
            self.score_pool4 = _zero_conv(skip_channels[1], num_classes)
            if variant == "16s":
                self.upscore_final = up(num_classes, 16)
            else:
                self.upscore_pool4 = up(num_classes, 2)
                self.score_pool3 = _zero_conv(skip_channels[0], num_classes)
                self.upscore_final = up(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if not self.caffe_form:
            x, size = pad_to_multiple(x, 32)
        features = self.backbone(x)
        pool3, pool4 = (features[i] for i in self.skips)
        score = self.score_fr(self.head(features[-1]))
        if self.variant != "32s":
            up = self.upscore2(score)
            score = up + self._skip_score(self.score_pool4, pool4, "pool4", up.shape[-2:])
            if self.variant == "8s":
                up = self.upscore_pool4(score)
                score = up + self._skip_score(self.score_pool3, pool3, "pool3", up.shape[-2:])
        out = self.upscore_final(score)
        offset = CAFFE_OUTPUT_OFFSETS[self.variant] if self.caffe_form else 0
        return _crop(out, offset, size)

    def _skip_score(self, conv: nn.Conv2d, features: torch.Tensor, name: str, size) -> torch.Tensor:
        scale = self.skip_scales[name]
        score = conv(features * scale if scale != 1.0 else features)
        return _crop(score, CAFFE_SKIP_OFFSETS[name], size) if self.caffe_form else score


def _crop(x: torch.Tensor, offset: int, size) -> torch.Tensor:
    """Caffe's Crop layer: ``size`` from ``offset`` on both spatial axes."""
    return crop_to(x[..., offset:, offset:], tuple(size))


def _caffe_geometry(backbone: nn.Module, fc6: nn.Conv2d) -> None:
    """Turn a torchvision VGG trunk and fc6 into Caffe FCN's layers in place: conv1_1 padded by 100 (so that any
    input leaves fc6 with a map to score), max-pools rounding up as Caffe's pooling does, fc6 unpadded."""
    first = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    first.padding = (CAFFE_CONV1_PADDING, CAFFE_CONV1_PADDING)
    for m in backbone.modules():
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    fc6.padding = (0, 0)


def _caffe_deconvolution(channels: int, stride: int) -> nn.ConvTranspose2d:
    """Caffe FCN's Deconvolution: kernel 2 x stride, no padding, no bias, bilinear filler."""
    return bilinear_upsampler(channels, stride, padding=0)


def _edge_padded_upsampler(channels: int, stride: int) -> nn.ConvTranspose2d:
    return bilinear_upsampler(channels, stride, replicate_edges=True)


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
