"""Batch norm synchronised across processes on every torch.distributed backend, the CPU's gloo included.

torch's ``nn.SyncBatchNorm`` runs on GPUs only ("SyncBatchNorm expected input tensor to be on GPU"). Under DDP on
CPU processes (``trainer=ddp_sim``) ``AllReduceBatchNorm`` here all-reduces the per-channel sum, sum of squares and
count of each batch through ``torch.distributed.nn`` (differentiable), so every process normalises with the
statistics of the whole global batch and the gradients are those of one process holding it all. It is not a
subclass of ``nn.SyncBatchNorm``, which DDP rejects on CPU modules; GPU runs keep torch's own (Lightning's
``sync_batchnorm``). ``CpuSyncBatchNorm`` is the Lightning plugin that swaps it in for fitting and back to the
original BatchNorm classes afterwards; the state dict keys do not change, so checkpoints load either way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.plugins.layer_sync import LayerSync
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all processes of ``process_group`` (all-reduce of per-channel sums);
    plain BatchNorm outside training or without an initialised process group of more than one process. Named apart
    from torch's ``nn.SyncBatchNorm``, which it neither is nor subclasses."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group
        self.original_cls: type[_BatchNorm] = nn.BatchNorm2d

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"AllReduceBatchNorm expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        syncing = (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )
        if not syncing:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        stats = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64), count])
        from torch.distributed.nn.functional import all_reduce  # autograd-aware: gradients flow to every rank

        stats = all_reduce(stats, group=self.process_group) if self.process_group else all_reduce(stats)
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps).float()
        out = (x - mean.float().view(shape)) * scale.view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _share_state(source: _BatchNorm, target: _BatchNorm) -> None:
    """``target`` takes ``source``'s parameters and buffers (the same tensors) and train/eval mode."""
    if source.affine:
        target.weight, target.bias = source.weight, source.bias
    target.running_mean, target.running_var = source.running_mean, source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` as ``AllReduceBatchNorm`` above, sharing its parameters and buffers."""
    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, AllReduceBatchNorm)):
        converted = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, process_group
        )
        converted.original_cls = type(module)
        _share_state(module, converted)
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``AllReduceBatchNorm`` above back to the BatchNorm class it replaced, sharing parameters and buffers."""
    converted = module
    if isinstance(module, AllReduceBatchNorm):
        converted = module.original_cls(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        _share_state(module, converted)
    for name, child in module.named_children():
        converted.add_module(name, revert_sync_batchnorm(child))
    return converted


class CpuSyncBatchNorm(LayerSync):
    """Lightning layer-sync plugin: ``AllReduceBatchNorm`` above while fitting, the original BatchNorm after."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)
