"""SegFormer and its Mix Transformer encoder: parameter counts against the paper, the authors' ImageNet weights
(their key names, checked against every key and shape of their release), the decoder's cheaper order against the
paper's concatenation, the encoder against segmentation_models_pytorch's port of the authors' code, output shapes,
learning, bf16 and ONNX export.

The configs themselves (every variant at full size, odd input, a bf16 step, a training batch) run in
test_model_contract.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segkit import SegkitError
from segkit.models.backbones.mit import MIT_ARCHS, MixTransformer, build_mit, load_mit_state, nvlabs_name
from segkit.models.nets.segformer import SegFormer
from segkit.precision import bf16_units
from tests.models.net_checks import QUICK_LEARNING, check_learns, config_maker, count_params, on_meta

# Every key and shape of the authors' ImageNet release (NVlabs/SegFormer mit_b*.pth), ``head.*`` (their 1000-class
# classifier) included. Written from the authors' own classes (mmseg/models/backbones/mix_transformer.py of
# NVlabs/SegFormer at 65fa8cfa9b52, mit_b0..mit_b5 instantiated with their mmcv/mmseg imports stubbed, plus the
# nn.Linear(embed_dims[3], 1000) head the release carries), as {variant: {key: shape}}.
NVLABS_KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "nvlabs_mit_keys.json").read_text())

# Parameters at 150 classes (ADE20K), measured; the paper's Table 1 rounds them to 3.8, 13.7, 27.5, 47.3, 64.1 and
# 84.7M. segmentation_models_pytorch's Segformer (mit_b0, 150 classes) has the same 3,752,694.
PARAMS_150 = {
    "segformer_b0": 3_752_694,
    "segformer_b1": 13_715_798,
    "segformer_b2": 27_461_974,
    "segformer_b3": 47_337_814,
    "segformer_b4": 64_108_374,
    "segformer_b5": 84_708_694,
}
PAPER_MILLIONS = {
    "segformer_b0": 3.8,
    "segformer_b1": 13.7,
    "segformer_b2": 27.5,
    "segformer_b3": 47.3,
    "segformer_b4": 64.1,
    "segformer_b5": 84.7,
}


@pytest.mark.parametrize("name", PARAMS_150)
def test_param_count_matches_the_paper(name):
    count = count_params(on_meta(config_maker(name), num_classes=150, in_channels=3))
    assert count == PARAMS_150[name]
    assert round(count / 1e6, 1) == PAPER_MILLIONS[name]


def nvlabs_state(arch: str, device: str = "meta", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of the authors' release of ``arch``: random values (``cpu``) or
    none (``meta``)."""
    g = torch.Generator().manual_seed(seed)
    return {
        key: torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape, generator=g)
        for key, shape in NVLABS_KEYS[arch].items()
    }


@pytest.mark.parametrize("arch", MIT_ARCHS)
def test_every_key_of_the_authors_release_has_one_place(arch):
    """The authors' names map one-to-one onto the encoder's parameters, shape for shape; only their ImageNet
    classifier (``head.*``) is left over; the strict loader takes the whole release."""
    assert arch in NVLABS_KEYS
    with torch.device("meta"):
        encoder = MixTransformer(arch)
    own = encoder.state_dict()
    theirs = {key: tuple(shape) for key, shape in NVLABS_KEYS[arch].items() if not key.startswith("head.")}
    assert {key for key in NVLABS_KEYS[arch] if key not in theirs} == {"head.weight", "head.bias"}
    names = {nvlabs_name(key): key for key in own}
    assert len(names) == len(own) and names.keys() == theirs.keys()
    assert all(tuple(own[names[key]].shape) == shape for key, shape in theirs.items())
    load_mit_state(encoder, nvlabs_state(arch), "the release", arch)


def test_authors_weights_land_in_place():
    """mit_b0: values of the authors' names end up in the modules segkit names so."""
    state = nvlabs_state("mit_b0", "cpu")
    encoder = MixTransformer("mit_b0")
    load_mit_state(encoder, state, "the release", "mit_b0")
    stage = encoder.stages
    pairs = {
        "patch_embed1.proj.weight": stage[0].embed.proj.weight,
        "patch_embed3.norm.bias": stage[2].embed.norm.bias,
        "block2.1.attn.q.weight": stage[1].blocks[1].attn.q.weight,
        "block1.0.attn.kv.bias": stage[0].blocks[0].attn.kv.bias,
        "block3.1.attn.sr.weight": stage[2].blocks[1].attn.reduction.weight,
        "block2.0.attn.norm.weight": stage[1].blocks[0].attn.reduction_norm.weight,
        "block4.1.attn.proj.weight": stage[3].blocks[1].attn.proj.weight,
        "block4.0.norm2.weight": stage[3].blocks[0].norm2.weight,
        "block1.1.mlp.dwconv.dwconv.weight": stage[0].blocks[1].ffn.dwconv.weight,
        "block3.0.mlp.fc2.bias": stage[2].blocks[0].ffn.fc2.bias,
        "norm4.weight": stage[3].norm.weight,
    }
    for key, param in pairs.items():
        assert torch.equal(param, state[key]), key
    assert not hasattr(stage[3].blocks[0].attn, "reduction")  # ratio 1: no sr in the release either
    own = encoder.state_dict()
    assert all(torch.equal(own[key], state[nvlabs_name(key)]) for key in own)


@pytest.fixture(scope="module")
def mit_b0_file(tmp_path_factory):
    """The authors' mit_b0.pth as torch.save writes it: random values, their names, their classifier."""
    path = tmp_path_factory.mktemp("weights") / "mit_b0.pth"
    torch.save(nvlabs_state("mit_b0", "cpu", seed=1), path)
    return path


def test_weights_path_loads_the_authors_file(mit_b0_file):
    """``model.weights_path`` of the config: the release loads, changes the outputs, and a fourth input channel
    keeps the RGB filters of the first conv and gets their mean."""
    state = nvlabs_state("mit_b0", "cpu", seed=1)
    x = torch.randn(1, 4, 64, 64)
    torch.manual_seed(0)
    plain = config_maker("segformer_b0")(num_classes=3, in_channels=4).eval()
    torch.manual_seed(0)
    loaded = config_maker("segformer_b0", weights_path=str(mit_b0_file))(num_classes=3, in_channels=4).eval()
    proj = loaded.backbone.stages[0].embed.proj.weight
    assert torch.equal(proj[:, :3], state["patch_embed1.proj.weight"])
    assert torch.allclose(proj[:, 3], state["patch_embed1.proj.weight"].mean(dim=1))
    assert torch.equal(loaded.backbone.stages[1].blocks[1].attn.q.weight, state["block2.1.attn.q.weight"])
    with torch.no_grad():
        assert not torch.allclose(plain(x), loaded(x))
    assert torch.equal(build_mit("mit_b0", 3, 32, False, str(mit_b0_file)).stages[3].norm.bias, state["norm4.bias"])


def test_weights_path_takes_segkit_names_too(tmp_path):
    """A state dict saved from segkit's own encoder loads as well."""
    encoder = MixTransformer("mit_b1")
    torch.save(encoder.state_dict(), tmp_path / "mine.pth")
    loaded = build_mit("mit_b1", 3, 32, False, str(tmp_path / "mine.pth"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values()))


@pytest.mark.parametrize("fault", ["missing", "shape", "unexpected", "other variant"])
def test_a_file_that_does_not_fit_is_refused_in_one_line(fault, tmp_path):
    state = nvlabs_state("mit_b0", "cpu")
    key = "block2.1.attn.q.weight"
    arch = "mit_b0"
    if fault == "missing":
        del state[key]
    elif fault == "shape":
        state[key] = torch.zeros(64, 63)
    elif fault == "unexpected":
        key = "block2.1.attn.qkv.weight"
        state[key] = torch.zeros(64, 64)
    else:
        arch, key = "mit_b1", "patch_embed1.proj.weight"
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(SegkitError) as err:
        build_mit(arch, 3, 32, False, str(path))
    message = str(err.value)
    assert "\n" not in message and key in message and str(path) in message and "model.weights_path" in message


def test_pretrained_says_where_the_weights_are():
    with pytest.raises(SegkitError) as err:
        SegFormer(3, backbone="mit_b2", pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert all(s in message for s in ("torchvision", "NVlabs/SegFormer", "mit_b2.pth", "model.weights_path="))


def test_refuses_other_trunks_and_strides():
    with pytest.raises(SegkitError, match="takes one of"):
        SegFormer(3, backbone="resnet50")
    with pytest.raises(SegkitError, match="output_stride=16"):
        build_mit("mit_b0", 3, 16, False, None)


def test_encoder_is_the_authors_mix_transformer():
    """The same weights (the authors' names, shared by segmentation_models_pytorch's port of their code) give the
    same four maps at an odd size, where the reductions drop rows and columns."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    theirs = smp.encoders.get_encoder("mit_b0", weights=None).eval()
    state = {k: v + 0.1 * torch.randn_like(v) for k, v in theirs.state_dict().items()}  # LayerNorms not 1/0
    theirs.load_state_dict(state)
    ours = MixTransformer("mit_b0").eval()
    load_mit_state(ours, state, "smp's encoder", "mit_b0")
    x = torch.randn(1, 3, 75, 99)
    with torch.no_grad():
        expected, got = theirs(x)[2:], ours(x)
    assert ours.channels == [32, 64, 160, 256] and ours.strides == [4, 8, 16, 32]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_decoder_computes_the_papers_concatenation():
    """The decoder's order (embedding and fuse block multiplied, applied per stage, upsampled and summed) is the
    paper's function: embed, upsample, concatenate deepest first, 1x1 conv, BatchNorm, ReLU, classify."""
    torch.manual_seed(0)
    net = SegFormer(5, backbone="mit_b0", decoder_channels=32).eval()
    head = net.head
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
        head.norm.running_mean.normal_()
        head.norm.running_var.uniform_(0.5, 2.0)
        features = net.backbone(torch.randn(2, 3, 45, 61))
        size = features[0].shape[-2:]
        maps = [
            F.interpolate(embed(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), size, mode="bilinear", align_corners=False)
            for embed, x in zip(head.embed, features)
        ]
        fused = F.relu(head.norm(F.conv2d(torch.cat(maps[::-1], dim=1), head.fuse.weight)))
        torch.testing.assert_close(head(features), head.classifier(fused), rtol=1e-4, atol=1e-4)


def test_cpu_attention_with_few_keys_is_the_fused_kernels_function(monkeypatch):
    """On a CPU with few keys (MiT's reduced ones) attention is two matrix products, faster there than torch's fused
    kernel in bf16; values and gradients are the kernel's, in fp32 and under bf16 autocast. Many keys keep the
    fused kernel."""
    import segkit.models.backbones.mit as mit

    calls, sdpa = [], F.scaled_dot_product_attention

    def fused(*args):
        calls.append(args[0].shape)
        return sdpa(*args)

    monkeypatch.setattr(mit.F, "scaled_dot_product_attention", fused, raising=True)
    torch.manual_seed(0)
    for n, m, heads, dtype, tol in (
        (150, 35, 1, None, 1e-5),
        (48, 48, 8, None, 1e-5),
        (150, 35, 2, torch.bfloat16, 3e-2),
    ):
        q, k, v = (torch.randn(2, heads, size, 32, requires_grad=True) for size in (n, m, m))
        results = []
        for function in (mit.attention, sdpa):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                out = function(q, k, v)
            results.append((out.float(), *torch.autograd.grad(out.float().square().sum(), (q, k, v))))
        for ours, theirs in zip(*results, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    assert calls == []
    q, k = torch.randn(1, 1, 10, 8), torch.randn(1, 1, 33, 8)  # 33 keys > 4 x 8 channels
    assert mit.attention(q, k, k).shape == (1, 1, 10, 8) and calls == [(1, 1, 10, 8)]


def test_any_input_size():
    """Odd sizes, four input channels, and inputs smaller than the stage-1 reduction (8 x 4 pixels)."""
    torch.manual_seed(0)
    net = SegFormer(6, in_channels=4)
    for shape in ((2, 4, 45, 61), (1, 4, 7, 5)):
        net.train()
        assert net(torch.randn(shape)).shape == (shape[0], 6, *shape[2:])
        net.eval()
        with torch.no_grad():
            assert net(torch.randn(shape)).shape == (shape[0], 6, *shape[2:])


def test_learns():
    torch.manual_seed(0)
    check_learns(SegFormer(4, backbone="mit_b0"), **QUICK_LEARNING)


@pytest.mark.skipif(not bf16_units(), reason="no bf16 units: bf16 is emulated, ~50x slower")
def test_bf16_autocast_forward():
    torch.manual_seed(0)
    net = SegFormer(3).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 3, 33, 45))
    assert out.shape == (1, 3, 33, 45) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_onnx_export_with_dynamic_sizes(tmp_path):
    """Attention, reductions and the decoder export with dynamic batch and spatial axes, checked in onnxruntime at
    a second, odd size."""
    pytest.importorskip("onnxruntime")
    from segkit.exporters import export_onnx

    torch.manual_seed(0)
    result = export_onnx(SegFormer(5, backbone="mit_b0"), tmp_path / "segformer.onnx", (1, 3, 64, 64))
    assert result.dynamic == "batch+spatial", result.note
    assert max(result.max_abs_diff.values()) < 1e-4, result.summary()
