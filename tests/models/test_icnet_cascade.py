"""ICNet's image cascade as published: one shared trunk, branches at 1/8, 1/16 and 1/32, cascade label guidance
scored at each branch's own resolution with the reference weights."""

from __future__ import annotations

import math
from functools import partial

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from segkit import SegkitError
from segkit.models.blocks import main_logits, pad_to_multiple, resize_to
from segkit.models.module import SegmentationModule
from segkit.models.nets.icnet import ICNet
from segkit.models.targets import masks_at_size
from tests.conftest import CONF_DIR
from tests.helpers import spec_of
from tests.models.net_checks import check_output_shapes, count_params, fixed_batch


def _record_inputs(modules: dict[str, torch.nn.Module]) -> dict[str, list[torch.Size]]:
    """Input shape of every call of each module."""
    seen: dict[str, list[torch.Size]] = {name: [] for name in modules}
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].shape))
    return seen


def test_trunk_runs_once_on_the_half_image():
    """Each trunk stage runs once per forward: stem to conv3_1 on the 1/2 image, conv3_2 onwards at 1/32 on the
    halved conv3_1 map (the old layout ran the whole trunk a second time on a 1/4 copy of the image)."""
    net = ICNet(num_classes=3, backbone="resnet18").eval()
    bb = net.backbone
    stages = {"stem": bb.stem, "layer1": bb.layer1, "layer3": bb.layer3, "layer4": bb.layer4}
    stages.update({f"layer2.{i}": block for i, block in enumerate(bb.layer2)})
    seen = _record_inputs(stages)
    with torch.no_grad():
        net(torch.randn(1, 3, 128, 192))
    assert all(len(shapes) == 1 for shapes in seen.values()), seen
    assert seen["stem"][0][-2:] == (64, 96)  # the 1/2 image
    assert seen["layer2.0"][0][-2:] == (16, 24)  # conv3_1's input at 1/8 (stride 4 of the 1/2 image)
    assert seen["layer2.1"][0][-2:] == (4, 6)  # conv3_2 continues at 1/32
    assert seen["layer4"][0][-2:] == (4, 6)  # dilated conv4/conv5 stay at 1/32


def test_sub4_continues_from_the_sub2_features():
    """The sub4 branch is the rest of the trunk on conv3_1 (the sub2 map) halved: rebuilt here by hand."""
    torch.manual_seed(0)
    net = ICNet(num_classes=3, backbone="resnet18").eval()
    x = torch.randn(1, 3, 96, 128)
    bb = net.backbone
    with torch.no_grad():
        sub1, sub2, sub4 = net.branches(x)
        conv3_1 = bb.layer2[0](bb.layer1(bb.stem(resize_to(x, (48, 64)))))
        deep = bb.layer4(bb.layer3(bb.layer2[1:](resize_to(conv3_1, (3, 4)))))
        expected = net.sub4_reduce(net.pyramid(deep))
    assert torch.equal(sub2, conv3_1)
    assert torch.equal(sub4, expected)
    assert sub1.shape[-2:] == (12, 16) and sub2.shape[-2:] == (6, 8) and sub4.shape[-2:] == (3, 4)


def test_output_strides():
    """Branches at 1/8 (sub1), 1/16 (sub2), 1/32 (sub4); guidance outputs at 1/16 and 1/8; the classifier at
    1/4, upsampled to the input; the paper's Fig. 2."""
    net = ICNet(num_classes=3, backbone="resnet18")
    seen = _record_inputs({"classifier": net.classifier})
    x = torch.randn(2, 3, 256, 320)
    sub1, sub2, sub4 = net.branches(x)
    assert [t.shape[-2:] for t in (sub1, sub2, sub4)] == [(32, 40), (16, 20), (8, 10)]
    out = net.train()(x)
    assert out["aux_sub4"].shape == (2, 3, 16, 20) and out["aux_sub24"].shape == (2, 3, 32, 40)
    assert seen["classifier"][0][-2:] == (64, 80) and out["out"].shape == (2, 3, 256, 320)


@pytest.mark.parametrize("in_channels", [3, 4])
def test_guidance_outputs_cover_odd_inputs(in_channels):
    """Any H x W, RGB or RGB-D: ``out`` at input size, each guidance output the ceil of the input over its stride
    (the padded part it does not need is cropped), one tensor in eval mode; without guidance heads the plain
    contract."""
    net = ICNet(num_classes=3, in_channels=in_channels, backbone="resnet18")
    for h, w in [(45, 70), (97, 131), (64, 64)]:
        x = torch.randn(2, in_channels, h, w)
        out = net.train()(x)
        assert set(out) == {"out", "aux_sub4", "aux_sub24"}
        assert out["out"].shape == (2, 3, h, w)
        assert out["aux_sub4"].shape == (2, 3, math.ceil(h / 16), math.ceil(w / 16))
        assert out["aux_sub24"].shape == (2, 3, math.ceil(h / 8), math.ceil(w / 8))
        with torch.no_grad():
            assert net.eval()(x).shape == (2, 3, h, w)
    check_output_shapes(partial(ICNet, backbone="resnet18", aux_heads=False), in_channels=(in_channels,))


def test_labels_downsampled_to_each_branch():
    """The module scores each guidance output against the mask taken at its own resolution, at the pixel nearest
    each cell's centre, with the reference weights 0.16 (sub4) and 0.4 (sub24); the main output at full size."""
    torch.manual_seed(0)
    mask = torch.randint(0, 3, (2, 64, 64))
    mask[:, :5] = 255  # ignore pixels stay ignored at every scale
    assert torch.equal(masks_at_size(mask, (4, 4)), mask[:, 8::16, 8::16])
    assert torch.equal(masks_at_size(mask, (8, 8)), mask[:, 4::8, 4::8])
    assert masks_at_size(mask, (64, 64)) is mask

    net = ICNet(num_classes=3, backbone="resnet18")
    loss = torch.nn.CrossEntropyLoss(ignore_index=255)
    module = SegmentationModule(net, loss, partial(torch.optim.SGD, lr=0.01), spec=spec_of(3))
    assert module.aux_weights == {"aux_sub4": 0.16, "aux_sub24": 0.4}
    out = net.train()(torch.randn(2, 3, 64, 64))
    _, total, parts = module._loss(out, mask)
    l4 = loss(out["aux_sub4"], mask[:, 8::16, 8::16])
    l24 = loss(out["aux_sub24"], mask[:, 4::8, 4::8])
    assert torch.allclose(parts["aux_sub4"], l4) and torch.allclose(parts["aux_sub24"], l24)
    assert torch.allclose(total, loss(out["out"], mask) + 0.16 * l4 + 0.4 * l24)


def test_learns_with_label_guidance():
    """25 Adam steps on a fixed batch through the module's loss (guidance at the branches' resolutions) cut the
    main loss at least in half; ResNet-18 trunk for speed (the cascade code is the same)."""
    torch.manual_seed(0)
    net = ICNet(num_classes=4, backbone="resnet18")
    module = SegmentationModule(net, torch.nn.CrossEntropyLoss(), partial(torch.optim.Adam), spec=spec_of(4))
    image, mask = fixed_batch(num_classes=4, size=64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    losses = []
    for _ in range(25):
        logits, total, parts = module._loss(net(image), mask)
        losses.append(F.cross_entropy(logits, mask).item())
        assert set(parts) == {"aux_sub4", "aux_sub24"}
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        final = F.cross_entropy(main_logits(net.eval()(image)), mask).item()
    end = min(final, losses[-1])  # as check_learns: eval-mode BN statistics lag 25 steps behind
    assert end <= 0.5 * losses[0], (losses[0], losses[-1], final)


def _rerun_trunk_forward(net: ICNet, x: torch.Tensor) -> torch.Tensor:
    """The layout this class replaced: sub2 from the whole of conv3 on the 1/2 image and sub4 from the whole
    trunk rerun on a separate 1/4 copy of the image; the same weights."""
    padded, size = pad_to_multiple(x, 32)
    h, w = padded.shape[-2:]
    bb = net.backbone
    sub2 = bb.layer2(bb.layer1(bb.stem(resize_to(padded, (h // 2, w // 2)))))
    sub4 = net.sub4_reduce(net.pyramid(bb(resize_to(padded, (h // 4, w // 4)))[3]))
    sub24, _ = net.cff24(sub4, sub2)
    sub124, _ = net.cff12(sub24, net.sub1(padded))
    return net.classifier(resize_to(sub124, (h // 4, w // 4)))


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops()


def test_shared_trunk_costs_less_than_rerunning_it():
    """At 1024x2048 (the paper's Cityscapes input) the shared trunk saves over a tenth of the FLOPs of running
    the trunk again on the 1/4 image (141 against 161 GFLOPs: the dilated conv4/conv5 at 1/32 dominate both);
    counted exactly on the meta device."""
    with torch.device("meta"):
        net = ICNet(num_classes=19).eval()
        x = torch.zeros(1, 3, 1024, 2048)
        shared = _flops(lambda: net(x))
        rerun = _flops(lambda: _rerun_trunk_forward(net, x))
    assert shared < 0.9 * rerun, (shared / 1e9, rerun / 1e9)


def test_param_count_and_config():
    """Sharing the trunk adds no weights: the count is the dilated ResNet-50 plus the light branch, the pyramid's
    1x1 reduction, the two fusion units and three classifiers (pinned at 21 classes). The config carries no
    ``aux_weights``: the net's reference weights apply."""
    with torch.device("meta"):
        net = ICNet(num_classes=21)
        assert count_params(net) == 24_589_535
        heads = count_params(net) - count_params(net.backbone)
        assert heads == 24_589_535 - 23_508_032  # torchvision's ResNet-50 without its fc layer
    cfg = OmegaConf.load(CONF_DIR / "model" / "icnet_resnet50.yaml")
    assert "aux_weights" not in cfg
    with torch.device("meta"):
        built = hydra.utils.instantiate(cfg, num_classes=21, in_channels=3, pretrained=False)
    assert count_params(built) == 24_589_535
    with pytest.raises(SegkitError, match=r"model.backbone=.vgg16.: ICNet takes one of \(.resnet18"):
        ICNet(num_classes=3, backbone="vgg16")
