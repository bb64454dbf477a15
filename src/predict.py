"""Segment images or videos: python src/predict.py ckpt=PATH input=demo/ output=DIR

For each input writes <name>_mask.png (class colours) and <name>_overlay.png (alpha blend with a legend) at the
input's size; videos give <name>_mask.mp4 and <name>_overlay.mp4. `--help` lists the options.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.cli import run_entry_point, run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> float | None:
    from segkit.tasks.predict import predict_from_config  # imported here so --help does not wait for torch

    return run_task(predict_from_config, cfg)


if __name__ == "__main__":
    run_entry_point(main, "predict")
