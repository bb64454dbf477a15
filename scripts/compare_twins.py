"""Speed of segkit nets against the same architecture in torchvision or segmentation_models_pytorch (smp).

    pip install -e ".[compare]"          # segmentation-models-pytorch: used by this script only, never by segkit
    python scripts/compare_twins.py [--threads 2] [--height 384] [--width 480] [--train-batch 4] [--eval-batch 1]
                                    [--rounds 5] [--steps 3] [--pairs deeplabv3_resnet50 fpn_resnet50 ...]

Both nets of a pair are built in this one process (random init, the same class count, NCHW, fp32) and timed in
alternating rounds (the order flips every round), so a drift of the machine's speed hits both alike; img/s is
the median over the rounds. A train step is forward, cross-entropy on every output (main and auxiliary), backward
and an SGD step; an eval step is a forward pass in inference mode on the main output only (torchvision's
DeepLabV3 would also run its auxiliary head in eval mode; it is removed for the eval timing so that both sides do
the same work). Prints a markdown table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.blocks import main_logits
from segkit.profiling import count_params


@dataclass(frozen=True)
class Pair:
    segkit: str  # conf/model choice
    twin: str  # what the twin is, for the table
    build_twin: Callable[[int], nn.Module]
    overrides: tuple[str, ...] = ()  # model.<key>=<value> applied to the segkit config


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        sys.exit("this pair needs segmentation_models_pytorch: pip install -e '.[compare]'")
    return smp


def _tv_deeplabv3(arch: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        builder = getattr(torchvision.models.segmentation, arch)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)

    return build


def _smp_model(cls: str, encoder: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return getattr(_smp(), cls)(encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)

    return build


# smp's UPerNet: a 256-wide decoder, a LayerNorm on every encoder map, no dropout and no auxiliary head (segkit's
# default is mmsegmentation's: 512 wide, no norms, dropout 0.1, the FCN head on stage 3); the parameters then match
# one for one
UPERNET_AS_SMP = ("channels=256", "feature_norms=true", "dropout=0.0", "aux=false")

PAIRS: dict[str, Pair] = {
    "deeplabv3_resnet50": Pair(
        "deeplabv3_resnet50", "torchvision deeplabv3_resnet50", _tv_deeplabv3("deeplabv3_resnet50")
    ),
    "deeplabv3_resnet101": Pair(
        "deeplabv3_resnet101", "torchvision deeplabv3_resnet101", _tv_deeplabv3("deeplabv3_resnet101")
    ),
    # smp refines with one separable 3x3 conv after ASPP (stride 16) and one in the decoder (stride 4); segkit's
    # default has the paper's two in the decoder (one more at stride 4: ~4% of the net's time at 384x480), so the
    # like-for-like pair uses one
    "deeplabv3plus_resnet50": Pair(
        "deeplabv3plus_resnet50",
        "smp DeepLabV3Plus (resnet50)",
        _smp_model("DeepLabV3Plus", "resnet50", decoder_atrous_rates=(6, 12, 18)),  # the paper's rates at stride 16
        overrides=("decoder_convs=1",),
    ),
    # smp's FPN has no 3x3 output convs on the pyramid levels: compared without them (segkit's default keeps them,
    # as Lin et al. and Panoptic FPN do; on P2 they are 29% of the net's FLOPs at 384x480)
    "fpn_resnet50": Pair(
        "fpn_resnet50", "smp FPN (resnet50)", _smp_model("FPN", "resnet50"), overrides=("output_convs=false",)
    ),
    "linknet_resnet18": Pair("linknet_resnet18", "smp Linknet (resnet18)", _smp_model("Linknet", "resnet18")),
    "linknet_resnet34": Pair("linknet_resnet34", "smp Linknet (resnet34)", _smp_model("Linknet", "resnet34")),
    # the same layout on both sides: MiT-B0 and a 256-wide all-MLP decoder
    "segformer_b0": Pair("segformer_b0", "smp Segformer (mit_b0)", _smp_model("Segformer", "mit_b0")),
    "upernet_resnet50": Pair(
        "upernet_resnet50", "smp UPerNet (resnet50)", _smp_model("UPerNet", "resnet50"), overrides=UPERNET_AS_SMP
    ),
}
DEFAULT_PAIRS = [
    "deeplabv3_resnet50",
    "deeplabv3plus_resnet50",
    "fpn_resnet50",
    "linknet_resnet34",
    "segformer_b0",
    "upernet_resnet50",
]


def build_segkit(name: str, overrides: tuple[str, ...], num_classes: int) -> nn.Module:
    import yaml
    from omegaconf import OmegaConf

    from segkit.build import build_net, model_config

    cfg = model_config(name)
    for item in overrides:
        key, _, value = item.partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value))
    return build_net(cfg, num_classes, 3, for_weights=True)


def outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [v for v in out.values() if v is not None]


def time_train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Images per second over ``steps`` training steps after one warm-up step."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        out = net(x)
        loss = sum(F.cross_entropy(o, y) for o in outputs(out))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - start)


@torch.inference_mode()
def time_eval(net: nn.Module, x: torch.Tensor, steps: int) -> float:
    net.eval()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        main_logits(net(x))
    return steps * x.shape[0] / (time.perf_counter() - start)


def without_eval_aux(net: nn.Module) -> nn.Module:
    """torchvision's segmentation models run ``aux_classifier`` in eval mode too; the eval timing skips it."""
    if getattr(net, "aux_classifier", None) is not None:
        net.aux_classifier = None
    return net


@dataclass
class Row:
    segkit: str
    twin: str
    segkit_params_m: float
    twin_params_m: float
    segkit_train: float
    twin_train: float
    segkit_eval: float
    twin_eval: float

    @property
    def train_ratio(self) -> float:
        return self.segkit_train / self.twin_train

    @property
    def eval_ratio(self) -> float:
        return self.segkit_eval / self.twin_eval


def compare(pair: Pair, args: argparse.Namespace) -> Row:
    torch.manual_seed(0)
    nets = {"segkit": build_segkit(pair.segkit, pair.overrides, args.classes), "twin": pair.build_twin(args.classes)}
    x = torch.randn(args.train_batch, 3, args.height, args.width)
    y = torch.randint(0, args.classes, (args.train_batch, args.height, args.width))
    xe = torch.randn(args.eval_batch, 3, args.height, args.width)
    train: dict[str, list[float]] = {k: [] for k in nets}
    evals: dict[str, list[float]] = {k: [] for k in nets}
    for r in range(args.rounds):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]
        for side in order:
            train[side].append(time_train(nets[side], x, y, args.steps))
    params = {k: count_params(v) / 1e6 for k, v in nets.items()}  # with auxiliary heads, as trained
    nets["twin"] = without_eval_aux(nets["twin"])
    for r in range(args.rounds):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]
        for side in order:
            evals[side].append(time_eval(nets[side], xe, args.eval_steps))
    label = pair.segkit + "".join(f" {o}" for o in pair.overrides)
    return Row(
        label,
        pair.twin,
        params["segkit"],
        params["twin"],
        statistics.median(train["segkit"]),
        statistics.median(train["twin"]),
        statistics.median(evals["segkit"]),
        statistics.median(evals["twin"]),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| segkit | twin | params (M) segkit / twin | train img/s segkit / twin | train ratio "
        "| eval img/s segkit / twin | eval ratio |",
        "|---|---|---|---|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.segkit} | {r.twin} | {r.segkit_params_m:.2f} / {r.twin_params_m:.2f} "
            f"| {r.segkit_train:.2f} / {r.twin_train:.2f} | {r.train_ratio:.2f} "
            f"| {r.segkit_eval:.2f} / {r.twin_eval:.2f} | {r.eval_ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help=f"from: {' '.join(PAIRS)} (or all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--eval-batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per net (median)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per round")
    parser.add_argument("--eval-steps", type=int, default=3, help="timed eval batches per round")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    names = list(PAIRS) if args.pairs == ["all"] else args.pairs
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        parser.error(f"unknown pair(s) {', '.join(unknown)}; choose from {', '.join(PAIRS)}")
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"{args.height}x{args.width}, batch {args.train_batch} train / {args.eval_batch} eval, "
        f"{args.classes} classes, median of {args.rounds} rounds",
        flush=True,
    )
    rows = []
    for name in names:
        rows.append(compare(PAIRS[name], args))
        r = rows[-1]
        print(f"{r.segkit}: train {r.train_ratio:.2f}x, eval {r.eval_ratio:.2f}x", flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**asdict(r), "train_ratio": r.train_ratio, "eval_ratio": r.eval_ratio} for r in rows], indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
