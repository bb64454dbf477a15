"""The net contract of DESIGN.md over every ``conf/model`` choice, found from the folder so a new config is covered
without touching this file (like segmentation_models_pytorch's base model test).

Each net is built from its real config at full size (random init, downloads off); the input is small instead:
the padding, cropping and resizing the contract is about do not depend on the image being large, and a 33 x 45
image is odd in both sides and a multiple of no stride. What is specific to an architecture (parameter counts,
published layouts, learning) lives in its family's file.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import pytest
import torch

from segkit.models.base import SegmentationNet
from segkit.models.module import SegmentationModule
from segkit.precision import bf16_units
from tests.helpers import spec_of
from tests.models.net_checks import MODEL_CONFIGS, check_output_shapes, config_maker, model_config

ODD_SIZE = (33, 45)
# The run test's images: the smallest that every net's deepest stride (32) and pooling pyramid still handle.
RUN_SHRINK = ("data.dataset.height=32", "data.dataset.width=32", "data.batch_size=2", "data.val_batch_size=2")


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_net_keeps_the_output_contract(name):
    """RGB-D input (``in_channels=4``) of odd size: ``B x K x H x W`` logits, a dict with ``out`` and auxiliary maps
    at the input size or a power-of-two fraction of it in train mode, one tensor in eval mode. Then, where the CPU
    has bf16 units, the same net takes one bf16-autocast training step (what ``precision=auto`` picks there)."""
    torch.manual_seed(0)
    net = check_output_shapes(config_maker(name), sizes=(ODD_SIZE,), in_channels=(4,))
    if bf16_units():  # without them bf16 is emulated, ~50x slower, and auto never picks it
        bf16_training_step(net, in_channels=4)


# UNet++'s deep supervision heads: auxiliary heads that no config switches on.
DECLARATION_CASES = [(name, {}) for name in MODEL_CONFIGS] + [("unetpp", {"deep_supervision": True})]


@pytest.mark.parametrize(
    "name, options", DECLARATION_CASES, ids=[n + "".join(f"-{k}" for k in o) for n, o in DECLARATION_CASES]
)
def test_net_declares_its_trunk_and_auxiliary_heads(name, options):
    """Every net is a ``SegmentationNet``: its trunk is ``backbone``, part of the net with a head besides, or None
    for a net trained from scratch (never for one that loads pretrained weights); in training mode it returns one
    output per declared auxiliary head, each with a published loss weight, and ``main_logits`` finds the logits.
    Built and run on the meta device: names, parameters and shapes only."""
    with torch.device("meta"):
        net = config_maker(name, **options)(num_classes=3, in_channels=3)
        out = net.train()(torch.empty(2, 3, 32, 32))
    assert isinstance(net, SegmentationNet)
    params = {id(p) for p in net.parameters()}
    trunk = set()
    if any(key.startswith("pretrained") or key == "weights_path" for key in model_config(name)):
        assert net.backbone is not None, "pretrained weights need a declared trunk"
    if net.backbone is not None:
        trunk = {id(p) for p in net.backbone.parameters()}
        assert trunk and trunk < params
    aux = set(out) - {"out"} if isinstance(out, Mapping) else set()
    assert aux == set(net.aux_heads), (aux, set(net.aux_heads))
    assert aux <= set(net.default_aux_weights), (aux, dict(net.default_aux_weights))
    for head in net.aux_heads.values():
        assert {id(p) for p in head.parameters()} <= params - trunk
    assert net.main_logits(out).shape == (2, 3, 32, 32)


def bf16_training_step(net: torch.nn.Module, in_channels: int) -> None:
    """One training step (forward, main and auxiliary losses, backward, SGD update) under CPU bf16 autocast: the
    convolutions compute in bf16 and the loss, the gradients and the updated weights stay finite."""
    module = SegmentationModule(net, torch.nn.CrossEntropyLoss(), partial(torch.optim.SGD, lr=0.01), spec=spec_of(5))
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    dtypes = []
    hook = conv.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    images, masks = torch.randn(2, in_channels, 32, 32), torch.randint(0, 5, (2, 32, 32))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss, _ = module._loss(net(images), masks)
    hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16} and logits.shape == (2, 5, 32, 32)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_trains_one_batch(name, tiny_cfg):
    """``model=<name>`` through the real entry path (data, loss, aux heads, optimizer, metrics): one train and one
    validation batch of 32 x 32 images, weights downloads off."""
    from segkit.tasks.train import train

    downloads = [f"model.{key}=false" for key in model_config(name) if key.startswith("pretrained")]
    metrics = train(tiny_cfg(f"model={name}", "debug=fdr", *RUN_SHRINK, *downloads))
    assert metrics["train/loss"] > 0 and 0.0 <= metrics["val/mIoU"] <= 1.0
