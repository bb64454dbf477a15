"""Distributed training: Lightning's DDP and torchrun with 2 processes equal one process, BatchNorm synchronised
over gloo equals one process with the whole batch, an Optuna sweep through submitit runs 2-process DDP trials at
once, a simulated 2-node SLURM job is read by Lightning, all ranks share one run directory, and the SLURM launcher
config and sbatch template produce the job a user means."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from segkit.build import build_datamodule, build_module, build_trainer
from segkit.cluster import shared_run_dir
from segkit.sync_batchnorm import AllReduceBatchNorm, CpuSyncBatchNorm, convert_sync_batchnorm
from segkit.tasks.train import train
from tests.conftest import ROOT, SMALL_RUN, TINY, compose_config
from tests.helpers import val_rows

# One epoch of two steps, the same samples per step in both runs: 2 processes x batch 2 against 1 x batch 4.
SAME_GLOBAL_BATCH = [
    *TINY,
    "data.dataset.num_samples={train: 16, val: 10, test: 8}",
    "data.val_batch_size=2",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "test=false",
    "optimizer=sgd",
    "callbacks.early_stopping=null",
]


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SEGKIT_ROOT": str(root),
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
    }


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_and_rank_0_writes(tiny_cfg, tmp_path):
    """``torchrun --nproc_per_node=2 src/train.py trainer=ddp_cpu`` (Lightning's TorchElastic environment, gloo)
    trains the same weights and ends with the same val metrics as one process on the same global batch; both
    ranks use one run directory, where rank 0 alone wrote the checkpoints, the CSV rows, one W&B run and .hydra."""
    root = tmp_path / "torchrun"
    root.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "src" / "train.py")]
    logs = ["logger=many", "logger.tensorboard=null"]  # CSV + W&B (offline)
    args = [*SAME_GLOBAL_BATCH, *logs, "trainer=ddp_cpu", "data.batch_size=2"]
    proc = subprocess.run(cmd + args, cwd=root, env=_env(root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (root / "logs" / "train" / "runs").iterdir()  # one folder for both ranks
    assert run.name.startswith("torchrun-"), run.name
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert [r["epoch"] for r in val_rows(run / "csv" / "metrics.csv")] == [0]  # one row, not one per rank
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1 and (run / "wandb_run_id").is_file()
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed"

    single = train(tiny_cfg(*SAME_GLOBAL_BATCH, "logger=csv", "data.batch_size=4", f"paths.output_dir={tmp_path}/one"))
    weights = {
        name: torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for name, folder in (("torchrun", run), ("one", tmp_path / "one"))
    }
    for key, value in weights["one"].items():
        assert torch.allclose(weights["torchrun"][key].float(), value.float(), atol=2e-5), key
    for key in ("val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU", "val/IoU/box"):
        assert result["metrics"][key] == pytest.approx(single[key], abs=1e-6), key
    assert result["metrics"]["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_optuna_sweep_through_submitit_runs_two_ddp_trials_at_once(tmp_path):
    """``-m hydra/launcher=submitit_local`` (hydra-submitit-launcher run locally, as submitit_slurm runs on SLURM)
    with segkit's Optuna sweeper and n_jobs=2: two trials run at the same time as two jobs, each a 2-process DDP run
    (ddp_fork: the processes inherit the job's imports, where spawn would import torch again in each), each in its
    own folder with its own metrics, and the study records both."""
    pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[sweep]')")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    import yaml

    small = [
        *SMALL_RUN,
        "data.batch_size=2",
        "data.val_batch_size=2",
        "logger=csv",
        "trainer=ddp_sim",
        "trainer.strategy=ddp_fork",
    ]
    hidden = [o.split("=")[0] for o in small] + ["hparams_search", "optuna_trial"]
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        *small,
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(hidden)}]",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name[:2] for j in jobs] == ["0_", "1_"] and all("optimizer.lr=" in j.name for j in jobs), jobs
    results = [json.loads((j / "result.json").read_text()) for j in jobs]
    for job, result in zip(jobs, results, strict=True):
        assert result["status"] == "completed" and result["metrics"]["best_model_path"].startswith(str(job))
        assert len(val_rows(job / "csv" / "metrics.csv")) == 1
    job_logs = sorted((sweep / ".submitit").glob("*/*_log.err"))
    assert len(job_logs) == 2
    for log in job_logs:  # each job was a 2-process DDP run (Lightning logs it to stdout or stderr)
        text = log.read_text() + log.with_name(log.name.replace(".err", ".out")).read_text()
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text, text[-2000:]
    starts = [(j / ".hydra" / "config.yaml").stat().st_mtime for j in jobs]
    ends = [(j / "result.json").stat().st_mtime for j in jobs]
    assert max(starts) < min(ends)  # the two trials ran at the same time
    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert study["trials"]["complete"] == 2
    assert study["best_value"] == pytest.approx(max(r["value"] for r in results))


SLURM_2_NODES = {  # what srun exports to the 4th task of `sbatch --nodes=2 --ntasks-per-node=2`
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "segkit",
    "SLURM_STEP_ID": "0",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODELIST": "node[01-02]",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
}


def test_lightning_reads_a_two_node_slurm_job(monkeypatch, tmp_path):
    """The trainer of ``trainer=ddp trainer.num_nodes=2`` (on CPUs here) under the environment srun gives the last
    task of a 2-node x 2-task job: Lightning's SLURM environment, rank 3 of 4 on node 1, the main address resolved
    from the node list and the port from the job id; no process is started."""
    from lightning_utilities.core.rank_zero import rank_zero_only
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))] + ["RANK", "LOCAL_RANK"]:
        monkeypatch.delenv(key, raising=False)
    for key in ("MASTER_ADDR", "MASTER_PORT"):  # Lightning writes these; restore their absence afterwards
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    for key, value in SLURM_2_NODES.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(rank_zero_only, "rank", 0)  # the trainer sets it to 3; later tests in this process need 0

    cfg = compose_config(
        "train",
        [*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2"],
        output_dir=tmp_path,
    )
    trainer = instantiate(cfg.trainer, logger=False, sync_batchnorm=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
    assert env.main_address == "node01" and env.main_port == 15000 + 4242

    rank_0 = {**SLURM_2_NODES, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    assert shared_run_dir(["train.py"], rank_0) == [
        "train.py",
        "hydra.run.dir='${paths.log_dir}/${task_name}/runs/slurm-4242'",
    ]


def _run_dir(argv: list[str], tmp_path: Path) -> str:
    """``hydra.run.dir`` as Hydra composes and resolves it for a process started with ``argv``."""
    cfg = compose_config("train", argv[1:], output_dir=tmp_path, return_hydra_config=True)
    return str(cfg.hydra.run.dir)


def test_ranks_started_a_second_apart_share_one_run_directory(tmp_path):
    """Hydra names a run folder by the time (with microseconds), so ranks the launcher starts a moment apart would
    each make their own; with the launcher's job id in the name they compose the same folder."""
    torchrun = {"TORCHELASTIC_RUN_ID": "f00d", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    plain, shared = [], []
    for rank in ("0", "1"):
        time.sleep(1.0 if rank == "1" else 0.0)
        plain.append(_run_dir(["train.py"], tmp_path))
        shared.append(_run_dir(shared_run_dir(["train.py"], {**torchrun, "RANK": rank}), tmp_path))
    assert plain[0] != plain[1]
    assert shared[0] == shared[1] == f"{tmp_path}/train/runs/torchrun-f00d"

    slurm = {**SLURM_2_NODES, "SLURM_STEP_ID": "2"}
    later_step = shared_run_dir(["train.py", "-m", "optimizer=adam,sgd"], slurm)
    assert later_step[-2:] == [
        "hydra.sweep.dir='${paths.log_dir}/${task_name}/multiruns/slurm-4242.2'",
        "hydra.output_subdir=null",
    ]


@pytest.mark.parametrize(
    "argv,environ",
    [
        (["train.py"], {}),  # no launcher
        (["train.py"], {"TORCHELASTIC_RUN_ID": "f00d", "WORLD_SIZE": "1", "RANK": "0"}),  # one process
        (["train.py"], {**SLURM_2_NODES, "SLURM_JOB_NAME": "interactive"}),  # an salloc shell: Lightning ignores it
        (["train.py", "hydra.run.dir=/shared/run"], {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "8", "RANK": "0"}),
    ],
)
def test_run_directory_is_left_alone(argv, environ):
    assert shared_run_dir(argv, environ) == argv


def test_torchrun_over_nodes_without_run_id_is_a_clear_error():
    environ = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "8", "RANK": "5"}
    with pytest.raises(SystemExit, match="add --rdzv-id=<an id unique to this run> to the torchrun line"):
        shared_run_dir(["train.py"], environ)
    slurm_job = {**environ, "SLURM_JOB_ID": "77"}  # torchrun inside an sbatch job: the job id serves
    assert "runs/slurm-77'" in shared_run_dir(["train.py"], slurm_job)[1]


def test_slurm_launcher_config_submits_a_two_node_ddp_job(monkeypatch, tmp_path):
    """``hydra/launcher=slurm`` with a partition, 2 nodes and 4 GPUs each becomes, through hydra-submitit-launcher and
    submitit themselves, an sbatch script asking for one task per GPU on each node and running them with srun (a
    stand-in ``sbatch`` records the script instead of submitting it)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for srun before it submits
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "results", lambda job: [None])  # no cluster to wait for

    launcher_keys = ["partition=gpu", "nodes=2", "gpus_per_node=4", "timeout_min=120", "cpus_per_task=6"]
    overrides = ["hydra/launcher=slurm", *[f"hydra.launcher.{k}" for k in launcher_keys]]
    cfg = compose_config("train", overrides, output_dir=tmp_path, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg  # what Hydra's setup() gives it; launch() reads the sweep directory from it
    launcher.launch([["trainer=ddp", "trainer.num_nodes=2"]], initial_job_idx=0)

    sbatch = (tmp_path / "submitted.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --time=120",
    ):
        assert line in sbatch.splitlines(), (line, sbatch)
    assert "srun " in sbatch


def test_sbatch_template_starts_one_task_per_gpu_on_two_nodes(tmp_path):
    """scripts/sbatch_train.sh asks for 2 nodes with one task per GPU and hands srun the matching trainer; run under
    a stand-in ``srun`` with what SLURM exports, it starts train.py with trainer=ddp on 2 nodes x 4 devices plus the
    user's overrides."""
    script = ROOT / "scripts" / "sbatch_train.sh"
    options = dict(
        line.split()[1].lstrip("-").split("=", 1)
        for line in script.read_text().splitlines()
        if line.startswith("#SBATCH")
    )
    assert options["nodes"] == "2" and options["ntasks-per-node"] == options["gpus-per-node"]
    assert {"partition", "time", "signal"} <= set(options)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/srun_args\n')
    (bin_dir / "srun").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NUM_NODES": options["nodes"],
        "SLURM_NTASKS_PER_NODE": options["ntasks-per-node"],
    }
    subprocess.run(["bash", str(script), "model=unet", "data=cityscapes"], env=env, check=True, timeout=30)
    args = (tmp_path / "srun_args").read_text().splitlines()
    assert args[args.index("src/train.py") + 1 :] == [
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=4",
        "model=unet",
        "data=cityscapes",
    ]


def test_ddp_two_processes_match_one_process(tiny_cfg, tmp_path):
    """2 CPU processes (gloo, trainer=ddp_sim with SyncBatchNorm) with batch 2 each train the same weights as 1
    process with batch 4 (the same samples per step, BatchNorm over the global batch, averaged gradients), and
    validate them to the same metrics."""
    common = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "test=false",
        "logger=csv",
        "optimizer=sgd",
        "data.dataset.num_samples={train: 16, val: 10, test: 8}",
        "data.val_batch_size=2",
    ]
    ddp = train(tiny_cfg(*common, "trainer=ddp_sim", "data.batch_size=2", f"paths.output_dir={tmp_path}/ddp"))
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cfg = tiny_cfg(*common, "data.batch_size=4", f"paths.output_dir={tmp_path}/single")
    train(cfg)
    trained = {
        run: torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in ("ddp", "single")
    }
    assert trained["ddp"].keys() == trained["single"].keys()
    moved = 0
    for key, value in trained["single"].items():
        assert torch.allclose(trained["ddp"][key].float(), value.float(), atol=2e-5), key
        moved += "running_var" in key and not torch.allclose(value, torch.ones_like(value))
    assert moved  # the BatchNorm statistics did update

    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(module, datamodule=dm, ckpt_path=str(ckpt), weights_only=True)
    for key in ("val/mIoU", "val/pixAcc", "val/mAcc", "val/fwIoU", "val/IoU/box"):
        assert single[key] == pytest.approx(ddp[key], abs=1e-6), key
    assert single["val/loss"] == pytest.approx(ddp["val/loss"], rel=1e-4)


def test_two_process_cpu_trainer_applies_cpu_sync_batchnorm(tmp_path):
    """The 2-process trainer=ddp_sim fit itself is test_ddp_two_processes_match_one_process above;
    this builds the same Trainer and checks the layer sync it applies, and that it reverts to plain BatchNorm."""
    cfg = compose_config("train", SMALL_RUN + ["trainer=ddp_sim"], output_dir=tmp_path)
    trainer = build_trainer(cfg)
    assert trainer.num_devices == 2 and isinstance(trainer.strategy._layer_sync, CpuSyncBatchNorm)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    synced = trainer.strategy._layer_sync.apply(net)
    assert isinstance(synced[1], AllReduceBatchNorm) and synced[1].weight is net[1].weight
    assert set(synced.state_dict()) == set(net.state_dict())
    reverted = trainer.strategy._layer_sync.revert(synced)
    assert type(reverted[1]) is torch.nn.BatchNorm2d and reverted[1].weight is net[1].weight


def test_cpu_sync_batchnorm_over_two_gloo_processes_equals_one_process_with_the_whole_batch(tmp_path):
    """2 processes each holding every other sample of a batch, BN synchronised: outputs, input gradients, the
    summed parameter gradients and the running statistics equal those of one process with the whole batch."""
    net = _sync_bn_net()
    x = _sync_bn_batch().requires_grad_()
    out = net(x)
    ranks = _run_ranks(tmp_path, sync=True)
    full_out = torch.empty_like(out)
    for r in range(2):
        full_out[r::2] = ranks[r]["out"]
    assert torch.allclose(full_out, out, atol=1e-5)
    weights = torch.empty_like(out)
    for r in range(2):
        half = out[r::2]
        weights[r::2] = torch.arange(half.numel()).view_as(half).sin()
    (out * weights).sum().backward()
    for r in range(2):
        assert torch.allclose(ranks[r]["x_grad"], x.grad[r::2], atol=1e-5)
    assert torch.allclose(ranks[0]["w_grad"] + ranks[1]["w_grad"], net[1].weight.grad, atol=1e-4)
    assert torch.allclose(ranks[0]["conv_grad"] + ranks[1]["conv_grad"], net[0].weight.grad, atol=1e-4)
    for r in range(2):
        assert torch.allclose(ranks[r]["running_mean"], net[1].running_mean, atol=1e-5)
        assert torch.allclose(ranks[r]["running_var"], net[1].running_var, atol=1e-5)
    # without the sync each rank normalises its own half: the same check fails
    local = _run_ranks(tmp_path, sync=False)
    assert not torch.allclose(local[0]["out"], out[0::2], atol=1e-3)


def _sync_bn_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5, momentum=0.5))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


def _sync_bn_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 9, 11, generator=generator) * torch.tensor([1.0, 3.0, 0.3, 2.0]).view(4, 1, 1, 1)


def _run_ranks(tmp_path, sync: bool) -> list[dict]:
    import torch.multiprocessing as mp

    out = tmp_path / ("sync" if sync else "local")
    out.mkdir()
    mp.spawn(_sync_bn_worker, args=(2, str(out / "store"), str(out), sync), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _sync_bn_worker(rank: int, world: int, init_file: str, out_dir: str, sync: bool) -> None:
    """One rank: half of a fixed batch through conv + BN (synced or not); writes outputs, grads and stats."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net = _sync_bn_net()
    if sync:
        net = convert_sync_batchnorm(net)
    x = _sync_bn_batch()[rank::world].clone().requires_grad_()
    out = net(x)
    (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
    torch.save(
        {
            "out": out.detach(),
            "x_grad": x.grad,
            "w_grad": net[1].weight.grad,
            "conv_grad": net[0].weight.grad,
            "running_mean": net[1].running_mean,
            "running_var": net[1].running_var,
        },
        f"{out_dir}/rank{rank}.pt",
    )
    dist.destroy_process_group()
