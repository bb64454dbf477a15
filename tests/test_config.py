"""Every choice of every config group composes, and the cheap ones instantiate."""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra.utils import get_class, get_method

from segkit.data.datamodule import SegmentationDataModule
from segkit.optim import optimizer_over_groups
from tests.conftest import CONF_DIR, TINY, compose_config


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


GROUPS = ["data", "model", "optimizer", "scheduler", "loss", "trainer", "callbacks", "logger", "debug"]


def test_foundation_choices_exist():
    for group, expected in {
        "model": {"fcn32_vgg", "fcn16_vgg", "fcn8_vgg", "unet"},
        "data": {"synthetic", "camvid"},
        "optimizer": {"adam", "sgd", "rmsprop", "adamw"},
        "scheduler": {"poly", "none"},
        "loss": {"ce"},
        "trainer": {"default", "cpu", "gpu", "ddp", "ddp_sim"},
        "callbacks": {"default"},
        "logger": {"csv", "wandb", "tensorboard", "many"},
        "debug": {"fdr", "limit", "overfit"},
    }.items():
        assert expected <= set(choices(group)), group


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in choices(g)])
def test_choice_composes_and_instantiates(group, choice, tmp_path):
    cfg = compose_config("train", [f"{group}={choice}"], output_dir=tmp_path)
    node = cfg.get(group) if group != "debug" else cfg
    if group == "model":
        assert callable(get_class(node._target_))
    elif group == "data":
        dm = hydra.utils.instantiate(node)
        assert isinstance(dm, SegmentationDataModule) and dm.num_classes == len(dm.class_names) > 1
    elif group == "optimizer":
        opt = optimizer_over_groups(hydra.utils.instantiate(node), torch.nn.Conv2d(1, 1, 1))
        assert isinstance(opt, torch.optim.Optimizer)
    elif group == "scheduler":
        if node:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            sched = hydra.utils.instantiate(node)(opt, total_steps=10)
            if isinstance(sched, dict):  # a Lightning scheduler config: plateau steps on its monitored metric
                sched = sched["scheduler"]
            for _ in range(10):  # step (milestones) and plateau (patience) schedules cut only later in the run
                opt.step()
                sched.step(0.0) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
            assert opt.param_groups[0]["lr"] < 1.0
    elif group == "loss":
        loss = hydra.utils.instantiate(node, ignore_index=255)
        assert loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)).item() > 0
    elif group == "trainer":
        if node.accelerator == "gpu" and not torch.cuda.is_available():
            get_method(node._target_)  # composes; instantiating needs a GPU
        else:  # segkit settles precision=auto before Lightning sees it (Lightning has no "auto")
            from segkit.precision import resolve_precision

            precision, _ = resolve_precision(node.precision, node.accelerator)
            assert hydra.utils.instantiate(node, precision=precision) is not None
    elif group in ("callbacks", "logger"):
        for item in node.values():
            assert hydra.utils.instantiate(item) is not None
    elif group == "debug":
        assert "trainer" in node


def test_wrong_key_is_named(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="data.batch_sise"):
        compose_config("train", TINY + ["data.batch_sise=3"], output_dir=tmp_path)


def readme_groups() -> dict[str, set[str]]:
    """The README's config-group table: group -> the choices it names in backticks."""
    import re

    readme = (CONF_DIR.parent / "README.md").read_text()
    table = readme.split("## Config groups", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    groups = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        if len(names) == 1:  # the shared `paths`, `hydra`, ... row has a single default each
            groups[names[0]] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return groups


def test_readme_names_every_choice_and_only_existing_ones():
    groups = readme_groups()
    assert {"data", "model", "optimizer", "loss", "experiment", "inference"} <= set(groups)
    for group, named in groups.items():
        assert set(choices(group)) == named, f"README's `{group}` row differs from conf/{group}/"
