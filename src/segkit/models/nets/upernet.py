"""UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018) on any trunk, in the layout
of mmsegmentation's ``UPerHead``, the decoder its ADE20K baselines (ResNet, Swin, ConvNeXt) are published with.

A pyramid pooling module (PSPNet's, pool scales 1/2/3/6, each branch ``channels`` wide, then a 3x3 bottleneck) gives
the deepest level global context; an FPN brings it down to the stride-4 level (1x1 conv-BN-ReLU laterals on the
three other levels, bilinear top-down sums, a 3x3 conv-BN-ReLU on each fused level); every level is upsampled to
stride 4, concatenated and fused by a 3x3 conv-BN-ReLU (``fpn_bottleneck``) before dropout and a 1x1 classifier.
While training, an FCN head on the stride-16 map (3x3 conv-BN-ReLU to 256 channels, dropout, 1x1 classifier) adds
deep supervision with loss weight 0.4, as mmsegmentation's configs train it. The levels are the trunk's maps at
strides 4, 8, 16, 32 (``pyramid_indices``), so every trunk fits.

segmentation_models_pytorch's UPerNet is this decoder with ``channels=256``, ``feature_norms=True`` (it puts a
LayerNorm on every encoder map, ResNets included), ``dropout=0`` and ``aux=False``; it upsamples the stride-4 logits
with ``align_corners=True`` (no parameters: this net resizes with ``align_corners=False`` like mmsegmentation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from segkit.models.backbones import TRUNKS, pyramid_indices
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, FCNHead, resize_to


def _bin_averages(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """The ``bins x length`` matrix that averages each bin of adaptive average pooling: bin ``i`` spans
    ``floor(i * length / bins)`` to ``ceil((i + 1) * length / bins)``, as ``F.adaptive_avg_pool2d`` cuts them."""
    i = torch.arange(bins, device=like.device)[:, None]
    j = torch.arange(length, device=like.device)[None, :]
    inside = ((j + 1) * bins > i * length) & (j * bins < (i + 1) * length)
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that exports to ONNX for any input size. torch's ONNX exporter writes adaptive
    pooling to a grid above 1x1 only for a fixed input size that the grid divides; while exporting, this pools with
    two matrix products instead (``_bin_averages``: the same bins and averages)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        h, w = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        return _bin_averages(x.shape[-2], h, x) @ x @ _bin_averages(x.shape[-1], w, x).transpose(0, 1)


class PoolingPyramid(nn.Module):
    """PSPNet's pyramid pooling as UPerNet uses it: each scale average-pooled, 1x1 conv-BN-ReLU to ``channels``,
    upsampled back and concatenated with the input, then fused to ``channels`` by a 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, channels: int, pool_scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(scale), ConvBNReLU(in_channels, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]  # always resized (a branch's grid may match the map): exports keep the size dynamic
        pooled = [F.interpolate(branch(x), size, mode="bilinear", align_corners=False) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerHead(nn.Module):
    """The pooling pyramid on the deepest level, the FPN over the others, all levels fused at the finest one."""

    def __init__(self, in_channels: list[int], channels: int = 512, pool_scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.ppm = PoolingPyramid(in_channels[-1], channels, pool_scales)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self.ppm(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([outs[0]] + [resize_to(out, size) for out in outs[1:]], dim=1))


class UPerNet(SegmentationNet):
    """UPerNet on any trunk's maps at strides 4, 8, 16, 32; returns ``{"out", "aux"}`` in train mode (when
    ``aux``), the logits in eval mode.

    ``channels``: the width of the pooling pyramid, the FPN and the fused map (512 in mmsegmentation, 256 in
    segmentation_models_pytorch). ``feature_norms``: a LayerNorm over the channels of each trunk map before the head
    (segmentation_models_pytorch's layout; mmsegmentation's Swin and ConvNeXt put such norms in the trunk instead,
    which segkit's Swin trunk does and its ConvNeXt trunk does not). ``dropout`` drops whole channels
    (``Dropout2d``, as mmsegmentation) before both classifiers; 0 leaves it out. ``aux`` switches the stride-16 FCN
    head (``aux_channels`` wide) on.
    """

    default_aux_weights = {"aux": 0.4}
    input_multiple = 32
    trunks = TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights_path: str | None = None,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        feature_norms: bool = False,
        dropout: float = 0.1,
        aux: bool = True,
        aux_channels: int = 256,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        self.levels = pyramid_indices(self.backbone)
        widths = [self.backbone.channels[i] for i in self.levels]
        self.feature_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in widths) if feature_norms else None
        self.head = UPerHead(widths, channels, tuple(pool_scales))
        self.classifier = nn.Sequential(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), nn.Conv2d(channels, num_classes, 1)
        )
        aux_head = FCNHead(widths[2], num_classes, dropout, inter_channels=aux_channels, channel_dropout=True)
        self.aux_heads = nn.ModuleDict({"aux": aux_head} if aux else {})

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        feats = [features[i] for i in self.levels]
        if self.feature_norms is not None:
            feats = [norm(f) for norm, f in zip(self.feature_norms, feats)]
        return self.classifier(self.head(feats))

    def aux_logits(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: head(features[self.levels[2]]) for name, head in self.aux_heads.items()}
