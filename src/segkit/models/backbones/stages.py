"""What every family builder returns: a ``Backbone`` (named stages, the channels and stride of each returned map),
and the output-stride check the builders share."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from segkit import SegkitError


class Backbone(IntermediateLayerGetter):
    """A torchvision classifier cut into named stages; ``forward`` returns the output of each returned stage.

    Built on torchvision's ``IntermediateLayerGetter`` so the stages keep the names they are registered under
    (``stem``, ``layer1`` ... for ResNets): checkpoints of nets built on the former per-family backbone classes
    keep their keys. ``channels`` and ``strides`` list the width and stride of each returned feature map.
    """

    def __init__(
        self, stages: OrderedDict[str, nn.Module], returns: list[str], channels: list[int], strides: list[int]
    ) -> None:
        super().__init__(nn.Sequential(stages), {name: name for name in returns})
        self.channels = list(channels)
        self.strides = list(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(super().forward(x).values())


def check_stride(name: str, output_stride: int, allowed: tuple[int, ...]) -> None:
    if output_stride not in allowed:
        raise SegkitError(f"model.output_stride={output_stride}: the {name} backbone supports {allowed}")


def last_block_per_stride(features: nn.Sequential) -> Backbone:
    """A ``features`` sequence of blocks (MobileNet, EfficientNet) under its own indices, returning the last block
    at each stride it reaches: the stride of a block is the product of its convolutions' largest strides."""
    stride, ends, channels = 1, {}, {}
    for i, block in enumerate(features):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        stride *= max(c.stride[0] for c in convs)
        ends[stride], channels[stride] = str(i), convs[-1].out_channels
    strides = sorted(ends)
    stages = OrderedDict((str(i), block) for i, block in enumerate(features))
    return Backbone(stages, [ends[s] for s in strides], [channels[s] for s in strides], strides)
