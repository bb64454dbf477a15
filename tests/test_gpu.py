"""On a CUDA GPU (skipped elsewhere): auto precision picks the GPU's own half type, a run trains and stores it, and
eval on the GPU in the chosen precision scores what fp32 scores. CI has no GPU; scripts/gpu_check.sh runs these."""

from __future__ import annotations

import json

import pytest
import torch

from segkit.precision import resolve_inference_precision, resolve_precision
from segkit.tasks.evaluate import evaluate_from_config
from segkit.tasks.train import train
from tests.conftest import compose_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY_GPU = [
    "trainer.accelerator=gpu",
    "trainer.devices=1",
    "data.dataset.num_samples={train: 32, val: 8, test: 8}",
    "data.dataset.height=64",
    "data.dataset.width=64",
    "data.batch_size=8",
    "model.base_width=8",
    "model.depth=3",
    "trainer.max_epochs=3",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
    "extras.print_config=false",
    "test=false",
    "logger=csv",
]


def native_half() -> str:
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"


def test_auto_is_the_gpus_native_half_precision():
    for accelerator in ("gpu", "cuda", "auto"):
        chosen, reason = resolve_precision("auto", accelerator)
        assert chosen == native_half() and "GPU" in reason
    assert (
        resolve_inference_precision("auto", "cuda", stored=None)[0]
        == {"bf16-mixed": "bf16", "16-mixed": "fp16"}[native_half()]
    )


def test_a_gpu_run_trains_in_auto_and_eval_on_the_gpu_reproduces_it(tmp_path):
    metrics = train(compose_config("train", TINY_GPU + ["trainer.precision=auto"], output_dir=tmp_path / "run"))
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["precision"] == native_half()
    best = metrics["best_model_path"]
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["segkit"]["precision"] == native_half()
    assert next(iter(checkpoint["state_dict"].values())).dtype == torch.float32  # mixed: fp32 master weights
    scores = {}
    for name in ("auto", "fp32"):
        overrides = [f"ckpt={best}", "device=cuda", f"precision={name}", "split=val", f"output_dir={tmp_path / name}"]
        scores[name] = evaluate_from_config(compose_config("eval", overrides))["val/mIoU"]
    assert abs(scores["auto"] - metrics["best/val/mIoU"]) < 0.005  # eval reproduces the run's own score
    assert abs(scores["auto"] - scores["fp32"]) < 0.02
    assert scores["fp32"] > 0.3  # 3 epochs on the shapes learn more than chance (1/6)
