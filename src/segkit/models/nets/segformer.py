"""SegFormer (Xie, Wang, Yu, Anandkumar, Alvarez & Luo, NeurIPS 2021): a Mix Transformer encoder and an all-MLP
decoder.

The decoder embeds each of the encoder's four maps (strides 4..32) to ``decoder_channels`` with a per-pixel
Linear layer, upsamples them to stride 4 (bilinear), concatenates them deepest first as the authors do, fuses them
with a 1x1 conv - BatchNorm - ReLU (``AllMLPHead`` computes the same in a cheaper order), and classifies with a
1x1 conv after channel dropout (``Dropout2d``, as mmsegmentation's decode heads); the logits are upsampled to the
input. B0 and B1 decode with 256 channels, B2..B5 with 768 (``conf/model/segformer_b*.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones.mit import MIT_ARCHS
from segkit.models.base import SegmentationNet
from segkit.models.blocks import resize_to


class AllMLPHead(nn.Module):
    """The all-MLP decoder, computed in an equivalent, cheaper order.

    Parameters as the paper's: ``embed.i`` stage i's Linear embedding, ``fuse`` the 1x1 conv (no bias) over the
    concatenation of the upsampled embeddings (stage 4's block first, as the authors concatenate), ``norm`` its
    BatchNorm, then ReLU, channel dropout (``Dropout2d``, as mmsegmentation's heads) and ``classifier``. The
    embedding, ``fuse``'s block for the stage and bilinear upsampling are all linear per pixel, and bilinear weights
    sum to one, so they commute: each stage's embedding and fuse block are multiplied into one C_i x D matrix,
    applied at the stage's own resolution, and the results upsampled and summed. The same function of the same
    parameters, without the 4D-channel stride-4 concatenation and the D x 4D conv over it: about half of
    SegFormer-B0's FLOPs and 60% of B2's in the paper's order, and most of their CPU training time."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Linear(c, channels) for c in in_channels)
        self.fuse = nn.Conv2d(len(in_channels) * channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        blocks = self.fuse.weight.flatten(1).chunk(len(features), dim=1)[::-1]
        out = bias = None
        for embed, block, x in zip(self.embed, blocks, features):
            y = F.linear(x.permute(0, 2, 3, 1), block @ embed.weight).permute(0, 3, 1, 2)
            out = resize_to(y, size) if out is None else out + resize_to(y, size)
            bias = block @ embed.bias if bias is None else bias + block @ embed.bias
        out = F.relu(self.norm(out + bias[:, None, None]), inplace=True)
        return self.classifier(self.dropout(out))


class SegFormer(SegmentationNet):
    """SegFormer-B0..B5: ``backbone`` is the MiT encoder (``mit_b0`` ... ``mit_b5``), ``head`` the all-MLP decoder.
    Any input size: the encoder's convolutions round up, and the stride-4 logits are resized to the input."""

    trunks = MIT_ARCHS

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "mit_b0",
        pretrained: bool = False,
        weights_path: str | None = None,
        decoder_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = self.build_trunk(backbone, in_channels, 32, pretrained, weights_path)
        self.head = AllMLPHead(self.backbone.channels, decoder_channels, num_classes, dropout)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features)
