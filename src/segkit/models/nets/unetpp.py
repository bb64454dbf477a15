"""UNet++ (Zhou et al., 2018): U-Net whose skip connections are nested, densely connected conv pathways.

Node X^{i,j} (depth i, column j) sees every earlier node of its row and the upsampled X^{i+1,j-1}, so encoder
features reach the decoder already partly "decoded" - a smaller semantic gap than U-Net's plain skips. The top
row X^{0,1..4} gives full-resolution outputs at four depths, which deep supervision trains together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.blocks import ConvBNReLU, crop_to, pad_to_multiple


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class UNetPlusPlus(nn.Module):
    """UNet++ with widths ``widths`` per depth (default 32-512, four poolings) and transposed-conv upsampling.

    ``deep_supervision``: in train mode return ``{"out": head(X^{0,L}), "aux1": head(X^{0,1}), ...}`` (one
    1x1 head per top-row node); in eval mode only the ``out`` tensor. Inputs of any size are padded to a
    multiple of ``2**(len(widths)-1)`` and cropped back.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        widths = list(widths)
        if len(widths) < 2:
            raise SegkitError(f"model.widths={widths}: give at least two widths (one per depth)")
        self.depth = len(widths) - 1
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip([in_channels] + widths, widths))
        # nodes[i][j-1] is X^{i,j}; ups[i][j-1] upsamples X^{i+1,j-1} into it.
        self.nodes, self.ups = nn.ModuleList(), nn.ModuleList()
        for i in range(self.depth):
            row_nodes, row_ups = nn.ModuleList(), nn.ModuleList()
            for j in range(1, self.depth - i + 1):
                row_ups.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
                row_nodes.append(conv_block((j + 1) * widths[i], widths[i]))
            self.nodes.append(row_nodes)
            self.ups.append(row_ups)
        heads = self.depth if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes, 1) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        x, size = pad_to_multiple(x, 2**self.depth)
        grid: list[list[torch.Tensor]] = []
        y = x
        for i, block in enumerate(self.encoder):
            y = block(self.pool(y) if i else y)
            grid.append([y])
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                up = self.ups[i][j - 1](grid[i + 1][j - 1])
                grid[i].append(self.nodes[i][j - 1](torch.cat([*grid[i], up], dim=1)))
        top = grid[0][1:]
        out = crop_to(self.heads[-1](top[-1]), size)
        if not (self.deep_supervision and self.training):
            return out
        aux = {f"aux{j + 1}": crop_to(head(node), size) for j, (head, node) in enumerate(zip(self.heads[:-1], top))}
        return {"out": out, **aux}
