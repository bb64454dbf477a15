"""Sweeps: a 2x2 optimizer x lr grid through the CLI and its summary table; a 2-trial Optuna search when installed."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from tests.conftest import ROOT, compose_config
from tests.test_train import run_cli

SMALL = [
    "data.dataset.num_samples={train: 8, val: 4, test: 4}",
    "data.dataset.height=32",
    "data.dataset.width=32",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
    "model.base_width=4",
    "model.depth=2",
    "debug=limit",
    "trainer.max_epochs=1",
    "test=false",
]


def test_optimizer_sweep_2x2_and_summary_table(tmp_path):
    # the shrinking overrides stay out of the run-directory names (which would pass the 255-character limit)
    keep_short = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(o.split("=")[0] for o in SMALL) + "]"
    proc = run_cli(["hparams_search=optimizer_sweep", *SMALL, keep_short], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(names) == 4 and all("optimizer=" in n and "optimizer.lr=" in n for n in names), names

    script = [sys.executable, str(ROOT / "scripts" / "summarize_runs.py"), str(sweep)]
    table = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    lines = table.splitlines()
    assert lines[0].startswith("| run | optimizer | optimizer.lr | best epoch | val/mIoU |") and len(lines) == 6
    rows = list(
        csv.DictReader(
            io.StringIO(subprocess.run(script + ["--format", "csv"], capture_output=True, text=True, check=True).stdout)
        )
    )
    assert sorted((r["optimizer"], r["optimizer.lr"]) for r in rows) == [
        ("adam", "0.001"),
        ("adam", "0.01"),
        ("sgd", "0.001"),
        ("sgd", "0.01"),
    ]
    mious = [float(r["val/mIoU"]) for r in rows]
    assert mious == sorted(mious, reverse=True) and all(0 <= m <= 1 for m in mious)
    assert all(r["best epoch"] == "0 / 1" for r in rows)


def test_optuna_sweep_maximises_val_miou(tmp_path):
    """Two Optuna trials on tiny data: each trial is a run folder named by its sampled overrides, and the sweeper's
    best value is the best trial's best val/mIoU (what train.py returns)."""
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed (pip install -e '.[sweep]')"
    )
    import yaml

    cfg = compose_config("train", ["hparams_search=optuna"], output_dir=tmp_path, return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/mIoU"
    assert {"optimizer", "optimizer.lr", "loss"} <= set(cfg.hydra.sweeper.params)

    keep_short = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(o.split("=")[0] for o in SMALL) + "]"
    proc = run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, keep_short], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(trials) == 2 and all("optimizer.lr=" in p.name and "loss=" in p.name for p in trials), trials
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    script = [sys.executable, str(ROOT / "scripts" / "summarize_runs.py"), str(sweep), "--format", "csv"]
    rows = list(csv.DictReader(io.StringIO(subprocess.run(script, capture_output=True, text=True, check=True).stdout)))
    assert len(rows) == 2
    best_in_table = max(float(r["val/mIoU"]) for r in rows)  # the table rounds to 3 decimals
    assert results["best_value"] == pytest.approx(best_in_table, abs=5e-4)
    best = max(rows, key=lambda r: float(r["val/mIoU"]))
    assert str(results["best_params"]["optimizer"]) == best["optimizer"]
