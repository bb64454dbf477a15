"""Train a segmentation model: python src/train.py model=fcn8_vgg data=camvid data.root=/path/to/camvid

Every config group and key can be overridden on the command line; `--help` lists the groups.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from segkit.cli import resume_in_place, run_task
from segkit.tasks.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    sys.argv = resume_in_place(sys.argv)
    main()
