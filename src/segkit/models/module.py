"""The one LightningModule: wraps any net, its loss, optimiser, schedule and metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import nn

from segkit import NonFiniteLossError, SegkitError
from segkit.data.input_spec import InputSpec
from segkit.data.pipeline import same_size_groups
from segkit.inference import at_label_size
from segkit.metrics import SegmentationMetrics
from segkit.models.blocks import main_logits, resize_to
from segkit.models.targets import class_presence, masks_at_size
from segkit.precision import keep_fp32_where_cpu_bf16_fails
from segkit.rng import restore_rng_states, rng_states


def merge_aux_weights(net: nn.Module, aux_weights: Mapping[str, float] | None) -> dict[str, float]:
    """The net's published ``default_aux_weights`` with ``aux_weights`` over them; a name the net has no head for,
    or a weight that is not a number, is refused in one line (a typo would otherwise train nothing)."""
    defaults = dict(getattr(net, "default_aux_weights", None) or {})
    for name, weight in (aux_weights or {}).items():
        if name not in defaults:
            heads = ", ".join(defaults) or "none"
            raise SegkitError(
                f"aux_weights.{name}: {type(net).__name__} has no auxiliary head '{name}' (its heads: {heads})"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise SegkitError(f"aux_weights.{name}={weight!r}; give a number, e.g. aux_weights={{{name}:0.4}}")
    return {**defaults, **{name: float(weight) for name, weight in (aux_weights or {}).items()}}


class SegmentationModule(LightningModule):
    """Trains ``net`` (B x C x H x W -> B x K x H x W, or a dict with ``out`` and auxiliary outputs).

    Args:
        net: the network.
        loss: ``loss(logits, target) -> scalar``; applied to ``out`` and to each output named in ``aux_weights``.
        optimizer: a Hydra ``_partial_`` of a torch optimiser; ``head_lr_mult`` / ``no_decay_norm_bias`` among its
            keywords shape the parameter groups (see ``configure_optimizers``).
        scheduler: ``scheduler(optimizer, total_steps=...) -> LRScheduler`` stepped per step (or a Lightning
            scheduler dict with its own interval/monitor), or None.
        spec: the data module's ``InputSpec`` (label table, channels, normalisation, crop and eval sizes):
            validation runs the net at ``spec.eval_size`` as eval and predict do, and every checkpoint stores it.
        aux_weights: output name -> loss weight for auxiliary heads, e.g. ``{"aux": 0.4}``, over the net's
            ``default_aux_weights`` (the weights its paper trains with): the heads it names take its weights, the
            others keep the net's (0 leaves a head untrained; the net's own switch, e.g. ``aux=false``, removes it).
        config: the resolved run config, stored in checkpoints and shown to loggers.
        channels_last: keep the net and the input batches in NHWC memory format.
    """

    precision_reason: str | None = None  # why the run trains in its precision (segkit.precision); checkpointed

    def __init__(
        self,
        net: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: Callable[..., torch.optim.Optimizer],
        spec: InputSpec,
        scheduler: Callable[..., Any] | None = None,
        aux_weights: Mapping[str, float] | None = None,
        config: Mapping | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(dict(config or {}))
        self.net, self.loss_fn = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.spec = spec
        self.num_classes, self.ignore_index, self.class_names = spec.num_classes, spec.ignore_index, spec.class_names
        self.aux_weights = merge_aux_weights(net, aux_weights)
        self.channels_last = channels_last
        # convolutions whose bf16 weight gradient oneDNN gets wrong on a CPU stay fp32 under autocast
        self.fp32_convs = keep_fp32_where_cpu_bf16_fails(self.net)
        num_classes, ignore_index = self.num_classes, self.ignore_index
        if channels_last:  # NHWC: faster convolutions on tensor cores and with bf16/fp16 autocast
            self.net = self.net.to(memory_format=torch.channels_last)
            self.net.register_forward_pre_hook(_channels_last_input)
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index, self.class_names)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index, self.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Main-head logits only (inference)."""
        return main_logits(self.net(images))

    def _loss(self, outputs: torch.Tensor | Mapping[str, torch.Tensor], masks: torch.Tensor):
        if not isinstance(outputs, Mapping):
            return outputs, self.loss_fn(outputs, masks), {}
        logits = main_logits(outputs)
        parts = {name: self._aux_loss(outputs[name], masks) for name in self.aux_weights if name in outputs}
        total = self.loss_fn(logits, masks) + sum(self.aux_weights[n] * v for n, v in parts.items())
        return logits, total, parts

    def _aux_loss(self, output: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Dense auxiliary heads (B x K x H x W) take the main loss, against the mask at their own resolution
        (``masks_at_size``) when they predict at a coarser one (ICNet's cascade label guidance); image-level heads
        (B x K, e.g. EncNet's SE-loss) take BCE against which classes are present in each mask."""
        if output.ndim == 2:
            return F.binary_cross_entropy_with_logits(output, class_presence(masks, output.shape[1]))
        return self.loss_fn(output, masks_at_size(masks, output.shape[-2:], self.ignore_index))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        _, loss, parts = self._loss(self.net(images), masks)
        finite = bool(torch.isfinite(loss.detach()))
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank stops at the same step
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self._stop_non_finite(float(loss.detach()))
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=images.shape[0])
        # epoch means over every process's batches (sync_dist), not rank 0's alone
        size = images.shape[0]
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        return loss

    def _eval_step(self, batch, metrics: SegmentationMetrics, prefix: str) -> None:
        """Scores at the labels' own resolution: logits of a resized input are resized back to each mask (see
        ``segkit.data.pipeline.TransformedDataset(full_mask=True)``). The loss is the training loss where the net's
        output already has the mask's size, else the main head's loss at the mask's size. A list of images (mixed
        sizes) runs one image at a time (``same_size_groups``)."""
        images, masks = batch
        batches = [(self.net(self._at_eval_size(group)), target) for group, target in same_size_groups(images, masks)]
        total, count = 0.0, 0
        for outputs, target in batches:
            logits = main_logits(outputs)
            if isinstance(target, torch.Tensor) and target.shape[-2:] == logits.shape[-2:]:
                _, loss, _ = self._loss(outputs, target)
                pairs = [(logits, target)]
            else:
                pairs = at_label_size(logits.float(), target)
                loss = sum(self.loss_fn(scores, mask) * mask.shape[0] for scores, mask in pairs) / len(target)
            for scores, mask in pairs:
                metrics.update(scores.argmax(1), mask)
            total, count = total + loss * len(target), count + len(target)
        self.log(
            f"{prefix}/loss", total / count, on_epoch=True, prog_bar=prefix == "val", sync_dist=True, batch_size=count
        )

    def _at_eval_size(self, images: torch.Tensor) -> torch.Tensor:
        """The images at the spec's ``eval_size`` (as ``segkit.inference.Resized`` gives eval and predict them)."""
        size = self.spec.eval_size
        return images if size is None or tuple(images.shape[-2:]) == size else resize_to(images, size)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: SegmentationMetrics, prefix: str) -> None:
        # Already summed over processes, so equal on every rank: sync_dist's mean keeps them and tells Lightning so
        scalars = metrics.named_scalars(prefix)
        self.log_dict({k: v for k, v in scalars.items() if "/IoU/" not in k}, prog_bar=prefix == "val", sync_dist=True)
        self.log_dict({k: v for k, v in scalars.items() if "/IoU/" in k}, sync_dist=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def configure_optimizers(self):
        """The module always builds the parameter groups (head lr multiplier, no decay on norms and biases,
        ``segkit.optim.optimizer_over_groups``) and hands them to the torch optimiser partial. A schedule returning a
        dict (plateau) sets its own interval and monitor; others step every optimisation step."""
        from segkit.optim import optimizer_over_groups

        optimizer = optimizer_over_groups(self.optimizer_factory, self.net)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        options = {"total_steps": total_steps}
        if getattr(self.scheduler_factory, "keywords", {}).get("budget") == "time":
            from segkit.optim import TimeBudget

            options["progress"] = TimeBudget(self.trainer, total_steps)
        scheduler = self.scheduler_factory(optimizer, **options)
        config = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _stop_non_finite(self, value: float) -> None:
        """The first non-finite training loss ends the run before its backward pass touches the weights; nothing is
        checkpointed after it (see ``on_save_checkpoint``)."""
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        last = (callback.last_model_path or callback.best_model_path) if callback else ""
        raise NonFiniteLossError(
            f"training loss is {value} at step {self.global_step} (epoch {self.current_epoch}); stopped. "
            f"Last good checkpoint: {last or 'none yet'}. Try a lower optimizer.lr, "
            f"trainer.gradient_clip_val=1.0, or trainer.precision=32-true"
        )

    def on_train_start(self) -> None:
        """A resumed run replays the steps after its checkpoint: the CSV history drops what they had logged. Its
        optimisers run the kernels this run's config chose, not the checkpoint's (``keep_configured_kernels``)."""
        from segkit.loggers import ResumableCSVLogger
        from segkit.optim import keep_configured_kernels

        for optimizer in self.trainer.optimizers:
            keep_configured_kernels(optimizer)

        for logger in self.loggers:
            if isinstance(logger, ResumableCSVLogger) and self.trainer.is_global_zero:
                logger.experiment.drop_rows_from(self.global_step, self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the RNG states so a resumed run continues exactly (dropout, augmentation outside the sampler).
        Weights that are no longer finite are never written: the checkpoint before them stays the last good one."""
        bad = next((name for name, p in self.net.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise NonFiniteLossError(
                f"weight '{bad}' is not finite at step {self.global_step}; no checkpoint written. Try a lower "
                f"optimizer.lr, trainer.gradient_clip_val=1.0, or trainer.precision=32-true"
            )
        checkpoint["rng_states"] = rng_states()
        checkpoint["segkit"] = {
            "input": self.spec.to_record(),  # what eval and predict apply the net with (segkit.loading reads it)
            # a resume keeps it, eval/predict's precision=auto take it
            "precision": str(self._trainer.precision) if self._trainer is not None else None,
            "precision_reason": self.precision_reason,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            restore_rng_states(states)


def _channels_last_input(net: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the images enter the net in NHWC like its weights (a function, so DDP spawn can pickle it)."""
    if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args
