"""FCN-32s/16s/8s on VGG16 as Shelhamer's Caffe graph (``caffe_form``), and the default form's upsampling that
keeps the image border at full strength."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit import SegkitError
from segkit.models.blocks import bilinear_upsampler
from segkit.models.nets.fcn import CAFFE_OUTPUT_OFFSETS, CAFFE_SKIP_OFFSETS, FCN
from tests.models.net_checks import check_learns, count_params

VGG16_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
FINAL_DECONV = {"32s": ("upscore", 32), "16s": ("upscore16", 16), "8s": ("upscore8", 8)}


def caffe_params(net: FCN) -> dict[str, tuple[torch.Tensor, ...]]:
    """The net's tensors under the Caffe layer names of ``voc-fcn*s/net.py``: (weight, bias) or (weight,)."""
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    names = [f"conv{s}_{i}" for s, widths in enumerate(VGG16_STAGES, 1) for i in range(1, len(widths) + 1)]
    params = {name: (conv.weight, conv.bias) for name, conv in zip(names, convs, strict=True)}
    params["fc6"] = (net.head[0].weight, net.head[0].bias)
    params["fc7"] = (net.head[3].weight, net.head[3].bias)
    params["score_fr"] = (net.score_fr.weight, net.score_fr.bias)
    params[FINAL_DECONV[net.variant][0]] = (net.upscore_final.weight,)
    for name in ("upscore2", "upscore_pool4", "score_pool4", "score_pool3"):
        if hasattr(net, name):
            module = getattr(net, name)
            params[name] = (module.weight,) if module.bias is None else (module.weight, module.bias)
    return params


def caffe_fcn_reference(p: dict, x: torch.Tensor, variant: str, at_once: bool) -> torch.Tensor:
    """Shelhamer's FCN graph written out layer by layer (``voc-fcn32s``, ``voc-fcn16s``, ``voc-fcn8s`` and, with
    ``at_once``, the Scale layers of ``voc-fcn8s-atonce``): Caffe's max-pooling rounds up, Deconvolution has no
    padding, Crop takes the reference's size from an offset. Test mode (dropout off)."""

    def crop(a: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
        return a[..., offset : offset + like.shape[-2], offset : offset + like.shape[-1]]

    h, pools = x, []
    for stage, widths in enumerate(VGG16_STAGES, 1):
        for i in range(1, len(widths) + 1):
            h = F.relu(F.conv2d(h, *p[f"conv{stage}_{i}"], padding=100 if (stage, i) == (1, 1) else 1))
        h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
        pools.append(h)
    pool3, pool4 = pools[2], pools[3]
    h = F.relu(F.conv2d(h, *p["fc6"]))
    h = F.relu(F.conv2d(h, *p["fc7"]))
    score_fr = F.conv2d(h, *p["score_fr"])
    if variant == "32s":
        return crop(F.conv_transpose2d(score_fr, *p["upscore"], stride=32), x, 19)
    upscore2 = F.conv_transpose2d(score_fr, *p["upscore2"], stride=2)
    scale_pool4 = pool4 * 0.01 if at_once else pool4
    score_pool4c = crop(F.conv2d(scale_pool4, *p["score_pool4"]), upscore2, 5)
    fuse_pool4 = upscore2 + score_pool4c
    if variant == "16s":
        return crop(F.conv_transpose2d(fuse_pool4, *p["upscore16"], stride=16), x, 27)
    upscore_pool4 = F.conv_transpose2d(fuse_pool4, *p["upscore_pool4"], stride=2)
    scale_pool3 = pool3 * 0.0001 if at_once else pool3
    score_pool3c = crop(F.conv2d(scale_pool3, *p["score_pool3"]), upscore_pool4, 9)
    fuse_pool3 = upscore_pool4 + score_pool3c
    return crop(F.conv_transpose2d(fuse_pool3, *p["upscore8"], stride=8), x, 31)


def _randomise_heads(net: FCN) -> None:
    """Score layers start at zero and deconvolutions bilinear: give them random values so every path and
    every offset shows in the output (the VGG layers keep their He initialisation)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.startswith(("score", "upscore")):
                for param in module.parameters():
                    fan_in = param[0].numel() if param.ndim > 1 else 1
                    param.copy_(torch.randn(param.shape, generator=g) / math.sqrt(fan_in))


@pytest.mark.parametrize(("variant", "at_once"), [("32s", False), ("16s", True), ("8s", False), ("8s", True)])
def test_caffe_form_equals_the_caffe_graph(variant, at_once):
    """With the same weights, ``caffe_form`` gives exactly the outputs of the Caffe graph, at odd sizes too."""
    torch.manual_seed(0)
    net = FCN(num_classes=3, variant=variant, caffe_form=True, at_once_scaling=at_once).eval()
    _randomise_heads(net)
    params = caffe_params(net)
    for h, w in [(37, 45), (50, 77), (3, 1)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            out, expected = net(x), caffe_fcn_reference(params, x, variant, at_once)
        assert out.shape == expected.shape == (1, 3, h, w)
        assert expected.std() > 0
        assert torch.equal(out, expected), (variant, h, w, (out - expected).abs().max())


def _coordinate_maps() -> dict[str, tuple[float, float]]:
    """Where each map of the Caffe graph sits on the input: cell ``y`` of map ``m`` is centred on input pixel
    ``a * y + b`` for ``maps[m] = (a, b)`` (Caffe's ``coord_map``). A conv/pool (kernel k, stride s, pad p) maps
    ``(a, b)`` to ``(a s, b + a ((k - 1) / 2 - p))``; an unpadded deconvolution (kernel k = 2 s) to
    ``(a / s, b - a (k - 1) / 2 / s)``."""

    def conv(m, k, s, p):
        a, b = m
        return a * s, b + a * ((k - 1) / 2 - p)

    def deconv(m, s):
        a, b = m
        return a / s, b - a * (2 * s - 1) / 2 / s

    m, maps = (1.0, 0.0), {}
    for stage, widths in enumerate(VGG16_STAGES, 1):
        for i in range(len(widths)):
            m = conv(m, 3, 1, 100 if (stage, i) == (1, 0) else 1)
        m = conv(m, 2, 2, 0)
        maps[f"pool{stage}"] = m
    maps["score_fr"] = conv(m, 7, 1, 0)  # fc6; fc7 and score_fr are 1x1
    maps["upscore"] = deconv(maps["score_fr"], 32)
    maps["upscore2"] = deconv(maps["score_fr"], 2)
    maps["upscore16"] = deconv(maps["upscore2"], 16)
    maps["upscore_pool4"] = deconv(maps["upscore2"], 2)
    maps["upscore8"] = deconv(maps["upscore_pool4"], 8)
    return maps


def test_crop_offsets_follow_from_the_layer_geometry():
    """The net's crops are where the maps align: 19 / 27 / 31 px for the final upsampling of 32s / 16s / 8s,
    5 and 9 cells for the pool4 and pool3 scores (Long et al.'s released models)."""
    maps = _coordinate_maps()

    def offset(source: str, target: str) -> float:  # the cell of ``source`` centred where ``target``'s first is
        (a, b), (a_t, b_t) = maps[source], maps.get(target, (1.0, 0.0))
        assert a == a_t
        return (b_t - b) / a

    assert offset("pool4", "upscore2") == CAFFE_SKIP_OFFSETS["pool4"] == 5
    assert offset("pool3", "upscore_pool4") == CAFFE_SKIP_OFFSETS["pool3"] == 9
    outputs = {variant: offset(FINAL_DECONV[variant][0], "data") for variant in FINAL_DECONV}
    assert outputs == CAFFE_OUTPUT_OFFSETS == {"32s": 19, "16s": 27, "8s": 31}


def _caffe_param_count(variant: str, k: int) -> int:
    """Parameters of Shelhamer's ``voc-fcn*s`` at ``k`` classes, layer by layer."""
    count, cin = 0, 3
    for widths in VGG16_STAGES:
        for cout in widths:
            count, cin = count + 9 * cin * cout + cout, cout
    count += 49 * 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * k + k  # fc6, fc7, score_fr
    deconv = {"32s": [32], "16s": [2, 16], "8s": [2, 2, 8]}[variant]
    count += sum(k * k * (2 * s) ** 2 for s in deconv)  # bilinear deconvolutions, no bias
    count += {"32s": 0, "16s": 512 * k + k, "8s": 512 * k + k + 256 * k + k}[variant]  # score_pool4/3
    return count


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_param_counts_are_the_caffe_nets(variant):
    """Either form has exactly the Caffe net's parameters (so converted weights fit one to one); FCN-8s is the
    paper's 134M (Long et al., Table 1)."""
    with torch.device("meta"):
        default = count_params(FCN(21, variant=variant))
        caffe = count_params(FCN(21, variant=variant, caffe_form=True, at_once_scaling=True))
    assert default == caffe == _caffe_param_count(variant, 21)
    if variant == "8s":
        assert default == 134_489_759 and abs(default / 134e6 - 1) < 0.01


@pytest.mark.parametrize("caffe_form", [False, True])
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_output_strides(variant, caffe_form):
    """The last score map before the final upsampling is at stride 32 / 16 / 8, and that upsampling has the
    same stride, in both forms (the Caffe form's map is larger by its 100-pixel margin)."""
    with torch.device("meta"):
        net = FCN(3, variant=variant, caffe_form=caffe_form).eval()
    seen = []
    net.upscore_final.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-2:]))
    stride = int(variant[:-1])
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 256, 320, device="meta"))
    assert out.shape == (1, 3, 256, 320) and net.upscore_final.stride == (stride, stride)
    caffe_cells = {"32s": (9, 11), "16s": (20, 24), "8s": (42, 50)}  # ceil((H + 198) / 32) - 6, then x2 + 2 per x2
    assert tuple(seen[0]) == (caffe_cells[variant] if caffe_form else (256 // stride, 320 // stride))


@pytest.mark.parametrize("stride", [2, 8, 16, 32])
def test_upsampler_keeps_the_border(stride):
    """A constant score map upsamples to the same constant everywhere, border included, and at initialisation the
    upsampler is bilinear interpolation (``align_corners=False``) up to rounding; on the zero-padded map (the plain
    transposed convolution) the outer ``stride / 2`` pixels fade."""
    up = bilinear_upsampler(2, stride, replicate_edges=True)
    plain = bilinear_upsampler(2, stride)
    const = torch.full((1, 2, 3, 5), 2.5)
    with torch.no_grad():
        out, faded = up(const), plain(const)
        x = torch.randn(1, 2, 4, 7)
        assert torch.allclose(up(x), F.interpolate(x, scale_factor=stride, mode="bilinear"), atol=1e-5)
    assert out.shape == (1, 2, 3 * stride, 5 * stride)
    assert torch.allclose(out, torch.full_like(out, 2.5))
    edge = stride // 2
    assert faded[..., 0, 0].max() < 2.5 and faded[..., -1, -1].max() < 2.5
    assert torch.allclose(faded[..., edge:-edge, edge:-edge], torch.tensor(2.5))


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_constant_scores_give_a_constant_image(variant):
    """The whole default-form net with a constant score map (score_fr weights zero, bias c; skips zero as
    initialised) predicts c at every pixel of an odd-sized image, edges included."""
    net = FCN(num_classes=2, variant=variant, backbone="vgg11").eval()
    with torch.no_grad():
        net.score_fr.bias.copy_(torch.tensor([1.5, -0.5]))
        out = net(torch.randn(1, 3, 70, 45))
    expected = torch.tensor([1.5, -0.5])[None, :, None, None].expand_as(out)
    assert torch.allclose(out, expected, atol=1e-5)


def test_caffe_form_is_vgg_only():
    with pytest.raises(SegkitError, match="caffe_form"):
        FCN(3, backbone="resnet50", caffe_form=True)


@pytest.mark.slow
def test_caffe_form_learns():
    """The Caffe form with at-once scaling trains: 12 Adam steps cut the loss on a fixed 32x32 image by half
    (VGG-11 trunk and one image for speed: the margin of 100 pixels makes it 232x232 inside)."""
    torch.manual_seed(0)
    net = FCN(num_classes=4, backbone="vgg11", caffe_form=True, at_once_scaling=True, dropout=0.0)
    check_learns(net, steps=12, lr=1e-4, size=32, batch=1)
