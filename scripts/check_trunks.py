"""Each modern trunk for real in a Semantic FPN: forward, one training step, ONNX export checked in onnxruntime.

    python scripts/check_trunks.py                       # every ConvNeXt, Swin, EfficientNet and RegNet
    python scripts/check_trunks.py swin_b convnext_large --device cuda --size 128
    python scripts/check_trunks.py --weights-dir ~/weights regnet_y_16gf   # <dir>/<name>.pth when present

The tests do this for the smallest model of each family (tests/models/test_trunk_pairs.py); this script is for
the big ones, which take minutes and gigabytes. Weights are random unless ``--weights-dir`` holds
``<name>.pth`` (a torchvision state dict); nothing is downloaded. The step runs on ``--device``, the export on the
CPU (skipped with ``--no-export``, or by itself for models whose ONNX file would pass protobuf's 2 GB limit).
One line per trunk; the exit status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segkit.models.backbones import CONVNEXT_ARCHS, EFFICIENTNET_ARCHS, REGNET_ARCHS, SWIN_ARCHS, TRUNKS

MODERN = CONVNEXT_ARCHS + SWIN_ARCHS + EFFICIENTNET_ARCHS + REGNET_ARCHS
ONNX_LIMIT = 2**31  # protobuf's limit on one file; the exporter writes no external data here


def check(name: str, args: argparse.Namespace, out_dir: Path) -> str:
    """Build, step, export one trunk in a Semantic FPN; the report line (raises on a failed check)."""
    from segkit.models.nets.fpn import SemanticFPN

    weights = args.weights_dir / f"{name}.pth" if args.weights_dir else None
    torch.manual_seed(0)
    start = time.perf_counter()
    net = SemanticFPN(
        num_classes=args.classes, backbone=name, weights_path=str(weights) if weights and weights.is_file() else None
    )
    params = sum(p.numel() for p in net.parameters())
    net = net.to(args.device).train()
    built = time.perf_counter()
    images = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    masks = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=args.device)
    logits = net(images)
    if logits.shape != (args.batch, args.classes, args.size, args.size):
        raise AssertionError(f"logits {tuple(logits.shape)}")
    loss = F.cross_entropy(logits, masks)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    if missing or not torch.isfinite(loss) or not all(torch.isfinite(p.grad).all() for p in net.parameters()):
        raise AssertionError(f"loss {loss.item():.3f}, no gradient for {missing[:3]}" if missing else "non-finite")
    torch.optim.SGD(net.parameters(), lr=0.01).step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    stepped = time.perf_counter()
    line = f"{name:20s} {params / 1e6:7.1f}M  build {built - start:5.1f}s  step {stepped - built:5.1f}s"
    if args.no_export:
        return line + "  export skipped"
    if params * 4 >= ONNX_LIMIT:
        return line + f"  export skipped ({params * 4 / 2**30:.1f} GB of float32 weights > protobuf's 2 GB)"
    from segkit.exporters import export_onnx

    net = net.cpu().eval()
    result = export_onnx(net, out_dir / f"fpn_{name}.onnx", (1, 3, args.size, args.size), dynamic="batch+spatial")
    worst = max(result.max_abs_diff.values(), default=float("nan"))
    return line + f"  export {time.perf_counter() - stepped:5.1f}s ({result.dynamic}, max |diff| {worst:.1e})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trunks", nargs="*", default=list(MODERN), help="trunk names (default: every modern one)")
    parser.add_argument("--size", type=int, default=64, help="image side (default 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] for the forward and the step")
    parser.add_argument("--weights-dir", type=Path, help="folder of <name>.pth torchvision state dicts to load")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    parser.add_argument("--out", type=Path, help="folder for the .onnx files (default: a temporary one)")
    args = parser.parse_args(argv)
    unknown = [t for t in args.trunks if t not in TRUNKS]
    if unknown:
        parser.error(f"unknown trunks {unknown}; choose from {TRUNKS}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in args.trunks:
            try:
                print(check(name, args, out_dir), flush=True)
            except Exception as err:  # noqa: BLE001 - one line per trunk, then the next
                failed += 1
                print(f"{name:20s} FAILED: {type(err).__name__}: {' '.join(str(err).split())[:300]}", flush=True)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"{len(args.trunks) - failed}/{len(args.trunks)} trunks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
