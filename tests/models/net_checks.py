"""The checks every architecture must pass (the net contract of DESIGN.md) and the real ``conf/model`` configs
built the way the framework builds them, shared by the contract test and the architecture-family tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from segkit.models.blocks import main_logits
from segkit.models.targets import aux_stride, masks_at_size
from tests.conftest import CONF_DIR, compose_config

MODEL_CONFIGS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


def model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` composed as a run composes it (``defaults:`` resolved), with every download
    switched off (``pretrained*: false``) so tests run offline on a random init."""
    cfg = OmegaConf.to_container(compose_config("train", [f"model={name}"]).model, resolve=True)
    return {key: (False if key.startswith("pretrained") else value) for key, value in cfg.items()}


def config_maker(name: str, **overrides: Any) -> Callable[..., nn.Module]:
    """``make(num_classes=..., in_channels=...)`` building the net of ``conf/model/<name>.yaml``."""
    return partial(hydra.utils.instantiate, {**model_config(name), **overrides})


def on_meta(make: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """The net without allocating or initialising weights, at 21 classes unless told: for counting parameters."""
    with torch.device("meta"):
        return make(**{"num_classes": 21, **kwargs})


def check_output_shapes(
    make_net: Callable[..., nn.Module],
    sizes=((97, 131), (64, 64)),
    in_channels=(3, 4),
    num_classes: int = 5,
    batch: int = 2,
) -> None:
    """B x K x H x W out for the given (odd and even) sizes and input channels, in train mode (``out``; auxiliary
    maps are B x K at the input size or ceil(size / 2**k), e.g. ICNet's label guidance at 1/16 and 1/8, and per-image outputs such as
    EncNet's B x K ``se`` keep the batch) and in eval mode (one tensor). Returns the last net built."""
    net = None
    for cin in in_channels:
        net = make_net(num_classes=num_classes, in_channels=cin)
        for h, w in sizes:
            x = torch.randn(batch, cin, h, w)
            net.train()
            out = net(x)
            assert main_logits(out).shape == (batch, num_classes, h, w), (cin, h, w, main_logits(out).shape)
            if isinstance(out, Mapping):
                for name, value in out.items():
                    assert value.shape[0] == batch, name
                    if value.ndim == 4:
                        assert value.shape[1] == num_classes, (name, value.shape)
                        assert aux_stride((h, w), value.shape[-2:]) is not None, (name, value.shape)
            net.eval()
            with torch.no_grad():
                out = net(x)
            assert isinstance(out, torch.Tensor), type(out)
            assert out.shape == (batch, num_classes, h, w)
    return net


def fixed_batch(num_classes: int = 4, size: int = 64, batch: int = 2, in_channels: int = 3, seed: int = 0):
    """Images whose classes are blocks of distinct brightness, and their masks."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, size, size, dtype=torch.long)
    q = size // 2
    for b in range(batch):
        labels = torch.randperm(num_classes, generator=g)[:4] % num_classes
        mask[b, :q, :q], mask[b, :q, q:], mask[b, q:, :q], mask[b, q:, q:] = labels.tolist()
    image = (mask.float() / num_classes)[:, None].repeat(1, in_channels, 1, 1)
    image = image + 0.05 * torch.randn(image.shape, generator=g)
    return image, mask


def check_learns(
    net: nn.Module,
    steps: int = 25,
    lr: float = 1e-3,
    num_classes: int = 4,
    size: int = 64,
    aux_weights: Mapping[str, float] | None = None,
    factor: float = 0.5,
    batch: int = 2,
) -> tuple[float, float]:
    """``steps`` Adam steps on one fixed batch cut the main loss to at most ``factor`` of its start. Auxiliary
    outputs are trained with ``aux_weights``, by default the net's published ``default_aux_weights``. Adam is the
    fused form: on a CPU it steps 130M parameters (FCN-VGG's fc6/fc7) in a fifth of the time of the default."""
    if aux_weights is None:
        aux_weights = getattr(net, "default_aux_weights", None)
    torch.manual_seed(0)
    image, mask = fixed_batch(num_classes, size, batch)
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    net.train()
    losses = []
    for _ in range(steps):
        out = net(image)
        loss = F.cross_entropy(main_logits(out), mask)
        losses.append(loss.item())
        total = loss
        if isinstance(out, Mapping):
            for name, weight in (aux_weights or {}).items():
                if name in out and out[name].ndim == 4:
                    total = total + weight * F.cross_entropy(out[name], masks_at_size(mask, out[name].shape[-2:]))
        opt.zero_grad()
        total.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        final = F.cross_entropy(main_logits(net(image)), mask).item()
    net.train()
    end = min(final, losses[-1])
    assert end <= factor * losses[0], f"loss {losses[0]:.3f} -> {end:.3f} in {steps} steps"
    return losses[0], end


# Enough for every net here to halve its loss on the fixed batch with a margin, at a fraction of 25 steps on 64 x 64.
QUICK_LEARNING = {"steps": 10, "size": 32}


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
