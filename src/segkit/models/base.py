"""The net contract in code: ``SegmentationNet``, the base class of every net in ``segkit.models.nets``.

What the rest of segkit reads from a net is declared here, not found by looking for attribute names: the trunk
(``backbone``: the optimizer tunes it apart from the head), the auxiliary heads by output name (``aux_heads``), the
loss weights its paper trains them with (``default_aux_weights``), the main logits of its output (``main_logits``)
and the trunks its constructor takes (``trunks``, built by ``build_trunk``). A net returns B x K x H x W logits at
the input size for any H x W; in training mode a net with auxiliary heads returns ``{"out": logits, <head name>:
output, ...}`` instead, which ``SegmentationModule`` scores head by head.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import build_backbone
from segkit.models.blocks import crop_to, main_logits, pad_to_multiple, resize_to


class SegmentationNet(nn.Module):
    """A segmentation net: trunk, head, auxiliary heads.

    - ``backbone``: the trunk, the submodule registered under that name (``self.backbone = build_backbone(...)``),
      or None for a net trained from scratch that has no trunk (U-Net, ENet, ...). Every net names its trunk so; a
      net whose trunk lives inside a wrapped model (torchvision's) overrides the property. The optimizer puts its
      parameters in the ``backbone`` group and everything else, the head, in the ``head`` group.
    - ``aux_heads``: output name -> module, the auxiliary heads, run in training mode only; the
      ``nn.ModuleDict`` registered under that name, empty when the net has none (or they are switched off).
    - ``default_aux_weights``: output name -> loss weight of each auxiliary output, as the net's paper trains it
      (the run's ``aux_weights`` overrides them).
    - ``main_logits(output)``: the B x K x H x W logits of an output, a tensor or the training-mode dict.
    - ``trunks``: the ``model.backbone`` names the constructor accepts (a subset of
      ``segkit.models.backbones.TRUNKS``; empty for a net without a choice of trunk). The constructor builds its
      trunk with ``self.build_trunk(...)``, which refuses any other name in one line that lists these; a test
      builds every net with every trunk it declares.

    ``forward`` is the skeleton of trunk-and-head nets: the input padded to ``input_multiple`` (the strides the net
    needs to divide it), the trunk's features, ``decode`` to logits resized to the padded input and cropped back; in
    training mode ``aux_logits`` too, resized the same way. A net with another flow (a cascade, boosters on its own
    branches, deep supervision) overrides ``forward`` and still declares the rest.
    """

    default_aux_weights: ClassVar[Mapping[str, float]] = MappingProxyType({})
    input_multiple: ClassVar[int] = 1
    trunks: ClassVar[tuple[str, ...]] = ()
    main_logits = staticmethod(main_logits)

    @property
    def backbone(self) -> nn.Module | None:
        """The trunk: the submodule registered as ``backbone``, None when the net has none."""
        return self._modules.get("backbone")

    @backbone.setter
    def backbone(self, module: None) -> None:
        # nn.Module.__setattr__ registers a module itself; only ``self.backbone = None`` (no trunk) arrives here.
        if module is not None:
            raise TypeError(f"{type(self).__name__}.backbone must be an nn.Module or None, not {type(module).__name__}")
        self._modules.pop("backbone", None)

    def build_trunk(
        self, name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
    ) -> nn.Module:
        """``build_backbone`` for a trunk this net declares in ``trunks``; any other name is a one-line error. The
        trunk has ``channels`` and ``strides`` and returns one NCHW map per stage (a ``Backbone``, or MiT's own
        ``MixTransformer`` with the same attributes)."""
        if name not in type(self).trunks:
            raise SegkitError(f"model.backbone={name!r}: {type(self).__name__} takes one of {type(self).trunks}")
        return build_backbone(name, in_channels, output_stride, pretrained, weights_path)

    @property
    def aux_heads(self) -> Mapping[str, nn.Module]:
        """Output name -> auxiliary head: the ``nn.ModuleDict`` registered as ``aux_heads``, else empty."""
        heads = self._modules.get("aux_heads")
        return heads if heads is not None else MappingProxyType({})

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        padded, size = pad_to_multiple(x, self.input_multiple)
        features = self.backbone(padded)
        out = self._at_input(self.decode(features), padded, size)
        if not (self.training and self.aux_heads):
            return out
        aux = self.aux_logits(features)
        return {"out": out, **{name: self._at_input(logits, padded, size) for name, logits in aux.items()}}

    def decode(self, features: Any) -> torch.Tensor:
        """The head: the trunk's features -> logits at any resolution (``forward`` brings them to the input)."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither forward nor decode")

    def aux_logits(self, features: Any) -> dict[str, torch.Tensor]:
        """The auxiliary heads on the trunk's features, by output name (training mode only)."""
        raise NotImplementedError(f"{type(self).__name__} has auxiliary heads but no aux_logits")

    def _at_input(self, logits: torch.Tensor, padded: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = resize_to(logits, padded.shape[-2:])
        return crop_to(logits, size) if self.input_multiple > 1 else logits
