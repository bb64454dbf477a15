"""UNet++ (Zhou et al., 2018): U-Net whose skip connections are nested, densely connected conv pathways.

Node X^{i,j} (depth i, column j) sees every earlier node of its row and the upsampled X^{i+1,j-1}, so encoder
features reach the decoder already partly "decoded" - a smaller semantic gap than U-Net's plain skips. The top
row X^{0,1..4} gives full-resolution outputs at four depths, which deep supervision trains together.

With deep supervision the paper offers two ways to predict (its "Deep supervision" paragraph): the accurate mode
averages the heads, and the fast mode picks one head - which makes the net prunable: head k needs only the
nodes X^{i,j} with i + j <= k (UNet++ L^k), so the deeper rows and columns are skipped, not computed and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.base import SegmentationNet
from segkit.models.blocks import ConvBNReLU, crop_to, pad_to_multiple


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class UNetPlusPlus(SegmentationNet):
    """UNet++ with widths ``widths`` per depth (default 32-512, four poolings) and transposed-conv upsampling.

    ``deep_supervision``: in train mode return ``{"out": head(X^{0,L}), "aux1": head(X^{0,1}), ...}`` (one
    1x1 head per top-row node); in eval mode one tensor, chosen by ``inference``:

    - ``"last"``: the head on X^{0,L} (the only head without deep supervision);
    - ``"mean"``: the mean of the logits of all L heads (the paper's accurate mode);
    - ``k`` in 1..L: the head on X^{0,k} alone (fast mode; the pruned UNet++ L^k, whose deeper nodes are not
      computed).

    Inputs of any size are padded to a multiple of ``2**(len(widths)-1)`` and cropped back. Trained from scratch,
    it has no pretrained trunk (``backbone`` is None; ``encoder`` is the X^{i,0} column); the heads on X^{0,1..L-1}
    are its ``aux_heads``.
    """

    default_aux_weights = {"aux1": 1.0, "aux2": 1.0, "aux3": 1.0}  # deep supervision: equal weights (the paper)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = False,
        inference: str | int = "last",
    ) -> None:
        super().__init__()
        widths = list(widths)
        if len(widths) < 2:
            raise SegkitError(f"model.widths={widths}: give at least two widths (one per depth)")
        self.depth = len(widths) - 1
        self.deep_supervision = deep_supervision
        self.inference = inference
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
        supervised = range(1, self.depth) if deep_supervision else ()
        self.aux_heads = nn.ModuleDict({f"aux{k}": nn.Conv2d(widths[0], num_classes, 1) for k in supervised})
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def inference(self) -> str | int:
        return self._inference

    @inference.setter
    def inference(self, mode: str | int) -> None:
        """Checked on every change, so a net switched after training (``net.inference = 2``) fails clearly too."""
        head = isinstance(mode, int) and not isinstance(mode, bool)
        if mode == "last" or (head and mode == self.depth):
            self._inference: str | int = "last"
            return
        if not (mode == "mean" or (head and 1 <= mode <= self.depth)):
            raise SegkitError(
                f"model.inference={mode!r}; use last, mean, or a head number 1..{self.depth} (X^(0,k), pruned)"
            )
        if not self.deep_supervision:
            raise SegkitError(
                f"model.inference={mode!r} needs the heads of deep supervision; set model.deep_supervision=true "
                "(and train with it) or keep model.inference=last"
            )
        self._inference = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        x, size = pad_to_multiple(x, 2**self.depth)
        pruned = not self.training and isinstance(self.inference, int)
        levels = self.inference if pruned else self.depth  # UNet++ L^k: only the nodes X^{i,j} with i + j <= k
        grid: list[list[torch.Tensor]] = []
        y = x
        for i, block in enumerate(self.encoder[: levels + 1]):
            y = block(self.pool(y) if i else y)
            grid.append([y])
        for j in range(1, levels + 1):
            for i in range(levels - j + 1):
                up = self.ups[i][j - 1](grid[i + 1][j - 1])
                grid[i].append(self.nodes[i][j - 1](torch.cat([*grid[i], up], dim=1)))
        top = grid[0][1:]
        if pruned:
            return crop_to(self.aux_heads[f"aux{levels}"](top[-1]), size)
        out = crop_to(self.head(top[-1]), size)
        if not self.aux_heads or not (self.training or self.inference == "mean"):
            return out
        aux = {name: crop_to(head(node), size) for (name, head), node in zip(self.aux_heads.items(), top)}
        return {"out": out, **aux} if self.training else torch.stack([*aux.values(), out]).mean(0)
