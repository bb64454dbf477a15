"""Parameter groups, and learning-rate schedules: formulas offline, and the lr a real run actually used."""

from __future__ import annotations

import logging
import math
from functools import partial

import hydra
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from segkit import SegkitError
from segkit.optim import cosine_lr, optimizer_over_groups, param_groups, plateau_lr, poly_lr, step_lr
from segkit.tasks.train import train
from tests.conftest import compose_config
from tests.helpers import read_csv_metrics
from tests.models.net_checks import config_maker


class Backboned(nn.Module):
    """A user's net that is no ``SegmentationNet`` but declares its trunk the same way, as ``backbone``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.classifier = nn.Conv2d(4, 2, 1)


def test_head_lr_multiplier_and_no_decay_on_norms_and_biases():
    factory = partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4, head_lr_mult=10.0, momentum=0.9, nesterov=True)
    opt = optimizer_over_groups(factory, Backboned())
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert [p.shape for p in groups["backbone"]["params"]] == [(4, 3, 3, 3)]
    assert len(groups["backbone_no_decay"]["params"]) == 2  # BN weight and bias
    assert [p.shape for p in groups["head_no_decay"]["params"]] == [(2,)]
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["backbone"]["weight_decay"] == 1e-4 and groups["head_no_decay"]["weight_decay"] == 0.0
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_optimizer_configs_are_plain_torch_partials(tmp_path):
    """Every conf/optimizer choice names a torch class; the module's keys reach the groups, not torch."""
    for choice in ("adam", "adamw", "sgd", "rmsprop"):
        node = compose_config(
            "train", [f"optimizer={choice}", "optimizer.head_lr_mult=5"], output_dir=tmp_path
        ).optimizer
        assert node._target_.startswith("torch.optim.")
        opt = optimizer_over_groups(hydra.utils.instantiate(node), Backboned())
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["head"] == pytest.approx(5 * lrs["backbone"]) and "head_lr_mult" not in opt.defaults
    with pytest.raises(SegkitError, match="optimizer=adam"):  # the former make_optimizer key says the new spelling
        optimizer_over_groups(partial(torch.optim.SGD, lr=0.1, name="torch.optim.SGD"), Backboned())


@pytest.mark.parametrize("name", ["pspnet_resnet50", "linknet_resnet18", "segnet", "tv_fcn_resnet50", "drn_c_26"])
def test_the_backbone_groups_hold_the_trunk_the_net_declares(name):
    """The ``backbone`` groups are exactly the parameters of the net's declared trunk (a ResNet, LinkNet's ResNet and
    SegNet's VGG encoders, the trunk inside torchvision's model, DRN's own), at the base lr; everything else,
    auxiliary heads included, is the head at ``lr * head_lr_mult``."""
    with torch.device("meta"):
        net = config_maker(name)(num_classes=3, in_channels=3)
    groups = {g["name"]: g for g in param_groups(net, lr=0.01, weight_decay=1e-4, head_lr_mult=10.0)}
    trunk = {id(p) for p in net.backbone.parameters()}
    in_backbone = {id(p) for n in ("backbone", "backbone_no_decay") for p in groups[n]["params"]}
    in_head = {id(p) for n in ("head", "head_no_decay") for p in groups[n]["params"]}
    assert in_backbone == trunk and in_head == {id(p) for p in net.parameters()} - trunk
    assert groups["backbone"]["lr"] == 0.01 and groups["head"]["lr"] == pytest.approx(0.1)
    assert all(id(p) in in_head for head in net.aux_heads.values() for p in head.parameters())


def test_nets_without_backbone_and_plain_parameter_lists_are_one_lr(caplog):
    """A net trained from scratch declares no trunk; a user's net naming its trunk otherwise (``encoder``) is not
    searched for one: both train at one lr, with a warning that ``head_lr_mult`` does not apply."""
    with torch.device("meta"):
        unet = config_maker("unet_small")(num_classes=3, in_channels=3)
    encoded = nn.Module()
    encoded.encoder, encoded.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)
    for net in (unet, encoded):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="segkit"):
            groups = param_groups(net, lr=1e-3, head_lr_mult=10.0)
        assert {g["name"] for g in groups} == {"head", "head_no_decay"} and {g["lr"] for g in groups} == {1e-3}
        assert "declares no backbone; head_lr_mult=10.0 is not applied" in caplog.text
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    groups = param_groups(net, lr=1e-3, weight_decay=0.1, head_lr_mult=10.0)
    assert {g["lr"] for g in groups} == {1e-3}
    assert sum(len(g["params"]) for g in groups) == 4
    plain = param_groups(list(net.parameters()), lr=1e-3, weight_decay=0.1)
    assert [(g["name"], len(g["params"])) for g in plain] == [("head", 1), ("head_no_decay", 3)]
    decaying = param_groups(net, lr=1e-3, weight_decay=0.1, no_decay_norm_bias=False)
    assert [(g["name"], g["weight_decay"]) for g in decaying] == [("head", 0.1)]


def lrs(scheduler_factory, steps: int, lr: float = 1.0, **kwargs) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = scheduler_factory(opt, total_steps=steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_formulas():
    assert lrs(poly_lr, 10, power=0.9) == pytest.approx([(1 - i / 10) ** 0.9 for i in range(10)])
    warm = lrs(cosine_lr, 10, warmup_steps=2, warmup_factor=0.1, min_lr_ratio=0.1)
    assert warm[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert warm[2:] == pytest.approx([0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)])
    assert lrs(step_lr, 10, milestones=[0.5, 0.8], gamma=0.1) == pytest.approx([1] * 5 + [0.1] * 3 + [0.01] * 2)


def test_plateau_cuts_on_stalled_miou():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    config = plateau_lr(opt, patience=1, factor=0.5)
    assert (config["interval"], config["monitor"]) == ("epoch", "val/mIoU")
    for miou in (0.1, 0.2, 0.2, 0.2, 0.3):
        config["scheduler"].step(miou)
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("choice", ["poly", "cosine", "step", "plateau"])
def test_scheduler_configs_build_through_the_module(choice, tmp_path):
    cfg = compose_config("train", [f"scheduler={choice}", "optimizer=sgd"], output_dir=tmp_path)
    opt = optimizer_over_groups(hydra.utils.instantiate(cfg.optimizer), Backboned())
    sched = hydra.utils.instantiate(cfg.scheduler)(opt, total_steps=20)
    assert sched is not None


def test_real_run_lr_warms_up_then_decays(tmp_path):
    """The lr the learning-rate monitor recorded, step by step, follows warm-up + poly(0.9) on every group."""
    overrides = [
        "data.dataset.num_samples={train: 12, val: 4, test: 4}",
        "data.dataset.height=32",
        "data.dataset.width=32",
        "data.batch_size=4",
        "trainer.accelerator=cpu",
        "callbacks.progress_bar=null",
        "extras.print_config=false",
        "trainer.enable_model_summary=false",
        "test=false",
        "trainer.max_epochs=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "scheduler=poly",
        "scheduler.warmup_steps=2",
        "scheduler.warmup_factor=0.1",
        "model.base_width=4",
        "model.depth=2",
    ]
    train(compose_config("train", overrides, output_dir=tmp_path))
    rows = [r for r in read_csv_metrics(tmp_path / "csv" / "metrics.csv") if r.get("lr-SGD/head")]
    assert [int(r["step"]) for r in rows] == list(range(6))
    for key in ("lr-SGD/head", "lr-SGD/head_no_decay"):
        seen = [float(r[key]) for r in rows]
        expected = [0.01, 0.055, 0.1] + [0.1 * (1 - i / 4) ** 0.9 for i in range(1, 4)]
        assert seen == pytest.approx(expected), key


def _trace(tiny_cfg, folder, *extra):
    import json

    from segkit.tasks.train import train

    common = [
        "scheduler=cosine",
        "scheduler.min_lr_ratio=0.01",
        "trainer.max_time=00:00:00:05",
        "trainer.max_epochs=1000",
        "trainer.limit_val_batches=1",
        "test=false",
        "callbacks.early_stopping=null",
        "model.base_width=4",
        "model.depth=2",
        "+callbacks.lr_trace._target_=tests.helpers.LearningRateTrace",
        f"paths.output_dir={folder}",
    ]
    train(tiny_cfg(*common, *extra))
    return json.loads((folder / "lr_trace.json").read_text())


def _lr_at(points, share):
    return min(points, key=lambda p: abs(p[0] - share))[1]


def test_time_budget_schedule_ends_annealed_on_a_slow_machine(tiny_cfg, tmp_path):
    """budget=time: a run slowed 3-4x by sleeping after each step still ends near the final lr, and its lr follows
    the same cosine over the share of the budget as the unslowed run; a step-sized schedule cut by max_time does
    not (negative control)."""
    base, floor = 1e-3, 1e-5
    fast = _trace(tiny_cfg, tmp_path / "fast", "scheduler.budget=time")
    slow = _trace(
        tiny_cfg,
        tmp_path / "slow",
        "scheduler.budget=time",
        "+callbacks.slow._target_=tests.helpers.SleepEachStep",
        "+callbacks.slow.seconds=0.1",
    )
    assert len(slow) < 0.75 * len(fast)  # the slow run really made fewer steps
    for points in (fast, slow):
        assert points[-1][0] > 0.9 and points[-1][1] < floor + 0.05 * base  # ends at the floor, within 5% of lr
        for share in (0.25, 0.5, 0.75):
            expected = floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * share))
            assert _lr_at(points, share) == pytest.approx(expected, abs=0.08 * base), share
    by_steps = _trace(
        tiny_cfg,
        tmp_path / "steps",
        "trainer.max_epochs=40",
        "+callbacks.slow._target_=tests.helpers.SleepEachStep",
        "+callbacks.slow.seconds=0.08",
    )
    assert by_steps[-1][1] > 0.5 * base  # sized on 40 epochs, cut by the time limit with the lr still high


def test_time_budget_needs_max_time(tiny_cfg, tmp_path):
    from segkit import SegkitError
    from segkit.tasks.train import train

    with pytest.raises(SegkitError, match="budget=time needs a time budget: set trainer.max_time"):
        train(tiny_cfg("scheduler=poly", "scheduler.budget=time", "debug=fdr"))


def test_a_cpu_optimiser_takes_the_fused_step_unless_told_otherwise():
    """On the CPU, Adam(W), SGD and Adagrad take torch's fused kernel (3-4x faster than its per-tensor loop for
    SegFormer-B0); ``fused`` or ``foreach`` set by the user wins, and optimisers without one are left alone. The
    fused steps land where the loop's do."""
    net = Backboned()

    def build(cls, **options):
        return optimizer_over_groups(partial(cls, lr=0.1, **options), net)

    assert build(torch.optim.AdamW).defaults["fused"] is True
    assert build(torch.optim.SGD, momentum=0.9).defaults["fused"] is True
    assert build(torch.optim.Adam, fused=None).defaults["fused"] is True  # null in a config: segkit chooses
    assert build(torch.optim.AdamW, fused=False).defaults["fused"] is False
    assert not build(torch.optim.Adam, foreach=True).defaults["fused"]
    assert "fused" not in build(torch.optim.RMSprop).defaults
    for cls in (torch.optim.AdamW, torch.optim.SGD):
        nets = [Backboned() for _ in range(2)]
        nets[1].load_state_dict(nets[0].state_dict())
        opts = [optimizer_over_groups(partial(cls, lr=0.01, fused=fused), n) for n, fused in zip(nets, (None, False))]
        assert [o.defaults["fused"] for o in opts] == [True, False]
        for _ in range(3):
            grads = [torch.randn_like(p) for p in nets[0].parameters()]
            for n, opt in zip(nets, opts):
                for p, g in zip(n.parameters(), grads):
                    p.grad = g.clone()
                opt.step()
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            torch.testing.assert_close(a, b)


class _OneLayer(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8)
        self.before = None

    def training_step(self, batch, batch_idx):
        self.before = [p.detach().clone() for p in self.parameters()]
        return self.layer(batch[0]).float().square().mean() * 1e3

    def configure_optimizers(self):
        return optimizer_over_groups(partial(torch.optim.SGD, lr=1.0, weight_decay=0.0), self)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradients_of_a_fused_step_are_clipped_once_unscaled(precision):
    """Lightning refuses to clip for an optimiser that takes a GradScaler's scale itself, as torch marks its fused
    ones, under any mixed precision, bf16 included; segkit's fused step says it does not (a scaler then unscales
    first). One SGD step at lr 1 moves the weights by exactly the clipped norm. (16-mixed on a CPU is bf16 in
    Lightning; the scaler's part is the next test.)"""
    torch.manual_seed(0)
    model = _OneLayer()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8)), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu", precision=precision, max_steps=1, gradient_clip_val=1e-3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    assert trainer.optimizers[0].defaults["fused"] is True
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), model.before)])
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(1e-3, rel=0.02)


def test_a_grad_scaler_unscales_before_a_fused_step_and_a_resume_keeps_the_configured_kernel():
    """With a GradScaler (fp16 on a GPU) the fused step's gradients are unscaled before clipping, as for any
    optimiser, and the step lands where the loop's does; a fused optimiser loading the state of a looped one
    (a checkpoint from before) runs fused again; parameters off the CPU are not forced to fused."""
    from segkit.optim import keep_configured_kernels

    nets = [nn.Linear(4, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [optimizer_over_groups(partial(torch.optim.SGD, lr=1.0, fused=f), n) for n, f in zip(nets, (None, False))]
    assert [o.defaults["fused"] for o in opts] == [True, False]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for net, opt in zip(nets, opts):
        scaler.scale(net(torch.ones(2, 4)).square().sum()).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)
        scaler.step(opt)
        scaler.update()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)
    resumed = optimizer_over_groups(partial(torch.optim.SGD, lr=1.0), nets[0])
    resumed.load_state_dict(opts[1].state_dict())
    assert resumed.param_groups[0]["fused"] is False  # torch took the checkpoint's
    keep_configured_kernels(resumed)
    assert resumed.param_groups[0]["fused"] is True
    off_cpu = optimizer_over_groups(partial(torch.optim.AdamW, lr=0.1), nn.Linear(4, 4, device="meta"))
    assert not off_cpu.defaults.get("fused")
