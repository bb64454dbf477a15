"""GCN: "Large Kernel Matters" (Peng et al., 2017) on a torchvision ResNet (or any trunk).

Each of the four ResNet stages gets a Global Convolutional Network block (a large k x k receptive field
built from separable k x 1 + 1 x k branches, so it stays cheap) that maps it straight to class scores,
and a Boundary Refinement block (a small residual) that sharpens those scores near object edges. The
coarse scores are then upsampled by transposed convolutions (bilinear at start) and summed stage by
stage, as in the paper's Figure 2. The decoder only needs the trunk's maps at strides 4, 8, 16, 32
(``pyramid_indices``), so every trunk fits.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import TRUNKS, pyramid_indices
from segkit.models.base import SegmentationNet
from segkit.models.blocks import bilinear_upsampler


class GlobalConv(nn.Module):
    """A k x k convolution approximated by two separable branches (k x 1 then 1 x k, and the reverse).

    No batch norm or ReLU, as in the paper: the block is a linear large-kernel classifier.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        p = kernel_size // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (kernel_size, 1), padding=(p, 0)),
            nn.Conv2d(out_channels, out_channels, (1, kernel_size), padding=(0, p)),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (1, kernel_size), padding=(0, p)),
            nn.Conv2d(out_channels, out_channels, (kernel_size, 1), padding=(p, 0)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


class BoundaryRefine(nn.Module):
    """Residual refinement of score maps: ``x + conv(relu(conv(x)))``, to correct errors at boundaries."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class GCN(SegmentationNet):
    """GCN + BR on each trunk stage at strides 4..32, fused top-down by learnable x2 deconvolutions."""

    input_multiple = 32
    trunks = TRUNKS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        kernel_size: int = 7,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise SegkitError(f"model.kernel_size={kernel_size}; use an odd size >= 3 (the paper uses 7 to 15)")
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        self.pyramid_levels = pyramid_indices(self.backbone)
        k = num_classes
        self.gcn = nn.ModuleList(GlobalConv(self.backbone.channels[i], k, kernel_size) for i in self.pyramid_levels)
        self.stage_br = nn.ModuleList(BoundaryRefine(k) for _ in self.pyramid_levels)
        self.fuse_br = nn.ModuleList(BoundaryRefine(k) for _ in range(3))
        self.final_br = nn.ModuleList(BoundaryRefine(k) for _ in range(2))
        self.up = nn.ModuleList(bilinear_upsampler(k, 2) for _ in range(5))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [features[i] for i in self.pyramid_levels]
        scores = [br(gcn(f)) for f, gcn, br in zip(levels, self.gcn, self.stage_br, strict=True)]
        out = scores[3]
        for i, skip in enumerate(reversed(scores[:3])):
            out = self.fuse_br[i](self.up[i](out) + skip)
        for i, br in enumerate(self.final_br):
            out = br(self.up[3 + i](out))
        return out
