"""Mix Transformer encoders MiT-B0..B5 (Xie et al., "SegFormer", NeurIPS 2021): four stages at strides 4, 8, 16, 32.

Hand-written because neither torchvision nor another well-kept library this project depends on has them; the layout
follows the authors' ``mix_transformer.py`` (NVlabs/SegFormer) so their ImageNet release (``mit_bX.pth``) loads
through ``load_mit_state`` (``nvlabs_name`` gives each parameter's name there). Each stage is an overlapping patch
embedding (a 7x7 stride-4 conv for the first, 3x3 stride-2 for the others, then LayerNorm), transformer blocks of
efficient self-attention (keys and values from the map shrunk by a strided ``reduction`` conv and LayerNorm, ratios
8, 4, 2, 1) and Mix-FFN (Linear, 3x3 depthwise conv, GELU, Linear), and a LayerNorm on the map it returns.
Stochastic depth rises linearly to 0.1 over the blocks.

Inside a stage the map flows as tokens, B x N x C (N = H * W, row-major), the layout of the Linear layers; the
convolutions see it as an NCHW view in channels-last memory, so no layout copies are made between them. The
returned maps are such views too (``permute`` of B x H x W x C): NCHW tensors whose strides are channels-last.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from segkit import SegkitError
from segkit.models.backbones.stages import check_stride
from segkit.models.backbones.surgery import adapt_first_conv
from segkit.models.backbones.weights import load_state_dict_file

MIT_ARCHS = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")

# name -> (stage widths, blocks per stage); every variant has 1, 2, 5, 8 heads, reduction ratios 8, 4, 2, 1 and
# an FFN 4x as wide as its stage.
MIT_LAYOUTS = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
HEADS = (1, 2, 5, 8)
REDUCTIONS = (8, 4, 2, 1)
FFN_RATIO = 4
DROP_PATH = 0.1
# The authors' blocks and stage outputs use eps 1e-6; their patch-embedding and key/value LayerNorms keep
# PyTorch's default 1e-5, kept here so their weights compute what they were trained to.
BLOCK_EPS = 1e-6


# Shapes are passed to ``reshape`` as sizes read from tensors (not ``unflatten``/``flatten``), so a traced export
# keeps them dynamic.
def _as_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B x N x C tokens as a B x C x h x w map (a channels-last view, no copy)."""
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """A B x C x h x w map as B x N x C tokens (no copy for a channels-last map)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class OverlapPatchEmbed(nn.Module):
    """A strided conv whose kernel overlaps its neighbours (7/4, then 3/2), padded by half the kernel so an H x W
    map gives ceil(H / stride) x ceil(W / stride) tokens, then LayerNorm."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, kernel_size, stride, kernel_size // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        return self.norm(_as_tokens(x)), x.shape[2], x.shape[3]


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map shrunk ``reduction`` times per side (a
    conv with kernel = stride = ``reduction``, then LayerNorm): N x N/R^2 attention instead of N x N. Computed by
    ``attention`` below.

    A map smaller than ``reduction`` (from an input under 29 pixels a side) is padded up to it before the
    reduction, where the authors' code fails (its reduction conv gets a map smaller than its kernel); every other
    size is reduced as theirs is (the remainder rows and columns dropped)."""

    def __init__(self, channels: int, heads: int, reduction: int) -> None:
        super().__init__()
        self.heads = heads
        self.reduction_ratio = reduction
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        if reduction > 1:
            self.reduction = nn.Conv2d(channels, channels, reduction, reduction)
            self.reduction_norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        source = x
        if self.reduction_ratio > 1:
            r = self.reduction_ratio
            grid = _as_map(x, h, w)
            if h < r or w < r:
                grid = F.pad(grid, (0, max(r - w, 0), 0, max(r - h, 0)))
            source = self.reduction_norm(_as_tokens(self.reduction(grid)))
        k, v = self.kv(source).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over B x heads x tokens x d tensors. On a CPU, where the keys are few (up to 4d,
    as MiT's reduced ones are: 35 keys of 32 channels at 176x240), as two matrix products and a float32 softmax: there
    torch's fused kernel made SegFormer-B0's bf16 backward pass up to twice as long (docs/measurements.md), and the
    N x M weights it avoids storing (kept here for backward in a few copies) are each no larger than 4x the queries. Elsewhere (a GPU, many keys) the fused kernel."""
    if q.device.type == "cpu" and k.shape[-2] <= 4 * q.shape[-1]:
        weights = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return weights.float().softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear: the depthwise conv gives the tokens the positional cue
    the paper uses instead of positional encodings."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = _as_tokens(self.dwconv(_as_map(self.fc1(x), h, w)))
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + ffn(norm2(x)), each branch dropped per sample
    with probability ``drop_path`` in training (stochastic depth)."""

    def __init__(self, channels: int, heads: int, reduction: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=BLOCK_EPS)
        self.attn = EfficientSelfAttention(channels, heads, reduction)
        self.norm2 = nn.LayerNorm(channels, eps=BLOCK_EPS)
        self.ffn = MixFFN(channels, FFN_RATIO * channels)
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Patch embedding, transformer blocks and the LayerNorm of the returned map."""

    def __init__(
        self, in_channels: int, channels: int, first: bool, heads: int, reduction: int, drop_paths: list[float]
    ) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, channels, 7 if first else 3, 4 if first else 2)
        self.blocks = nn.ModuleList(MiTBlock(channels, heads, reduction, p) for p in drop_paths)
        self.norm = nn.LayerNorm(channels, eps=BLOCK_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return _as_map(self.norm(x), h, w)


class MixTransformer(nn.Module):
    """MiT: ``stages.0..3`` returning B x C_i x ceil(H / s_i) x ceil(W / s_i) maps at strides s_i = 4, 8, 16, 32
    (``channels`` and ``strides`` list them, as ``stages.Backbone`` does). Initialised as the authors do:
    truncated normal (std 0.02) Linear weights, fan-out normal conv weights, zero biases, unit LayerNorms."""

    def __init__(self, name: str = "mit_b0", in_channels: int = 3, drop_path: float = DROP_PATH) -> None:
        super().__init__()
        if name not in MIT_LAYOUTS:
            raise SegkitError(f"model.backbone={name!r}; MiT takes one of {MIT_ARCHS}")
        widths, depths = MIT_LAYOUTS[name]
        rates = torch.linspace(0, drop_path, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        previous = in_channels
        for i, (width, depth) in enumerate(zip(widths, depths)):
            first = sum(depths[:i])
            stage = MiTStage(previous, width, i == 0, HEADS[i], REDUCTIONS[i], rates[first : first + depth])
            self.stages.append(stage)
            previous = width
        self.channels = list(widths)
        self.strides = [4, 8, 16, 32]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# segkit name -> the authors' name (NVlabs/SegFormer mix_transformer.py), applied in order to module paths.
_NVLABS_RENAMES = (
    (r"^stages\.(\d+)\.embed\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"\.attn\.reduction\.", lambda m: ".attn.sr."),
    (r"\.attn\.reduction_norm\.", lambda m: ".attn.norm."),
    (r"\.ffn\.dwconv\.", lambda m: ".mlp.dwconv.dwconv."),
    (r"\.ffn\.", lambda m: ".mlp."),
)
# In the authors' release but not part of the encoder: the ImageNet classifier.
_DROPPED = re.compile(r"^head\.")


def nvlabs_name(key: str) -> str:
    """The authors' state-dict name of a ``MixTransformer`` key, e.g. ``stages.1.blocks.0.attn.reduction.weight``
    -> ``block2.0.attn.sr.weight``, ``stages.0.blocks.1.ffn.dwconv.bias`` -> ``block1.1.mlp.dwconv.dwconv.bias``."""
    for pattern, repl in _NVLABS_RENAMES:
        key = re.sub(pattern, repl, key, count=1)
    return key


def load_mit_state(encoder: MixTransformer, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load the authors' MiT state dict (their names; ``head.*``, the ImageNet classifier, dropped) or one in
    segkit's own names into ``encoder``, strictly: a missing or unexpected key or a wrong shape is a one-line
    SegkitError naming the key and ``source``."""
    own = encoder.state_dict()
    to_own = {nvlabs_name(key): key for key in own}
    fix = (
        f"use the authors' {arch}.pth (NVlabs/SegFormer ImageNet-1K release) for model.backbone={arch}, "
        f"or fix model.backbone / model.weights_path"
    )
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _DROPPED.match(key):
            continue
        target = to_own.get(key, key if key in own else None)
        if target is None:
            raise SegkitError(f"{source} does not fit {arch}: unexpected key '{key}'; {fix}")
        if target in loaded:
            raise SegkitError(f"{source} holds '{key}' twice (as '{nvlabs_name(target)}' and '{target}'); {fix}")
        if tuple(value.shape) != tuple(own[target].shape):
            raise SegkitError(
                f"{source} does not fit {arch}: '{key}' has shape {tuple(value.shape)}, {arch} needs "
                f"{tuple(own[target].shape)}; {fix}"
            )
        loaded[target] = value
    missing = [nvlabs_name(key) for key in own if key not in loaded]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SegkitError(f"{source} does not fit {arch}: missing key '{missing[0]}'{more}; {fix}")
    encoder.load_state_dict(loaded, strict=True)


def build_mit(
    name: str, in_channels: int, output_stride: int, pretrained: bool, weights_path: str | None
) -> MixTransformer:
    """MiT-B0..B5 (``mit_b0`` ...) for ``in_channels`` inputs. ``weights_path`` loads the authors' ImageNet-1K
    release (NVlabs/SegFormer ``mit_bX.pth``) or a state dict in segkit's names; ``pretrained`` has no download
    (torchvision has no MiT) and says where the file is. Extra input channels keep the RGB filters, adapted after
    loading."""
    check_stride(name, output_stride, (32,))
    if name not in MIT_LAYOUTS:
        raise SegkitError(f"model.backbone={name!r}; MiT takes one of {MIT_ARCHS}")
    encoder = MixTransformer(name, 3 if weights_path else in_channels)
    if weights_path:
        path = Path(weights_path).expanduser()
        load_mit_state(encoder, load_state_dict_file(path), f"weights file '{path}'", name)
    elif pretrained:
        raise SegkitError(
            f"model.pretrained=true: {name} weights are not in torchvision and are not downloaded; get the authors' "
            f"ImageNet-1K {name}.pth (NVlabs/SegFormer README, 'ImageNet-1K pretrained weights') and set "
            f"model.weights_path=/path/{name}.pth, or train from scratch with model.pretrained=false"
        )
    embed = encoder.stages[0].embed
    embed.proj = adapt_first_conv(embed.proj, in_channels)
    return encoder
