"""The benchmark table and the ONNX/TorchScript exports, on small inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from segkit import SegkitError
from segkit.build import build_net, model_config
from segkit.exporters import export_onnx, export_torchscript
from segkit.profiling import count_flops, size_and_flops
from segkit.tasks.benchmark import benchmark_from_config
from segkit.tasks.export import export_from_config
from tests.conftest import CONF_DIR, compose_config

pytest.importorskip("onnxruntime", reason="ONNX checks need the export extra: pip install -e '.[export]'")


def _cfg(name: str, tmp_path: Path, *overrides: str):
    cfg = compose_config(name, ["extras.print_config=false", *overrides], output_dir=tmp_path)
    with open_dict(cfg):
        cfg.progress = False
    return cfg


def test_benchmark_two_small_models_writes_a_markdown_table(tmp_path, capsys):
    out = tmp_path / "bench.md"
    benchmark_from_config(
        _cfg(
            "benchmark",
            tmp_path,
            "models=[unet_small,enet]",
            "height=48",
            "width=64",
            "batch_size=2",
            "warmup=1",
            "repeats=2",
            "device=cpu",
            "channels_last=true",
            f"output={out}",
        )
    )
    table = out.read_text()
    assert "| model | params (M) | GFLOPs | latency b1 (ms) | FPS b1 | latency b2 (ms) | FPS b2 |" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"unet_small", "enet"}
    assert "| 0.38 |" in rows["enet"] and "-" not in rows["enet"].split("|")[4]
    assert table in capsys.readouterr().out


def test_meta_device_flops_are_the_real_count_at_the_stated_size():
    cfg = model_config("unet_small")
    params, flops = size_and_flops(cfg, 19, 3, 37, 53)
    net = build_net(cfg, 19, 3).eval()
    assert params == sum(p.numel() for p in net.parameters())
    assert flops == count_flops(net, (1, 3, 37, 53), "cpu") > 0
    assert size_and_flops(cfg, 19, 3, 74, 106)[1] > 2 * flops  # grows with the resolution (after padding to 16)


def test_flops_only_mode_and_unknown_model(tmp_path):
    out = tmp_path / "models.md"
    benchmark_from_config(_cfg("benchmark", tmp_path, "models=[fcn8_vgg,enet]", "flops_only=true", f"output={out}"))
    table = out.read_text()
    assert "latency" not in table and "| fcn8_vgg | 134.4" in table
    with pytest.raises(SegkitError, match="unknown model"):
        benchmark_from_config(_cfg("benchmark", tmp_path, "models=[nope]"))


def _with_random_heads(net: torch.nn.Module) -> torch.nn.Module:
    """Untrained heads are often zero-initialised (FCN scores); a zero output would hide export errors."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.01 * torch.randn(p.shape, generator=generator))
    return net.eval()


def _random_net(model_cfg) -> torch.nn.Module:
    """A BN-free net (VGG) with He-scaled random weights, built on the meta device first: initialising FCN-8s's
    134M parameters twice (torchvision's VGG, then the FCN convs) costs more than the export."""
    with torch.device("meta"):
        net = build_net(model_cfg, 6, 3, for_weights=True)
    net = net.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
        for name, b in net.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            assert leaf in ("running_mean", "running_var", "num_batches_tracked"), f"unhandled buffer {name}"
            b.fill_(1 if leaf == "running_var" else 0)
    return net.eval()


ONNX_MODELS = {
    "fcn8_vgg": [],
    "unet": ["model.base_width=8"],
    "deeplabv3plus_resnet50": [],
    "enet": [],
}


@pytest.mark.parametrize("name", list(ONNX_MODELS))
def test_onnx_export_matches_pytorch_with_dynamic_sizes(name, tmp_path):
    if not (CONF_DIR / "model" / f"{name}.yaml").is_file():
        pytest.skip(f"conf/model/{name}.yaml is not in this checkout yet")
    cfg = compose_config("train", [f"model={name}", *ONNX_MODELS[name]])
    net = _random_net(cfg.model) if name == "fcn8_vgg" else _with_random_heads(build_net(cfg.model, 6, 3))
    result = export_onnx(net, tmp_path / f"{name}.onnx", (1, 3, 64, 64))
    assert result.dynamic == "batch+spatial", result.note
    assert set(result.max_abs_diff) == {"1x3x64x64", "2x3x77x71"}  # the second size checks the dynamic axes
    assert max(result.max_abs_diff.values()) < 1e-4, result.summary()


def test_torchscript_export_and_the_export_command(tmp_path):
    net = _with_random_heads(build_net(compose_config("train", ["model=enet"]).model, 6, 3))
    result = export_torchscript(net, tmp_path / "enet.pt", (1, 3, 40, 56))
    assert result.dynamic == "batch+spatial" and max(result.max_abs_diff.values()) < 1e-4
    loaded = torch.jit.load(str(tmp_path / "enet.pt"))
    assert loaded(torch.randn(1, 3, 33, 45)).shape == (1, 6, 33, 45)

    metrics = export_from_config(
        _cfg(
            "export",
            tmp_path,
            "model=unet_small",
            "model.base_width=4",
            "format=both",
            "height=33",
            "width=47",
            "num_classes=5",
            f"output={tmp_path / 'cli' / 'unet'}",
        )
    )
    assert (tmp_path / "cli" / "unet.onnx").is_file() and (tmp_path / "cli" / "unet.pt").is_file()
    assert metrics["onnx/max_abs_diff"] < 1e-4 and metrics["torchscript/max_abs_diff"] < 1e-4
    with pytest.raises(SegkitError, match="nothing to export"):
        export_from_config(_cfg("export", tmp_path))


def test_export_and_benchmark_entry_points_list_their_options(tmp_path):
    """``src/export.py`` and ``src/benchmark.py`` are the entry points (``--help`` does not import torch: a second
    each)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    for script, option in [("export", "format"), ("benchmark", "flops_only")]:
        path = f"src/{script}.py"
        run = subprocess.run([sys.executable, path, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0 and option in run.stdout, (path, run.stderr[-500:])


def test_exporting_an_untrained_backbone_net_downloads_nothing(tmp_path, monkeypatch):
    """``model=<name>`` exports an untrained net: its config's ImageNet default must not be fetched (offline here)."""
    from segkit.models.backbones import weights

    def offline(*_args, **_kwargs):
        raise AssertionError("export tried to download weights")

    monkeypatch.setattr(weights, "download_state_dict", offline)
    cfg = _cfg("export", tmp_path, "model=linknet_resnet18", "format=torchscript", "height=32", "width=32")
    with open_dict(cfg):
        cfg.model.pretrained = True  # the user's default, which the tests' compose turns off
    metrics = export_from_config(cfg)
    assert metrics["torchscript/max_abs_diff"] < 1e-4
