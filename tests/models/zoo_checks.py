"""The checks every architecture must pass (the net contract of DESIGN.md), shared by the zoo tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.blocks import main_logits


def check_output_shapes(
    make_net: Callable[..., nn.Module],
    sizes=((97, 131), (64, 64)),
    in_channels=(3, 4),
    num_classes: int = 5,
    batch: int = 2,
) -> None:
    """B x K x H x W out for odd and even sizes, RGB and RGB-D, in train mode (aux heads on) and eval mode."""
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
            net.eval()
            with torch.no_grad():
                out = net(x)
            assert isinstance(out, torch.Tensor) or "out" in out
            assert main_logits(out).shape == (batch, num_classes, h, w)


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
) -> tuple[float, float]:
    """``steps`` Adam steps on one fixed batch cut the main loss to at most ``factor`` of its start."""
    torch.manual_seed(0)
    image, mask = fixed_batch(num_classes, size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
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
                    total = total + weight * F.cross_entropy(out[name], mask)
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


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
