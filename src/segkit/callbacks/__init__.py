"""Lightning callbacks segkit adds to runs: W&B dashboards, local curves and the console's progress bar and model
summary, a ``ModelCheckpoint`` whose ``last.ckpt`` is the latest state, and Lightning's ``EMAWeightAveraging`` with a
faster update (see ``conf/callbacks/ema.yaml``)."""

from segkit.callbacks.checkpoint import ModelCheckpoint
from segkit.callbacks.console import ModelSummary, ProgressBar
from segkit.callbacks.curves import LocalCurves, plot_curves, read_epoch_curves
from segkit.callbacks.ema import EMAWeightAveraging
from segkit.callbacks.time_limit import ValidateAtTimeLimit
from segkit.callbacks.wandb_dashboard import WandbDashboard, wandb_logger

__all__ = [
    "EMAWeightAveraging",
    "LocalCurves",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
    "ValidateAtTimeLimit",
    "WandbDashboard",
    "plot_curves",
    "read_epoch_curves",
    "wandb_logger",
]
