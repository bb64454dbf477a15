"""Export a model to ONNX and/or TorchScript and check it against PyTorch.

    python src/export.py ckpt=PATH format=onnx output=FILE
    python src/export.py model=enet format=both height=360 width=480     (an untrained net)

`--help` lists the options. ONNX checking needs the `export` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.cli import run_entry_point, run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> float | None:
    from segkit.tasks.export import export_from_config  # imported here so --help does not wait for torch

    return run_task(export_from_config, cfg)


if __name__ == "__main__":
    run_entry_point(main, "export")
