"""RegNet trunks (Radosavovic et al., 2020): torchvision's RegNetX/RegNetY, blocks 1..4 at strides 4..32."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models import regnet

from segkit.models.backbones.stages import Backbone, check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import torchvision_model

REGNET_ARCHS = tuple(
    f"regnet_{kind}_{size}"
    for kind in ("x", "y")
    for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf") + (("128gf",) if kind == "y" else ())
)


def build_regnet(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> Backbone:
    """``stem`` (stride 2) and ``block1..block4`` of torchvision's ``trunk_output``, returning the blocks at
    strides 4, 8, 16, 32 with their widths (32, 64, 160, 400 for regnet_x_400mf)."""
    check_stride(name, output_stride, (32,))
    with _block_widths_on_cpu():
        net = torchvision_model(name, pretrained=pretrained, weights_path=weights_path)
    net.stem[0] = adapt_first_conv(net.stem[0], in_channels)
    blocks = OrderedDict(net.trunk_output.named_children())
    stages = OrderedDict(stem=net.stem, **blocks)
    channels = [[m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels for block in blocks.values()]
    return Backbone(stages, list(blocks), channels, [4, 8, 16, 32])


@contextmanager
def _block_widths_on_cpu() -> Iterator[None]:
    """torchvision computes a RegNet's block widths with tensors and reads them back (``BlockParams``), which a
    build under ``torch.device("meta")`` cannot do (nets are sized on the meta device before any allocation);
    here that small computation runs on the CPU whatever the default device, the layers still go to it."""
    original = regnet.BlockParams.__dict__["from_init_params"]

    def from_init_params(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(from_init_params)
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = original
