"""Precision and speed switches: bf16 autocast, channels_last, compile, clipping/accumulation, SyncBatchNorm."""

from __future__ import annotations

import torch
from pytorch_lightning.plugins import TorchSyncBatchNorm

from segkit.sync_batchnorm import AllReduceBatchNorm, CpuSyncBatchNorm, convert_sync_batchnorm
from segkit.tasks.train import build_datamodule, build_module, build_trainer, resolve_sync_batchnorm, train
from tests.conftest import compose_config

SMALL = [
    "data.dataset.num_samples={train: 8, val: 4, test: 4}",
    "data.dataset.height=16",
    "data.dataset.width=16",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
    "trainer.enable_model_summary=false",
    "test=false",
    "model.base_width=4",
    "model.depth=2",
    "logger=csv",
]


def test_bf16_mixed_trains_one_batch(tmp_path):
    """bf16 autocast on CPU is slow, hence one 16x16 batch."""
    cfg = compose_config("train", SMALL + ["trainer.precision=bf16-mixed", "debug=fdr"], output_dir=tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and metrics["train/loss"] > 0


def test_channels_last_net_and_batches(tmp_path):
    cfg = compose_config("train", SMALL + ["channels_last=true"], output_dir=tmp_path)
    module = build_module(cfg, build_datamodule(cfg))
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        assert module(torch.randn(2, 3, 16, 16)).shape == (2, 6, 16, 16)
    assert seen and all(seen)


def test_compile_switch_wraps_the_module(tmp_path):
    """Only that compile wraps lazily: compiling itself takes minutes on this CPU."""
    cfg = compose_config("train", SMALL + ["compile=true"], output_dir=tmp_path)
    assert cfg.compile is True and compose_config("train", [], output_dir=tmp_path).compile is False
    compiled = torch.compile(build_module(cfg, build_datamodule(cfg)))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)


def test_gradient_clipping_and_accumulation(tmp_path):
    cfg = compose_config(
        "train",
        SMALL
        + [
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=1",
            "trainer.gradient_clip_val=0.01",
            "trainer.accumulate_grad_batches=2",
        ],
        output_dir=tmp_path,
    )
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    trainer = build_trainer(cfg)
    norms = []
    clip = module.configure_gradient_clipping

    def clip_and_measure(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad.norm() for p in module.net.parameters() if p.grad is not None]
        norms.append(float(torch.stack(grads).norm()))

    module.configure_gradient_clipping = clip_and_measure
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and len(norms) == 2  # 4 batches, one optimiser step per 2
    assert all(n <= 0.01 * (1 + 1e-4) for n in norms), norms


def test_sync_batchnorm_switch(monkeypatch):
    ddp = compose_config("train", ["trainer=ddp"], output_dir=None).trainer
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_sync_batchnorm(ddp) == "gpu"  # 2 GPUs: torch's SyncBatchNorm
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_sync_batchnorm(ddp) is None  # 1 GPU: nothing to synchronise
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    synced = TorchSyncBatchNorm().apply(net)  # what Lightning does to the model where it is on
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sim = compose_config("train", ["trainer=ddp_sim"], output_dir=None).trainer
    assert resolve_sync_batchnorm(sim) == "cpu"
    assert resolve_sync_batchnorm(compose_config("train", [], output_dir=None).trainer) is None


def test_two_process_cpu_trainer_applies_cpu_sync_batchnorm(tmp_path):
    """The 2-process trainer=ddp_sim fit itself is tests/test_train.py::test_ddp_two_processes_match_one_process;
    this builds the same Trainer and checks the layer sync it applies, and that it reverts to plain BatchNorm."""
    cfg = compose_config("train", SMALL + ["trainer=ddp_sim"], output_dir=tmp_path)
    trainer = build_trainer(cfg)
    assert trainer.num_devices == 2 and isinstance(trainer.strategy._layer_sync, CpuSyncBatchNorm)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    synced = trainer.strategy._layer_sync.apply(net)
    assert isinstance(synced[1], AllReduceBatchNorm) and synced[1].weight is net[1].weight
    assert set(synced.state_dict()) == set(net.state_dict())
    reverted = trainer.strategy._layer_sync.revert(synced)
    assert type(reverted[1]) is torch.nn.BatchNorm2d and reverted[1].weight is net[1].weight


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
