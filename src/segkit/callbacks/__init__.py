"""Lightning callbacks segkit adds to runs: W&B dashboards, local curves and the console's progress bar and model
summary (EMA is Lightning's own ``EMAWeightAveraging``, see ``conf/callbacks/ema.yaml``)."""

from segkit.callbacks.console import ModelSummary, ProgressBar
from segkit.callbacks.curves import LocalCurves, plot_curves, read_epoch_curves
from segkit.callbacks.time_limit import ValidateAtTimeLimit
from segkit.callbacks.wandb_dashboard import WandbDashboard, wandb_logger

__all__ = [
    "LocalCurves",
    "ModelSummary",
    "ProgressBar",
    "ValidateAtTimeLimit",
    "WandbDashboard",
    "plot_curves",
    "read_epoch_curves",
    "wandb_logger",
]
