"""torchvision's own segmentation models behind segkit's net contract, to compare against them in this framework.

torchvision returns an ``OrderedDict`` (``out`` and, with ``aux_loss``, ``aux``); here train mode returns
that as a plain dict and eval mode the ``out`` tensor. ``pretrained_backbone`` (the configs' default) starts the
trunk from torchvision's ImageNet weights, as segkit's own backbone nets do; ``pretrained`` loads torchvision's
whole DEFAULT segmentation model (COCO with the 21 VOC classes); the class layers are re-initialised when
``num_classes`` differs. ``weights_path`` reads either file from disk (without internet): a saved state dict of the
same torchvision segmentation model, or of the ImageNet classifier its trunk was cut from (e.g. torchvision's
``resnet50-*.pth``), told apart by its keys (only the segmentation model's start with ``backbone.``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from segkit import SegkitError
from segkit.models.backbones import download_state_dict, load_into, load_state_dict_file, replace_first_conv
from segkit.models.base import SegmentationNet
from segkit.models.blocks import main_logits

# The ImageNet classifier behind each trunk, and where its layers sit in the segmentation model's ``backbone``.
BACKBONES = {
    "fcn_resnet50": ("resnet50", ""),
    "fcn_resnet101": ("resnet101", ""),
    "deeplabv3_resnet50": ("resnet50", ""),
    "deeplabv3_resnet101": ("resnet101", ""),
    "deeplabv3_mobilenet_v3_large": ("mobilenet_v3_large", "features."),
    "lraspp_mobilenet_v3_large": ("mobilenet_v3_large", "features."),
}

# The layers whose output width is num_classes, re-initialised when a checkpoint has another class count.
CLASS_LAYERS = {
    "fcn_resnet50": ("classifier.4", "aux_classifier.4"),
    "fcn_resnet101": ("classifier.4", "aux_classifier.4"),
    "deeplabv3_resnet50": ("classifier.4", "aux_classifier.4"),
    "deeplabv3_resnet101": ("classifier.4", "aux_classifier.4"),
    "deeplabv3_mobilenet_v3_large": ("classifier.4", "aux_classifier.4"),
    "lraspp_mobilenet_v3_large": ("classifier.low_classifier", "classifier.high_classifier"),
}


class TorchvisionSegmentation(SegmentationNet):
    """``torchvision.models.segmentation.<arch>`` with ``in_channels`` inputs and ``num_classes`` outputs; the
    auxiliary head (``aux``) is trained with loss weight 0.5, as in torchvision's reference recipe.

    The wrapped model owns the trunk and the auxiliary head (``model.backbone``, ``model.aux_classifier``: the keys
    of torchvision's own state dicts), so ``backbone`` and ``aux_heads`` read them there."""

    default_aux_weights = {"aux": 0.5}

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "deeplabv3_resnet50",
        aux: bool = False,
        pretrained: bool = False,
        weights_path: str | None = None,
        pretrained_backbone: bool = False,
    ) -> None:
        super().__init__()
        if arch not in CLASS_LAYERS:
            raise SegkitError(f"model.arch={arch!r}; choose one of {tuple(CLASS_LAYERS)}")
        kwargs = {"num_classes": num_classes, "weights": None, "weights_backbone": None}
        if arch.startswith("lraspp"):
            if aux:
                raise SegkitError(f"{arch} has no auxiliary head; set model.aux=false")
        else:
            kwargs["aux_loss"] = aux
        self.model = torchvision.models.get_model(arch, **kwargs)
        if weights_path:
            state, source = load_state_dict_file(weights_path), f"weights file '{weights_path}'"
            if any(k.startswith("backbone.") for k in state):
                self._load(state, arch, source)
            else:  # the ImageNet classifier's file: the trunk only
                self._load_backbone(arch, state, source)
        elif pretrained:
            self._load(download_state_dict(arch), arch, f"torchvision's {arch} weights")
        elif pretrained_backbone:
            self._load_backbone(arch)
        replace_first_conv(self.model.backbone, in_channels)

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    @property
    def aux_heads(self) -> Mapping[str, nn.Module]:
        head = getattr(self.model, "aux_classifier", None)  # LR-ASPP has none
        return {"aux": head} if head is not None else {}

    def _load_backbone(
        self, arch: str, classifier: dict[str, torch.Tensor] | None = None, source: str | None = None
    ) -> None:
        """The trunk from the ImageNet classifier it was cut from (its state dict ``classifier``, else downloaded);
        every trunk weight must be found there.

        Loaded here rather than through the builders' ``weights_backbone=`` so that it takes the same DEFAULT weights
        as segkit's own backbones and fails offline with segkit's one-line advice (``download_state_dict``)."""
        name, prefix = BACKBONES[arch]
        if classifier is None:
            classifier = download_state_dict(name, "model.pretrained_backbone")
        state = {k[len(prefix) :]: v for k, v in classifier.items() if k.startswith(prefix)}
        own = self.model.backbone.state_dict()
        source = source or f"torchvision's {name} weights"
        load_into(self.model.backbone, {k: v for k, v in state.items() if k in own}, source)

    def _load(self, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
        """Load all but the class layers whose shape differs, and the aux head when only one side has it."""
        own = self.model.state_dict()
        has_aux = any(k.startswith("aux_classifier.") for k in own)
        skip = {
            k
            for k, v in state.items()
            if (k.startswith("aux_classifier.") and not has_aux)
            or (k in own and k.rpartition(".")[0] in CLASS_LAYERS[arch] and v.shape != own[k].shape)
        }
        result = load_into(self.model, {k: v for k, v in state.items() if k not in skip}, source, strict=False)
        missing = [
            k
            for k in result.missing_keys
            if k not in skip
            and not (k.startswith("aux_classifier.") and not any(s.startswith("aux_classifier.") for s in state))
        ]
        if missing or result.unexpected_keys:
            raise SegkitError(
                f"{source} does not fit torchvision's {arch}: missing {missing[:3]}, unexpected "
                f"{result.unexpected_keys[:3]}; save torchvision.models.get_model('{arch}').state_dict()"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = self.model(x)
        if self.training and "aux" in out:
            return dict(out)
        return main_logits(out)
