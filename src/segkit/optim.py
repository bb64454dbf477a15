"""Parameter groups for torch optimisers, and learning-rate schedules.

Schedules are factories ``schedule(optimizer, total_steps=...)`` (Hydra ``_partial_``); the module steps them once
per optimisation step, except those returning a Lightning scheduler dict (``plateau_lr``, stepped per epoch).

``budget="time"`` (poly, cosine, step) runs a schedule on the fraction of ``trainer.max_time`` spent rather than on
steps: the module passes ``progress(step)``, re-measured at every step from Lightning's Timer (which survives a
resume), so a run ends annealed at its time budget on a fast or a slow machine, ``max_epochs`` being only a cap
(whichever of time and steps is further along sets the progress). Budgeted training as Li et al. (ICLR 2020) advise.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
)

from segkit import SegkitError

log = logging.getLogger("segkit")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def optimizer_over_groups(factory: Callable[..., Optimizer], net: nn.Module) -> Optimizer:
    """``factory`` (a Hydra ``_partial_`` of a torch optimiser, e.g. ``torch.optim.AdamW`` with ``lr``) over the
    parameter groups of ``net``.

    A pretrained trunk is usually tuned gently while the freshly initialised head learns fast, and weight decay
    on norm scales and biases only fights normalisation; both are switches of the optimizer config rather than
    per-model code. ``head_lr_mult`` and ``no_decay_norm_bias`` are taken out of the partial's keywords here (torch's
    optimisers do not know them); the rest (``lr``, ``weight_decay``, ``momentum``, ``betas`` ...) goes to torch.
    A factory that is not a partial gets the trainable parameters as they are.

    Where every parameter is on the CPU and the optimiser has a fused kernel (Adam, AdamW, SGD, Adagrad), it is
    used unless ``fused`` or ``foreach`` is set: torch's default there is a loop over the tensors, and the fused
    AdamW step of SegFormer-B0 took about a third of its time (docs/measurements.md). ``optimizer.fused=false`` keeps
    the loop.
    """
    if not isinstance(factory, functools.partial):
        return factory(p for p in net.parameters() if p.requires_grad)
    keywords = dict(factory.keywords)
    if "name" in keywords:  # the former segkit.optim.make_optimizer spelling
        raise SegkitError(
            f"optimizer.name={keywords['name']} is no longer read: choose optimizer=adam|adamw|sgd|rmsprop, "
            f"or set optimizer._target_={keywords['name']}"
        )
    head_lr_mult = float(keywords.pop("head_lr_mult", 1.0))
    no_decay_norm_bias = bool(keywords.pop("no_decay_norm_bias", True))
    lr = keywords.get("lr", _default(factory.func, "lr"))
    weight_decay = keywords.get("weight_decay", _default(factory.func, "weight_decay") or 0.0)
    groups = param_groups(net, lr, weight_decay, head_lr_mult, no_decay_norm_bias)
    fused = _fused_on_cpu(factory.func, keywords, [p for group in groups for p in group["params"]])
    if fused:
        keywords["fused"] = True
    elif keywords.get("fused") is None:
        keywords.pop("fused", None)
    optimizer = factory.func(groups, *factory.args, **keywords)
    if fused:
        # The fused step can take a GradScaler's scale itself, and says so with this flag; Lightning then refuses to
        # clip gradients under any mixed precision, bf16 included. Without it a scaler unscales the gradients before
        # clipping and the step, as for any optimiser; the fused kernel is still the one that runs.
        optimizer._step_supports_amp_scaling = False
    return optimizer


def keep_configured_kernels(optimizer: Optimizer) -> None:
    """A resumed optimiser's parameter groups take ``fused`` and ``foreach`` back from the checkpoint (torch's
    ``load_state_dict``): put the ones this run's config chose (its ``defaults``) back, so a checkpoint from before the
    fused default, or ``optimizer.fused=false`` given on resuming, gets what the config says."""
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]


def _fused_on_cpu(optimizer_class: Callable, keywords: dict[str, Any], params: list[torch.Tensor]) -> bool:
    """Whether to ask for the fused step: nothing chosen (``fused``, ``foreach``, ``differentiable``), a fused kernel
    in the optimiser's signature, and floating-point parameters all on the CPU."""
    if any(keywords.get(name) is not None for name in ("fused", "foreach")) or keywords.get("differentiable"):
        return False
    if _default(optimizer_class, "fused") is not None or "fused" not in _parameters(optimizer_class):
        return False
    return bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)


def _parameters(optimizer_class: Callable) -> set[str]:
    try:
        return set(inspect.signature(optimizer_class).parameters)
    except (TypeError, ValueError):
        return set()


def _default(optimizer_class: Callable, name: str) -> Any:
    parameter = inspect.signature(optimizer_class).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def param_groups(
    params: nn.Module | Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    head_lr_mult: float = 1.0,
    no_decay_norm_bias: bool = True,
) -> list[dict[str, Any]]:
    """Groups named ``backbone``, ``backbone_no_decay``, ``head``, ``head_no_decay`` (empty ones dropped);
    the names show up in the learning-rate monitor. The ``backbone`` groups hold the net's declared trunk
    (``backbone_parameter_ids``), the ``head`` groups everything else, at ``lr * head_lr_mult``."""
    if isinstance(params, nn.Module):
        net = params
        backbone = backbone_parameter_ids(net)
        if not backbone and head_lr_mult != 1.0:
            log.warning(f"{type(net).__name__} declares no backbone; head_lr_mult={head_lr_mult} is not applied")
        no_decay = _norm_and_bias_ids(net)
        named = [p for p in net.parameters() if p.requires_grad]
    else:
        named = [p for p in params if p.requires_grad]
        backbone = set()
        no_decay = {id(p) for p in named if p.ndim <= 1}
    groups: dict[str, dict[str, Any]] = {}
    for p in named:
        part = "backbone" if id(p) in backbone else "head"
        decays = not (no_decay_norm_bias and id(p) in no_decay)
        name = part if decays else f"{part}_no_decay"
        group = groups.setdefault(
            name,
            {
                "name": name,
                "params": [],
                "lr": lr * (head_lr_mult if part == "head" and backbone else 1.0),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(p)
    order = ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    return [groups[n] for n in order if n in groups]


def backbone_parameter_ids(net: nn.Module) -> set[int]:
    """The ids of the parameters of ``net.backbone``: the trunk a ``SegmentationNet`` declares (None where it has
    none). Any other ``nn.Module`` may declare its trunk the same way; without a module there, it has none."""
    trunk = getattr(net, "backbone", None)
    return {id(p) for p in trunk.parameters()} if isinstance(trunk, nn.Module) else set()


def _norm_and_bias_ids(net: nn.Module) -> set[int]:
    ids: set[int] = set()
    for module in net.modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, NORM_TYPES) or pname == "bias" or p.ndim <= 1:
                ids.add(id(p))
    return ids


def _finite_steps(total_steps: float, schedule: str) -> int:
    if not math.isfinite(total_steps) or total_steps <= 0:
        raise SegkitError(f"the {schedule} schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
    return int(total_steps)


Progress = Callable[[int], float]


def _check_budget(budget: str, progress: Progress | None, schedule: str) -> bool:
    if budget not in ("steps", "time"):
        raise SegkitError(f"scheduler.budget={budget!r}; use 'steps' or 'time'")
    if budget == "time" and progress is None:
        raise SegkitError(f"the {schedule} schedule with budget=time needs the run's time budget: set trainer.max_time")
    return budget == "time"


def _on_progress(
    optimizer: Optimizer, decay: Callable[[float], float], progress: Progress, warmup_steps: int, warmup_factor: float
) -> LRScheduler:
    """``lr * decay(p) * ramp(step)``: ``p`` the run's progress in [0, 1] (time or steps), ``ramp`` the linear warm-up
    over the first ``warmup_steps`` steps. A closure, so the scheduler's state dict holds only its step count."""

    def factor(step: int) -> float:
        ramp = 1.0 if step >= warmup_steps else warmup_factor + (1 - warmup_factor) * step / max(1, warmup_steps)
        return ramp * decay(min(1.0, max(0.0, progress(step))))

    return LambdaLR(optimizer, factor)


def _with_warmup(optimizer: Optimizer, decay: LRScheduler, warmup_steps: int, warmup_factor: float) -> LRScheduler:
    if warmup_steps <= 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def poly_lr(
    optimizer: Optimizer,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    warmup_factor: float = 1e-3,
    budget: str = "steps",
    progress: Progress | None = None,
) -> LRScheduler:
    """``lr * (1 - step / total) ** power`` after an optional linear warm-up from ``lr * warmup_factor``
    (``budget="time"``: ``1 - progress`` in place of ``1 - step / total``)."""
    if _check_budget(budget, progress, "poly"):
        return _on_progress(optimizer, lambda p: (1 - p) ** power, progress, int(warmup_steps), warmup_factor)  # type: ignore[arg-type]
    total_steps = _finite_steps(total_steps, "poly")
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    decay = PolynomialLR(optimizer, total_iters=total_steps - warmup_steps, power=power)
    return _with_warmup(optimizer, decay, warmup_steps, warmup_factor)


def cosine_lr(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_factor: float = 1e-3,
    min_lr_ratio: float = 0.0,
    budget: str = "steps",
    progress: Progress | None = None,
) -> LRScheduler:
    """Half a cosine from each group's ``lr`` down to ``lr * min_lr_ratio`` over the run, after an optional linear
    warm-up (a ratio rather than torch's absolute ``eta_min``, so groups with a head multiplier keep their ratio)."""
    if _check_budget(budget, progress, "cosine"):

        def cosine(p: float) -> float:
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

        return _on_progress(optimizer, cosine, progress, int(warmup_steps), warmup_factor)  # type: ignore[arg-type]
    total_steps = _finite_steps(total_steps, "cosine")
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    steps = total_steps - warmup_steps

    def factor(step: int) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    return _with_warmup(optimizer, LambdaLR(optimizer, factor), warmup_steps, warmup_factor)


def step_lr(
    optimizer: Optimizer,
    total_steps: int,
    milestones: Sequence[float] = (0.6, 0.9),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_factor: float = 1e-3,
    budget: str = "steps",
    progress: Progress | None = None,
) -> LRScheduler:
    """Multiply the lr by ``gamma`` at each milestone, given as fractions of the run (0.6 = 60% of the steps, or of
    the time budget), so the same config fits any run length."""
    if any(not 0 < m < 1 for m in milestones):
        raise SegkitError(f"scheduler.milestones={list(milestones)} must be fractions of the run between 0 and 1")
    if _check_budget(budget, progress, "step"):
        marks = sorted(float(m) for m in milestones)
        return _on_progress(
            optimizer,
            lambda p: gamma ** sum(p >= m for m in marks),
            progress,
            int(warmup_steps),
            warmup_factor,  # type: ignore[arg-type]
        )
    total_steps = _finite_steps(total_steps, "step")
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    points = sorted({max(1, round(m * total_steps) - warmup_steps) for m in milestones})
    return _with_warmup(optimizer, MultiStepLR(optimizer, points, gamma=gamma), warmup_steps, warmup_factor)


def plateau_lr(
    optimizer: Optimizer,
    total_steps: int | None = None,
    monitor: str = "val/mIoU",
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 5,
    min_lr: float = 0.0,
) -> dict[str, Any]:
    """Cut the lr by ``factor`` when ``monitor`` stops improving for ``patience`` validations (stepped per epoch)."""
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor, "strict": False}


class TimeBudget:
    """``progress(step)`` of a run with ``trainer.max_time``: the share of the time budget spent (Lightning's Timer:
    wall clock of the fit loop, validation included, carried over a resume), or ``step / total_steps`` when the step
    cap (``max_epochs``/``max_steps``) is nearer. Re-measured at every call, so a slow machine's schedule simply
    advances faster per step."""

    def __init__(self, trainer: Any, total_steps: float) -> None:
        from pytorch_lightning.callbacks import Timer

        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if self.timer is None or self.timer.time_remaining() is None:
            raise SegkitError("scheduler.budget=time needs a time budget: set trainer.max_time, e.g. 00:00:20:00")
        self.total_steps = float(total_steps) if math.isfinite(total_steps) and total_steps > 0 else math.inf

    def __call__(self, step: int) -> float:
        elapsed = self.timer.time_elapsed()
        remaining = self.timer.time_remaining() or 0.0
        by_time = elapsed / max(1e-9, elapsed + remaining)
        return max(by_time, step / self.total_steps)
