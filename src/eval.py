"""Score a trained model: python src/eval.py ckpt=PATH [inference=slide|whole|resize|tta] [split=test]

Writes metrics.json, iou.md (per-class IoU), confusion.png and, with save_predictions=true, the predicted
masks into the run directory (logs/eval/runs/<time>). `--help` lists the options and inference modes.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.cli import run_entry_point, run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from segkit.tasks.evaluate import evaluate_from_config  # imported here so --help does not wait for torch

    return run_task(evaluate_from_config, cfg)


if __name__ == "__main__":
    run_entry_point(main, "eval")
