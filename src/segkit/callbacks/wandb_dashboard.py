"""W&B dashboards: per-class IoU table, example predictions with masks, confusion-matrix figure; a
``WandbLogger`` whose group and tags come from the Hydra overrides so the runs of one sweep sit together; and a
run's W&B bookends: the login checked before anything is built, the job's W&B run finished when it ends."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import WandbLogger

from segkit import SegkitError
from segkit.cli import is_rank_zero
from segkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segkit.inference import at_label_size
from segkit.metrics import scores_from_confusion
from segkit.models.blocks import resize_to
from segkit.results import job_overrides

log = logging.getLogger("segkit")

MAX_TAG_LENGTH = 64  # W&B's limit
UNTAGGED_OVERRIDES = ("paths.", "hydra.", "extras.", "callbacks.progress_bar", "trainer.enable_")


def wandb_logger(
    group: str | None = None, tags: Sequence[str] | None = None, name: str | None = None, **kwargs: Any
) -> WandbLogger:
    """``WandbLogger`` with ``group``/``tags``/``name`` filled from the Hydra run when not given: in a multirun,
    the group is the sweep (its directory name) and the name the job's folder (its number and overrides); tags are
    the overrides."""
    labels = hydra_run_labels()
    tags = list(tags or []) + [t for t in labels.get("tags", []) if t not in (tags or [])]
    if kwargs.get("id") is None and kwargs.get("save_dir"):
        kwargs["id"] = run_id(Path(str(kwargs["save_dir"])))
        kwargs.setdefault("resume", "allow")
    logger = WandbLogger(
        group=group or labels.get("group"), tags=tags or None, name=name or labels.get("name"), **kwargs
    )
    if logger._wandb_init.get("anonymous", "unset") is None:  # Lightning passes None, which wandb warns is deprecated
        del logger._wandb_init["anonymous"]
    return logger


def check_wandb_login(offline: bool = False, key: str = "logger.wandb") -> None:
    """Refuse in one line, before anything is built, a W&B logger that would log online without credentials (no
    ``WANDB_API_KEY``, no ``wandb login`` in ~/.netrc): ``wandb.init`` would stop the run inside its first epoch with
    a long traceback, or wait at a login prompt. Offline and disabled modes need none. Read through wandb's own
    lookup of credentials, which does not touch the network."""
    if offline or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        if settings.mode in ("offline", "dryrun", "disabled") or settings._offline:
            return
        found = wbauth.authenticate_session(host=settings.base_url, source="segkit", prompt=False, update_session=False)
    except (ImportError, AttributeError, TypeError):  # another wandb version: wandb.init says it itself
        return
    if found is None:
        raise SegkitError(
            f"{key}: no W&B login found; run `wandb login` once (or set WANDB_API_KEY), or log locally with "
            "WANDB_MODE=offline and upload later with `wandb sync`"
        )


def check_logger_logins(logger_cfg: DictConfig | None) -> None:
    """A W&B logger of a run's ``logger`` group that would log online needs a login (``check_wandb_login``): checked
    with the data, before the net is built."""
    for name, item in (logger_cfg or {}).items():
        if isinstance(item, DictConfig) and "wandb" in str(item.get("_target_", "")).lower():
            check_wandb_login(offline=bool(item.get("offline")), key=f"logger.{name}")


def finish_wandb_run(failed: bool) -> None:
    """End this job's W&B run, so the next job of a multirun starts its own (WandbLogger reuses ``wandb.run``)."""
    wandb = sys.modules.get("wandb")  # never imported here: a run without W&B has nothing to finish
    if wandb is not None and getattr(wandb, "run", None) is not None:
        run = wandb.run  # finish() clears wandb.run; its settings still say where it went
        wandb.finish(exit_code=1 if failed else 0)
        report_offline_run(run)


def report_offline_run(run: Any) -> None:
    """After an offline W&B ``run`` has finished: where it was written and the command that uploads it (wandb's own
    closing lines are gone with WANDB_SILENT or a quiet console)."""
    settings = getattr(run, "settings", None)
    if run is None or settings is None or not getattr(settings, "_offline", False):
        return
    folder = getattr(settings, "sync_dir", None) or str(Path(run.dir).parent)
    log.info(f"W&B run saved offline in {folder}; upload it with: wandb sync {folder}")


def run_id(run_dir: Path) -> str:
    """The W&B run id of a run directory, created once and stored in ``<run>/wandb_run_id``: a run resumed with
    ``ckpt_path`` (in the same directory) continues the same W&B run, and each multirun job has its own."""
    path = run_dir / "wandb_run_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    import secrets
    import string

    value = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id form
    if is_rank_zero():  # rank 0 logs to W&B
        from segkit.files import atomic_write_text

        atomic_write_text(path, value)
    return value


def hydra_run_labels() -> dict[str, Any]:
    """``{group, name, tags}`` of the current Hydra job; empty outside one (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = overrides_to_tags(job_overrides() or [])
    if hc.mode == RunMode.MULTIRUN:
        sweep = f"{hc.job.name}-{Path(hc.sweep.dir).name}"
        name = Path(hc.runtime.output_dir).name if hc.runtime.output_dir else ""  # the job folder: short, readable
        return {"group": sweep, "name": name or hc.job.override_dirname or f"job{hc.job.num}", "tags": tags}
    return {"group": hc.job.name, "tags": tags}


def overrides_to_tags(overrides: Sequence[str]) -> list[str]:
    """``["optimizer=sgd", "optimizer.lr=0.01"]`` -> the same as W&B tags, skipping path/plumbing overrides."""
    tags = [o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(UNTAGGED_OVERRIDES)]
    return [t[:MAX_TAG_LENGTH] for t in tags]


class WandbDashboard(Callback):
    """Logs each validation, when the run has a ``WandbLogger`` (otherwise it does nothing):

    - ``val/iou_table``: class | IoU | accuracy;
    - ``val/confusion_matrix``: the row-normalised confusion matrix as a figure;
    - ``val/examples``: the first ``num_images`` val images with ground-truth and prediction W&B masks
      (toggle them in the UI, hover for class names) and ``val/panels``: image | ground truth | prediction.

    The images are the same every epoch (the first of the unshuffled val loader on rank 0), so their predictions
    can be compared over training.
    """

    def __init__(
        self,
        num_images: int = 8,
        iou_table: bool = True,
        confusion_matrix: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.num_images, self.iou_table, self.confusion_matrix = num_images, iou_table, confusion_matrix
        self.mean, self.std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        self._examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @staticmethod
    def _logger(trainer: Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _active(self, trainer: Trainer) -> bool:
        return self._logger(trainer) is not None and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._examples = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        missing = self.num_images - len(self._examples)
        if missing <= 0 or not trainer.is_global_zero or not self._active(trainer):
            return
        images, masks = batch[0][:missing], batch[1][:missing]
        with torch.no_grad():
            for image, mask in zip(images, masks, strict=True):
                ((scores, _),) = at_label_size(pl_module(image[None]).float(), mask[None])
                shown = self._to_uint8(resize_to(image[None].float(), tuple(mask.shape[-2:]))[0])
                self._examples.append((shown, mask.cpu().numpy(), scores.argmax(1)[0].cpu().numpy()))

    def _to_uint8(self, image: torch.Tensor) -> np.ndarray:
        """Undo the normalisation of a C x H x W tensor; RGB(-D) -> H x W x 3 uint8 (extra channels dropped)."""
        array = image.detach().float().cpu().numpy()[:3].transpose(1, 2, 0)
        channels = array.shape[2]
        array = array * self.std[:channels] + self.mean[:channels]
        if channels == 1:
            array = np.repeat(array, 3, axis=2)
        return np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer):
            return
        metrics = pl_module.val_metrics
        with metrics.sync_context():  # every rank takes part in the all-reduce; rank 0 logs
            confusion = metrics.confmat.detach().clone().cpu()
        if not trainer.is_global_zero:
            return
        import wandb

        names = list(pl_module.class_names)
        payload: dict[str, Any] = {}
        if self.iou_table:
            scores = scores_from_confusion(confusion)
            rows = [
                [name, _finite(iou), _finite(acc)]
                for name, iou, acc in zip(names, scores["IoU"].tolist(), scores["Acc"].tolist(), strict=True)
            ]
            payload["val/iou_table"] = wandb.Table(columns=["class", "IoU", "accuracy"], data=rows)
        if self.confusion_matrix:
            import matplotlib.pyplot as plt

            from segkit.visualize import confusion_figure

            fig = confusion_figure(confusion.numpy(), names, normalize=True)
            payload["val/confusion_matrix"] = wandb.Image(fig)
            plt.close(fig)
        if self._examples:
            payload.update(self._example_media(trainer, pl_module, names))
        payload["trainer/global_step"] = trainer.global_step
        self._logger(trainer).experiment.log(payload)

    def _example_media(self, trainer: Trainer, pl_module: LightningModule, names: list[str]) -> dict[str, Any]:
        import wandb

        ignore = pl_module.ignore_index
        labels = {i: n for i, n in enumerate(names)} | {ignore: "ignore"}
        examples, panels = [], []
        colors = _class_colors(trainer, len(names))
        for i, (image, mask, pred) in enumerate(self._examples):
            examples.append(
                wandb.Image(
                    image,
                    caption=f"val #{i}",
                    masks={
                        "ground_truth": {"mask_data": mask.astype(np.int64), "class_labels": labels},
                        "prediction": {"mask_data": pred.astype(np.int64), "class_labels": labels},
                    },
                )
            )
            if colors is not None:
                from segkit.visualize import colorize

                panel = np.concatenate([image, colorize(mask, colors), colorize(pred, colors)], axis=1)
                panels.append(wandb.Image(panel, caption=f"val #{i}: image | ground truth | prediction"))
        media: dict[str, Any] = {"val/examples": examples}
        if panels:
            media["val/panels"] = panels
        return media


def _finite(value: float) -> float | None:
    return None if value != value else value


def _class_colors(trainer: Trainer, num_classes: int) -> list | None:
    labels = getattr(getattr(trainer, "datamodule", None), "labels", None)
    colors = getattr(labels, "colors", None)
    return list(colors) if colors is not None and len(colors) == num_classes else None
