"""Precision and speed switches: precision chosen per processor (``auto``), bf16 autocast, channels_last, compile,
clipping/accumulation, SyncBatchNorm."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.plugins import TorchSyncBatchNorm

from segkit import SegkitError, precision
from segkit.build import build_datamodule, build_module, build_trainer, resolve_sync_batchnorm
from segkit.precision import (
    bf16_units,
    cpu_flags,
    model_precision,
    resolve_inference_precision,
    resolve_precision,
    stored_training_precision,
)
from segkit.tasks.train import train
from tests.conftest import compose_config
from tests.cpuinfo_samples import (
    CASCADE_LAKE,
    EMERALD_RAPIDS,
    EPYC_GENOA,
    EPYC_ROME,
    GRAVITON3,
    SAPPHIRE_RAPIDS,
    SKYLAKE_SP,
)

SMALL = [
    "trainer.precision=32-true",  # the switches below behave alike on every CPU; the precision tests set their own
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


@pytest.mark.parametrize(
    ("cpuinfo", "units"),
    [
        (SAPPHIRE_RAPIDS, ("amx_bf16", "avx512_bf16")),
        (EMERALD_RAPIDS, ("amx_bf16", "avx512_bf16")),
        (EPYC_GENOA, ("avx512_bf16",)),
        (CASCADE_LAKE, ()),
        (SKYLAKE_SP, ()),
        (EPYC_ROME, ()),
        (GRAVITON3, ()),
        ("", ()),
    ],
    ids=[
        "sapphire_rapids",
        "emerald_rapids",
        "epyc_genoa",
        "cascade_lake",
        "skylake_sp",
        "epyc_rome",
        "graviton3",
        "empty",
    ],
)
def test_bf16_units_from_cpuinfo_flags(cpuinfo, units):
    """AMX-BF16 / AVX512-BF16 decide it, not AVX-512 itself: Cascade Lake and Skylake-SP have AVX-512 and no bf16."""
    assert bf16_units(cpuinfo, environ={}) == units


def test_cpu_flags_are_those_of_the_first_processor():
    flags = cpu_flags(EPYC_ROME)
    assert {"avx2", "sha_ni", "rdpid"} <= flags and "avx512f" not in flags and "processor" not in flags
    assert "bf16" in cpu_flags(GRAVITON3)  # Arm lists "Features"; its bf16 is not an x86 bf16 unit
    assert "avx512f" in cpu_flags(CASCADE_LAKE) and "avx512_bf16" not in cpu_flags(CASCADE_LAKE)


def test_onednn_isa_cap_below_bf16_hides_the_units():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16 on an AMX Xeon: auto must then keep fp32."""
    assert bf16_units(SAPPHIRE_RAPIDS, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"}) == ()
    assert bf16_units(SAPPHIRE_RAPIDS, environ={"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}) == ()
    assert bf16_units(SAPPHIRE_RAPIDS, environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) != ()


def test_this_machine_agrees_with_torch(monkeypatch):
    """The flags of this machine's /proc/cpuinfo and torch's own cpuinfo checks name the same bf16 support."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if precision._proc_cpuinfo() is None or not hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        pytest.skip("no /proc/cpuinfo or no torch cpuinfo checks here")
    assert bool(bf16_units()) == bool(precision._torch_bf16_units())


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(SAPPHIRE_RAPIDS, "bf16-mixed"), (EPYC_GENOA, "bf16-mixed"), (CASCADE_LAKE, "32-true"), (EPYC_ROME, "32-true")],
    ids=["sapphire_rapids", "epyc_genoa", "cascade_lake", "epyc_rome"],
)
def test_auto_on_a_cpu(cpuinfo, expected, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    chosen, reason = resolve_precision("auto", "cpu", cpuinfo=cpuinfo)
    assert chosen == expected and reason.startswith("auto on a CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto", cpuinfo=cpuinfo)[0] == expected  # Lightning's auto: the CPU here


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_a_gpu(bf16, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def native_bf16(including_emulation: bool = True) -> bool:
        """A V100/T4 answers True with emulation counted: only bf16 units count for auto."""
        return bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native_bf16)
    for accelerator in ("gpu", "cuda", "auto", torch.device("cuda", 1)):
        chosen, reason = resolve_precision("auto", accelerator, cpuinfo=EPYC_ROME)
        assert chosen == expected and "GPU" in reason
    assert (
        resolve_inference_precision("auto", "cuda", stored=None)[0]
        == {"bf16-mixed": "bf16", "16-mixed": "fp16"}[expected]
    )


def test_an_explicit_precision_wins():
    assert resolve_precision("32-true", "cpu", stored="bf16-mixed", cpuinfo=SAPPHIRE_RAPIDS) == (
        "32-true",
        "given explicitly",
    )
    assert resolve_precision("bf16-mixed", "cpu", cpuinfo=EPYC_ROME)[0] == "bf16-mixed"
    assert resolve_precision("bf16", "cpu")[0] == "bf16-mixed"  # Lightning's alias, spelled out
    assert resolve_precision(32, "cpu")[0] == "32-true"
    assert resolve_inference_precision("fp16", "cpu", stored="bf16-mixed") == ("fp16", "given explicitly")


def test_a_bad_precision_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(SegkitError) as err:
        train(compose_config("train", SMALL + ["trainer.precision=bf17"], output_dir=tmp_path))
    assert str(err.value).startswith("trainer.precision=bf17; use auto, 32-true, bf16-mixed, 16-mixed")
    assert "\n" not in str(err.value)
    with pytest.raises(SegkitError, match=r"^precision=fp8; use auto, fp32, fp16, bf16$"):
        resolve_inference_precision("fp8", "cpu")


def test_a_resume_keeps_the_stored_precision_unless_one_is_given():
    assert resolve_precision("auto", "cpu", stored="32-true", cpuinfo=SAPPHIRE_RAPIDS)[0] == "32-true"
    chosen, reason = resolve_precision("auto", "cpu", stored="bf16-mixed", cpuinfo=EPYC_ROME)
    assert chosen == "bf16-mixed" and "trainer.precision=32-true" in reason  # kept, and said to be slow here
    # fp16 autocast is GPU-only: a GPU run resumed on a CPU takes this CPU's choice
    assert resolve_precision("auto", "cpu", stored="16-mixed", cpuinfo=EPYC_ROME)[0] == "32-true"
    assert resolve_precision("16-mixed", "cpu", stored="bf16-mixed")[0] == "16-mixed"


def test_stored_precision_is_read_from_known_names_only():
    assert stored_training_precision({"segkit": {"precision": "bf16-mixed"}}) == "bf16-mixed"
    older = {"segkit": {}, "hyper_parameters": {"trainer": {"precision": 32}}}
    assert stored_training_precision(older) == "32-true"  # a config written before segkit stored it
    assert stored_training_precision({"hyper_parameters": {"trainer": {"precision": "auto"}}}) is None
    assert stored_training_precision({"segkit": {"precision": "__import__('os')"}}) is None
    assert stored_training_precision({"segkit": ["bf16-mixed"], "hyper_parameters": "x"}) is None
    assert stored_training_precision(None) is None
    loaded = SimpleNamespace(precision="16-mixed", config={"trainer": {"precision": "32-true"}})
    assert model_precision(loaded) == "16-mixed"
    assert model_precision(SimpleNamespace(config={"trainer": {"precision": "bf16-mixed"}})) == "bf16-mixed"
    assert model_precision(None) is None


@pytest.mark.parametrize(
    ("stored", "cpuinfo", "expected"),
    [
        ("bf16-mixed", SAPPHIRE_RAPIDS, "bf16"),
        ("bf16-mixed", EPYC_ROME, "fp32"),  # the run's own precision, but emulated here: fp32
        ("32-true", SAPPHIRE_RAPIDS, "fp32"),
        ("16-mixed", SAPPHIRE_RAPIDS, "fp32"),  # fp16 on a CPU: fp32
        (None, SAPPHIRE_RAPIDS, "bf16"),  # benchmark, no checkpoint: what auto would train with here
        (None, EPYC_ROME, "fp32"),
    ],
)
def test_inference_auto_on_a_cpu(stored, cpuinfo, expected, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert resolve_inference_precision("auto", torch.device("cpu"), stored, cpuinfo=cpuinfo)[0] == expected


def test_inference_auto_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_inference_precision("auto", "cuda:0", "16-mixed")[0] == "fp16"
    assert resolve_inference_precision("auto", "cuda:0", "bf16-mixed")[0] == "fp32"  # no bf16 on this GPU
    assert resolve_inference_precision("auto", "cuda:0", "32-true")[0] == "fp32"


def test_auto_is_logged_and_stored_and_a_resume_keeps_it(tmp_path, monkeypatch, caplog):
    """A run on an AMX Xeon (its /proc/cpuinfo stands in for this machine's) trains in bf16-mixed: the start log,
    result.json and the checkpoint say so and why. Resumed on an AVX2-only EPYC, auto keeps bf16-mixed; given
    trainer.precision=32-true, the resume takes that."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(precision, "_proc_cpuinfo", lambda: SAPPHIRE_RAPIDS)
    common = SMALL + [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "callbacks.early_stopping=null",
        "callbacks.local_curves=null",
    ]

    def run(name: str, *overrides: str) -> dict:
        train(compose_config("train", common + list(overrides), output_dir=tmp_path / name))
        result = json.loads((tmp_path / name / "result.json").read_text())
        checkpoint = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["segkit"]["precision"] == result["precision"]
        assert checkpoint["segkit"]["precision_reason"] == result["precision_reason"]
        assert checkpoint["hyper_parameters"]["trainer"]["precision"] == result["precision"]
        return result

    with caplog.at_level("INFO", logger="segkit"):
        first = run("first", "trainer.precision=auto")
    assert first["precision"] == "bf16-mixed" and "amx_bf16" in first["precision_reason"]
    assert [r.message for r in caplog.records if r.message.startswith("precision:")] == [
        f"precision: bf16-mixed ({first['precision_reason']})"
    ]
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(precision, "_proc_cpuinfo", lambda: EPYC_ROME)
    resumed = run("resumed", "trainer.precision=auto", "trainer.max_epochs=2", f"ckpt_path={last}")
    assert resumed["precision"] == "bf16-mixed" and resumed["precision_reason"].startswith("auto on resume")
    given = run("given", "trainer.precision=32-true", "trainer.max_epochs=2", f"ckpt_path={last}")
    assert given["precision"] == "32-true" and given["precision_reason"] == "given explicitly"


def test_bf16_mixed_trains_one_batch_with_the_fp32_loss(tmp_path):
    """bf16 autocast on CPU is slow on CPUs without bf16 units, hence one 16x16 batch; its loss is fp32's to bf16's
    precision (a few parts in a thousand)."""
    losses = {}
    for chosen in ("bf16-mixed", "32-true"):
        cfg = compose_config(
            "train", SMALL + [f"trainer.precision={chosen}", "debug=fdr"], output_dir=tmp_path / chosen
        )
        losses[chosen] = train(cfg)["train/loss"]
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=0.02)


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


def test_compile_runs_the_compiled_net_through_train(tmp_path):
    """compile=true through train(): the net is compiled in place, so metrics and logging stay eager and the
    checkpoint keeps its ``net.*`` keys. aot_eager traces as inductor does, without its minutes of code generation."""
    from torch._dynamo.utils import counters

    assert compose_config("train", [], output_dir=tmp_path).compile is False
    torch._dynamo.reset()
    counters.clear()
    overrides = ["compile=true", "compile_backend=aot_eager", "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
    overrides += ["trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.local_curves=null"]
    metrics = train(compose_config("train", SMALL + overrides, output_dir=tmp_path))
    assert counters["aot_autograd"]["ok"] >= 2  # the net traced in training and in evaluation
    eager = train(compose_config("train", SMALL + overrides[2:], output_dir=tmp_path / "eager"))
    assert metrics["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-4)  # the same step, compiled
    assert metrics["val/mIoU"] == pytest.approx(eager["val/mIoU"], abs=1e-6)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and all(key.startswith("net.") and "_orig_mod" not in key for key in state)
    torch._dynamo.reset()


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


def test_convolutions_onednn_gets_wrong_in_bf16_stay_fp32_under_cpu_autocast():
    """More than 2048 channels in and fewer than 16 out (FCN-VGG's score_fr at CamVid's 11 classes): fp32 under
    CPU autocast, bf16 elsewhere; nothing changes outside autocast, in the state dict or for other layers."""
    from functools import partial

    from torch import nn

    from segkit.models.module import SegmentationModule
    from segkit.models.nets.fcn import FCN
    from tests.helpers import spec_of

    net = nn.Sequential(nn.Conv2d(4096, 8, 1), nn.Conv2d(2048, 8, 1), nn.Conv2d(4096, 16, 1), nn.Conv2d(2304, 15, 3))
    keys = list(net.state_dict())
    assert precision.keep_fp32_where_cpu_bf16_fails(net) == ["0", "3"] and list(net.state_dict()) == keys
    x4096, x2048 = torch.randn(1, 4096, 3, 3), torch.randn(1, 2048, 3, 3)
    plain = nn.Conv2d(4096, 8, 1)
    plain.load_state_dict(net[0].state_dict())
    assert torch.equal(net[0](x4096), plain(x4096))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes = [
            net[0](x4096).dtype,
            net[1](x2048).dtype,
            net[2](x4096).dtype,
            net[3](torch.randn(1, 2304, 3, 3)).dtype,
        ]
    assert dtypes == [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net[0](x4096).sum().backward()
    plain(x4096).sum().backward()
    assert torch.equal(net[0].weight.grad, plain.weight.grad)  # the fp32 weight gradient, not oneDNN's bf16 one
    assert precision.keep_fp32_where_cpu_bf16_fails(net) == ["0", "3"]  # a second call names them again
    with torch.device("meta"):
        fcn = FCN(num_classes=11, backbone="vgg11")
    module = SegmentationModule(fcn, nn.CrossEntropyLoss(), partial(torch.optim.SGD, lr=0.1), spec=spec_of(11))
    assert module.fp32_convs == ["score_fr"]


STEPS_OVER_4096_TO_8 = """
import torch
from functools import partial
from torch import nn
from segkit.models.module import SegmentationModule
from tests.helpers import spec_of
net = nn.Sequential(nn.Conv2d(3, 4096, 1), nn.Conv2d(4096, 8, 1))
SegmentationModule(net, nn.CrossEntropyLoss(), partial(torch.optim.SGD, lr=0.1), spec=spec_of(8))
for _ in range(5):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 3, 4, 4))
    out.float().sum().backward()
print("ok")
"""


@pytest.mark.skipif(not bf16_units(), reason="needs a CPU with bf16 units (elsewhere bf16 is emulated, ~50x slower)")
def test_bf16_steps_over_a_4096_to_8_convolution_finish_in_a_module():
    """Without the fp32 switch this process aborts in backward ("free(): invalid next size") on machine C."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", STEPS_OVER_4096_TO_8], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_bf16_true_on_a_cpu_is_refused_for_a_net_with_such_a_convolution(tiny_cfg):
    """bf16 weights leave no fp32 path for FCN-VGG's score_fr: one line before any step, pointing at bf16-mixed."""
    overrides = ("model=fcn32_vgg", "model.backbone=vgg11", "model.pretrained=false", "trainer.precision=bf16-true")
    with pytest.raises(SegkitError, match="bf16-true on a CPU: oneDNN's bf16 weight gradient of score_fr .*bf16-mixed"):
        train(tiny_cfg(*overrides, "debug=fdr"))
