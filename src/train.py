"""Train a segmentation model: python src/train.py model=fcn8_vgg data=camvid data.root=/path/to/camvid

Every config group and key can be overridden on the command line; `--help` lists the groups and their choices,
`--cfg job` prints the composed config.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from segkit.cli import refuse_moved_keys, resume_in_place, run_entry_point, run_task
from segkit.cluster import shared_run_dir
from segkit.tasks.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    refuse_moved_keys(sys.argv)
    sys.argv = shared_run_dir(resume_in_place(sys.argv), os.environ)  # srun/torchrun ranks: one run directory
    run_entry_point(main, "train")
