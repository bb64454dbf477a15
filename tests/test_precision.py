"""Precision and speed switches: bf16 autocast, channels_last, compile, clipping/accumulation, SyncBatchNorm."""

from __future__ import annotations

import logging

import torch
from pytorch_lightning.plugins import TorchSyncBatchNorm

from segkit.training import build_datamodule, build_module, build_trainer, resolve_sync_batchnorm, train
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


def test_sync_batchnorm_switch(monkeypatch, caplog):
    ddp = compose_config("train", ["trainer=ddp"], output_dir=None).trainer
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_sync_batchnorm(ddp) is True  # 2 GPUs: on
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_sync_batchnorm(ddp) is False  # 1 GPU: nothing to synchronise
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    synced = TorchSyncBatchNorm().apply(net)  # what Lightning does to the model where it is on
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sim = compose_config("train", ["trainer=ddp_sim"], output_dir=None).trainer
    with caplog.at_level(logging.WARNING, logger="segkit"):
        assert resolve_sync_batchnorm(sim) is False
    assert "SyncBatchNorm needs GPU modules" in caplog.text


def test_two_process_cpu_trainer_skips_sync_batchnorm_with_a_warning(tmp_path, caplog):
    """The 2-process trainer=ddp_sim run itself is tests/test_train.py::test_ddp_two_processes_match_one_process
    (~50 s here); this builds the same Trainer and checks the layer sync it would apply."""
    cfg = compose_config("train", SMALL + ["trainer=ddp_sim"], output_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="segkit"):
        trainer = build_trainer(cfg)
    assert trainer.num_devices == 2 and trainer.strategy._layer_sync is None
    assert "SyncBatchNorm needs GPU modules; the 2 CPU processes keep per-process BatchNorm" in caplog.text
