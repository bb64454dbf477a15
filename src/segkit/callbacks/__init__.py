"""Lightning callbacks segkit adds to runs: W&B dashboards and local curves (EMA is Lightning's own
``EMAWeightAveraging``, see ``conf/callbacks/ema.yaml``)."""

from segkit.callbacks.curves import LocalCurves, plot_curves, read_epoch_curves
from segkit.callbacks.wandb_dashboard import WandbDashboard, wandb_logger

__all__ = ["LocalCurves", "WandbDashboard", "plot_curves", "read_epoch_curves", "wandb_logger"]
