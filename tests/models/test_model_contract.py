"""The net contract of DESIGN.md over every ``conf/model`` choice, found from the folder so a new config is covered
without touching this file (like segmentation_models_pytorch's base model test).

Each net is built from its real config at full size (random init, downloads off); the input is small instead:
the padding, cropping and resizing the contract is about do not depend on the image being large, and a 33 x 45
image is odd in both sides and a multiple of no stride. What is specific to an architecture (parameter counts,
published layouts, learning) lives in its family's file.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.net_checks import MODEL_CONFIGS, check_output_shapes, config_maker, model_config

ODD_SIZE = (33, 45)
# The run test's images: the smallest that every net's deepest stride (32) and pooling pyramid still handle.
RUN_SHRINK = ("data.dataset.height=32", "data.dataset.width=32", "data.batch_size=2", "data.val_batch_size=2")


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_net_keeps_the_output_contract(name):
    """RGB-D input (``in_channels=4``) of odd size: ``B x K x H x W`` logits, a dict with ``out`` and auxiliary maps
    at the input size or a power-of-two fraction of it in train mode, one tensor in eval mode."""
    torch.manual_seed(0)
    check_output_shapes(config_maker(name), sizes=(ODD_SIZE,), in_channels=(4,))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_trains_one_batch(name, tiny_cfg):
    """``model=<name>`` through the real entry path (data, loss, aux heads, optimizer, metrics): one train and one
    validation batch of 32 x 32 images, weights downloads off."""
    from segkit.tasks.train import train

    downloads = [f"model.{key}=false" for key in model_config(name) if key.startswith("pretrained")]
    metrics = train(tiny_cfg(f"model={name}", "debug=fdr", *RUN_SHRINK, *downloads))
    assert metrics["train/loss"] > 0 and 0.0 <= metrics["val/mIoU"] <= 1.0
