"""Sweeps: a 2x2 optimizer x lr grid through the CLI and its summary table; a 2-trial Optuna search when installed."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, SMALL_RUN, TINY, compose_config
from tests.helpers import SHORT_RUN, train_cli
from tests.test_train import run_cli

SMALL = [*SMALL_RUN, "data.batch_size=4", "data.val_batch_size=4", "debug=limit"]


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
    """Two Optuna trials on tiny data: each trial is a run folder named by its sampled overrides (keys shortened to
    their last name when the name would pass 100 characters), and the sweeper's best value is the best trial's best
    val/mIoU (what train.py returns)."""
    pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[sweep]')")
    import yaml

    cfg = compose_config("train", ["hparams_search=optuna"], output_dir=tmp_path, return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/mIoU"
    assert {"optimizer", "optimizer.lr", "loss"} <= set(cfg.hydra.sweeper.params)

    keep_short = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(o.split("=")[0] for o in SMALL) + "]"
    keep_short = keep_short[:-1] + ",optuna_trial]"
    proc = run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, keep_short], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(trials) == 2 and all("lr=" in p.name and "loss=" in p.name for p in trials), trials
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    script = [sys.executable, str(ROOT / "scripts" / "summarize_runs.py"), str(sweep), "--format", "csv"]
    rows = list(csv.DictReader(io.StringIO(subprocess.run(script, capture_output=True, text=True, check=True).stdout)))
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    best_in_table = max(float(r["val/mIoU"]) for r in rows)  # the table rounds to 3 decimals
    assert results["best_value"] == pytest.approx(best_in_table, abs=5e-4)
    best = max(rows, key=lambda r: float(r["val/mIoU"]))
    assert str(results["best_params"]["optimizer"]) == best["optimizer"]


def test_job_folder_names_are_bounded_rounded_and_safe():
    """A job folder is its number and its overrides, swept keys first, floats to 4 significant digits, no '/' or
    braces, within 100 characters however many overrides (the job number keeps names unique)."""
    from segkit.cli import job_folder_name

    assert job_folder_name(0, "optimizer.lr=0.001,optimizer=adam") == "0_optimizer.lr=0.001,optimizer=adam"
    assert job_folder_name(3, "") == "3"
    many = ",".join(
        [f"data.root=/data/{'deep/' * 20}camvid", "loss=ce_dice", "optimizer.lr=0.0012345678901234"]
        + [f"model.key_{i}={{a: {i}, b: [0.30000000000000004, 1e-07]}}" for i in range(20)]
    )
    name = job_folder_name(12, many, {"optimizer.lr": "tag(log, interval(1e-4, 5e-2))", "loss": "choice(ce)"})
    assert len(name) <= 100 and name.startswith("12_loss=ce_dice,lr=0.001235,"), name
    assert not set("/{}[]: ") & set(name) and name.endswith(",+21"), name  # the long path and the 20 keys
    assert job_folder_name(1, "data.root=/" + "x" * 300) == "1_root=" + "x" * 93
    assert job_folder_name(2, "~callbacks.early_stopping,+trainer.limit_val_batches=2") == (
        "2_no-callbacks.early_stopping,trainer.limit_val_batches=2"
    )


def test_optuna_job_folders_stay_short_when_the_overrides_would_pass_255_characters(tmp_path):
    """Optuna's full-precision floats and the shrinking overrides give an override_dirname far past the 255
    characters a folder name may have: the sweep runs, each trial folder is short and leads with what was sampled,
    and .hydra/overrides.yaml and result.json keep every override in full."""
    pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[sweep]')")
    import yaml

    proc = run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name[:2] for p in trials] == ["0_", "1_"], trials
    for trial in trials:
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        assert len(",".join(overrides)) > 255
        assert len(trial.name) <= 100 and trial.name[2:].startswith("loss="), trial.name
        lr = next(o.split("=", 1)[1] for o in overrides if o.startswith("optimizer.lr="))
        assert len(lr) > 8 and f"lr={float(lr):.4g}" in trial.name, (lr, trial.name)
        assert json.loads((trial / "result.json").read_text())["overrides"] == overrides


# Trial 2 barely trains and must be pruned. Trials 0, 1 and 3 share one setting (runs are deterministic), so the
# median the pruner compares with is their own curve and none of them falls below it.
LRS = ["0.01", "0.01", "1e-12", "0.01"]
# Small, but enough steps that lr 0.01 is ahead of lr 1e-12 at every epoch (val mIoU ~0.14 vs ~0.12 at epoch 1).
LEARNS = [o for o in TINY if not o.startswith("data.dataset.num_samples")] + [
    "data.dataset.num_samples={train: 32, val: 8, test: 8}",
    "model.base_width=8",
    "model.depth=2",
    "trainer.max_epochs=3",
    "trainer.limit_val_batches=2",
    "test=false",
]


def test_optuna_sweep_prunes_a_bad_trial_and_resumes_after_kill_9(tmp_path):
    """4 trials in a fixed order; the sweep is killed during trial 2 and started again with the same storage and
    study: the 2 finished trials are kept, the interrupted one reruns (and is pruned by the median rule after
    its second epoch), the study ends with 4 finished trials, and the summary marks the pruned one."""
    optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[sweep]')")
    import yaml

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    shrink = [o.split("=")[0] for o in LEARNS]
    args = [
        "-m",
        "hydra/sweeper=segkit_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=resumable",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=1",
        "hydra.sweeper.enqueue_trials=[" + ",".join(f"{{optimizer.lr:{lr}}}" for lr in LRS) + "]",
        "optimizer.lr=choice(0.01,1e-12)",
        *LEARNS,
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(shrink)},optuna_trial]",
    ]
    env = {**os.environ, "SEGKIT_ROOT": str(tmp_path), "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), *args]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    multiruns = tmp_path / "logs" / "train" / "multiruns"
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None and not list(multiruns.glob("*/2_*/.hydra")):
        time.sleep(0.1)
    assert first.poll() is None, first.stderr.read().decode()[-3000:]
    os.kill(first.pid, signal.SIGKILL)  # trial 2 has started
    first.wait()
    study = optuna.load_study(study_name="resumable", storage=storage)
    assert [t.state.name for t in study.trials[:3]] == ["COMPLETE", "COMPLETE", "RUNNING"]

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="resumable", storage=storage)
    states = [(t.params["optimizer.lr"], t.state.name) for t in study.trials]
    assert states == [(0.01, "COMPLETE"), (0.01, "COMPLETE"), (1e-12, "FAIL"), (0.01, "COMPLETE"), (1e-12, "PRUNED")]
    assert len(study.trials) == 5  # n_trials counts the 4 finished ones; the interrupted one is not counted
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert sorted(pruned.intermediate_values) == [0, 1]  # stopped after its second of 3 epochs

    resumed_sweep = max(multiruns.iterdir())
    results = yaml.safe_load((resumed_sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 3, "pruned": 1, "fail": 1} and results["best_value"] > 0
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize_runs.py"), str(resumed_sweep), "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses = sorted(r["status"] for r in csv.DictReader(io.StringIO(table)))
    assert statuses == ["completed", "pruned"]


def test_one_wandb_run_per_sweep_job_and_resume_continues_it(tmp_path):
    """Offline W&B: a 2-job sweep gives 2 runs with their own ids and configs, the checkpoints are logged as
    artifacts with log_model=true, and resuming a run with ckpt_path continues its W&B run."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "NO_ALBUMENTATIONS_UPDATE": "1"}
    keep_short = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(o.split("=")[0] for o in SMALL) + "]"
    keep_short = keep_short[:-1] + ",logger,logger.wandb.log_model]"
    proc = run_cli(
        ["-m", "logger=wandb", "logger.wandb.log_model=true", "optimizer=adam,sgd", *SMALL, keep_short],
        tmp_path,
        env_extra=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    ids = [(job / "wandb_run_id").read_text().strip() for job in jobs]
    assert len(jobs) == 2 and len(set(ids)) == 2
    for job, run_id, optimizer in zip(jobs, ids, ("Adam", "SGD"), strict=True):
        (offline,) = (job / "wandb").glob(f"offline-run-*-{run_id}")
        log = (offline / f"run-{run_id}.wandb").read_bytes()  # the offline run: config, history, artifacts
        assert f'"_target_":"torch.optim.{optimizer}"'.encode() in log, job  # its own config
        other = "SGD" if optimizer == "Adam" else "Adam"
        assert f'"_target_":"torch.optim.{other}"'.encode() not in log, job  # and not the other job's
        assert b"model-" + run_id.encode() in log  # log_model: the checkpoints as an artifact of this run
        assert b'"original_filename":"last.ckpt"' in log and b'"original_filename":"epoch_000' in log

    run, run_id = jobs[0], ids[0]  # resume job 0 alone: its folder name holds '=' and ','
    resumed = run_cli(
        [
            "logger=wandb",
            "optimizer=adam",
            *(o for o in SMALL if not o.startswith("trainer.max_epochs")),
            "trainer.max_epochs=2",
            f"ckpt_path='{run / 'checkpoints' / 'last.ckpt'}'",
        ],
        tmp_path,
        env_extra=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "logs" / "train" / "runs").exists()  # it continued in the job's own folder
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # both sessions logged to one run id


def test_a_sweep_records_a_diverged_job_as_failed_and_goes_on(tmp_path):
    """The diverged job fails alone; the summary lists both jobs with their status. An override holding a path
    (paths.data_dir) no longer nests the job folders: '/' is replaced in their names."""
    shrink = [o.split("=")[0] for o in SHORT_RUN]
    args = [
        "-m",
        *(o for o in SHORT_RUN if not o.startswith("trainer.max_epochs")),
        "optimizer=sgd",
        "optimizer.lr=1e12,1e-2",
        "trainer.max_epochs=2",
        f"paths.data_dir={tmp_path}/data",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(shrink)},optimizer]",
    ]
    proc = train_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    results = sorted(sweep.rglob("result.json"), key=lambda p: p.relative_to(sweep).as_posix())
    assert len(results) == 2 and all(p.parent.parent == sweep for p in results)  # a path override nests nothing
    assert [json.loads(p.read_text())["status"] for p in results] == ["failed", "completed"]
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize_runs.py"), str(sweep)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "failed: NonFiniteLossError" in table and "completed" in table
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["1", "0"]  # both jobs, best first
