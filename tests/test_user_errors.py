"""Mistakes a user makes from the command line end in one line that names the key, choice, value or file at fault and
gives the fix (exit status 1), in every entry point and in the dataset scripts.

The table runs in-process through each entry point's own ``@hydra.main`` function and ``run_entry_point``, the path
``python src/<entry>.py`` takes; a few rows also run as real processes. A row passes only with exactly one error
line holding what it names and the fix it gives: a message that merely repeats an exception's last line fails.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from segkit import SegkitError
from segkit.cli import run_entry_point
from segkit.entry import MAINS
from segkit.tasks.train import train
from tests.conftest import ROOT, SMALL_RUN, TINY, compose_config
from tests.data import trees
from tests.helpers import read_csv_metrics

SMALL = [*SMALL_RUN, "data.batch_size=4", "data.val_batch_size=4"]


@dataclass(frozen=True)
class Row:
    entry: str
    args: tuple[str, ...]
    names: str  # the key, choice, value or file the line must name ("{tmp}" is the test's folder)
    fix: str  # what the line must tell the user to do


ROWS = {
    "mistyped key": Row(
        "train", ("optimizer.lrr=1",), "optimizer.lrr", "did you mean optimizer.lr? (write optimizer.lr=1)"
    ),
    "mistyped top-level group": Row("train", ("modle=unet",), "modle", "did you mean model? (write model=unet)"),
    "mistyped key under another parent": Row(
        "train", ("optimiser.lr=0.1",), "optimiser.lr", "did you mean optimizer.lr?"
    ),
    "mistyped choice": Row("train", ("model=unet_smal",), "model=unet_smal", "did you mean model=unet_small"),
    "mistyped nested choice": Row(
        "train", ("data/labels=cityscape",), "data/labels=cityscape", "did you mean data/labels=cityscapes_"
    ),
    "key the chosen model lacks": Row(
        "train", ("model.backbone=resnet50",), "model.backbone", "model has: _target_, base_width"
    ),
    "+ on a key that exists": Row(
        "train", ("+trainer.max_epochs=3",), "trainer.max_epochs already exists", "trainer.max_epochs=3"
    ),
    "~ of a mistyped key": Row(
        "train", ("~callbacks.early_stoping",), "callbacks.early_stoping", "did you mean callbacks.early_stopping?"
    ),
    "unclosed bracket": Row("train", ("optimizer.lr=[0.1",), "'optimizer.lr=[0.1'", "close every ["),
    "unknown interpolation": Row(
        "train", ("optimizer.lr=${nowhere}", *TINY), "optimizer.lr", "fix the ${...} reference"
    ),
    "argument the class does not take": Row(
        "train", ("+logger.csv.nmae=x", *TINY), "logger.csv.nmae", "did you mean logger.csv.name?"
    ),
    "aux_weights not a mapping": Row("train", ("aux_weights=0.2", *TINY), "aux_weights=0.2", "aux_weights={aux:0.2}"),
    "data folder missing": Row(
        "train", ("data=camvid", "data.root={tmp}/nowhere"), "'{tmp}/nowhere' does not exist", "set data.root="
    ),
    "eval: mistyped choice": Row("eval", ("inference=slid",), "inference=slid", "did you mean inference=slide"),
    "eval: checkpoint missing": Row("eval", ("ckpt={tmp}/missing.ckpt",), "{tmp}/missing.ckpt", "ckpt="),
    "predict: mistyped group key": Row("predict", ("inferance=slide",), "inferance", "did you mean inference?"),
    "export: mistyped key": Row("export", ("heigth=360",), "heigth", "did you mean height?"),
    "benchmark: mistyped key": Row("benchmark", ("devcie=cpu",), "devcie", "did you mean device?"),
}


@pytest.fixture
def run_entry(tmp_path, monkeypatch, capfd):
    """``run_entry(entry, *args) -> (exit status, output)`` in this process, leaving logging and Hydra as found."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setenv("SEGKIT_ROOT", str(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(entry: str, *args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", [f"{entry}.py", *args])
        capfd.readouterr()
        with warnings.catch_warnings(), pytest.raises(SystemExit) as stop:
            run_entry_point(MAINS[entry], entry)
        out, err = capfd.readouterr()
        return stop.value.code, out + err

    yield run
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    HydraConfig.instance().cfg = None


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


def check_one_line(output: str, names: str, fix: str) -> str:
    """The single error line of ``output``, after checking it names ``names`` and gives ``fix``."""
    assert "Traceback" not in output, output[-3000:]
    lines = error_lines(output)
    assert len(lines) == 1, output[-3000:]
    line = lines[0]
    assert names in line, line
    assert fix in line, line
    return line


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_bad_input_gives_one_line_with_the_fix(row, run_entry, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in row.args]
    status, output = run_entry(row.entry, *args)
    assert status == 1
    check_one_line(output, row.names.replace("{tmp}", str(tmp_path)), row.fix)


def test_unknown_mask_value_met_in_a_loader_worker_is_one_line(run_entry, tmp_path):
    """The label table's complaint, raised in a DataLoader worker during the sanity check, reaches the user as the
    one line it was (not torch's rebuilt worker traceback), and result.json records it as the cause."""
    root = trees.folder_tree(tmp_path / "folder", n=6, rgb=False)  # ids 0..2, the binary table knows 0 and 1
    args = ["data=folder", f"data.root={root}", "data.num_workers=1", "data.input.crop_size=[32,32]"]
    status, output = run_entry("train", *args, *[o for o in SMALL if not o.startswith("data.dataset")])
    assert status == 1
    line = check_one_line(output, "mask value(s) [2] are not in label table 'binary'", "data.unknown_ids=ignore")
    assert str(root / "masks") in line
    (result,) = (tmp_path / "logs" / "train" / "runs").glob("*/result.json")
    error = json.loads(result.read_text())["error"]
    assert error.startswith("SegkitError: ") and "not in label table 'binary'" in error and "Traceback" not in error


def test_result_json_records_the_cause_behind_hydras_wrapping(run_entry, tmp_path):
    status, _ = run_entry("train", "+logger.csv.nmae=x", *TINY)
    assert status == 1
    (result,) = (tmp_path / "logs" / "train" / "runs").glob("*/result.json")
    error = json.loads(result.read_text())["error"]
    assert error.startswith("TypeError: ") and "'nmae'" in error, error


def test_the_data_folder_is_checked_before_any_net_is_built_or_downloaded(tmp_path):
    """A wrong data.root with a net that downloads 528 MB of VGG16: the data error comes first, nothing is
    downloaded or built."""
    cfg = compose_config("train", ["data=camvid", f"data.root={tmp_path / 'nowhere'}", "model=fcn8_vgg"], tmp_path)
    cfg.model.pretrained = True  # as a user has it (the tests' compose turns downloads off)
    download = mock.patch(
        "segkit.models.backbones.weights.download_state_dict", side_effect=AssertionError("downloaded")
    )
    build = mock.patch("segkit.tasks.train.build_module", side_effect=AssertionError("net built"))
    from segkit.tasks.train import train

    with download, build, pytest.raises(SegkitError, match="CamVid root .*nowhere' does not exist"):
        train(cfg)


def run_script(args: list[str], tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python <args>`` in ``tmp_path``; ``env`` values of None remove the variable."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update({"SEGKIT_ROOT": str(tmp_path), "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})})
    environment = {k: v for k, v in environment.items() if v is not None}
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("row", [ROWS["mistyped key"], ROWS["eval: mistyped choice"]], ids=["train", "eval"])
def test_bad_input_as_a_process(row, tmp_path):
    """The same line from a real ``python src/<entry>.py``, where Hydra's composition fails before segkit's code."""
    proc = run_script([str(ROOT / "src" / f"{row.entry}.py"), *row.args], tmp_path)
    assert proc.returncode == 1
    check_one_line(proc.stdout + proc.stderr, row.names, row.fix)
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # nothing but the line


def test_wandb_without_a_login_fails_fast_with_one_line(tmp_path):
    """logger=wandb online with no API key and no ~/.netrc: one line saying `wandb login` or WANDB_MODE=offline,
    before the net is built (no network wait)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"WANDB_MODE": "online", "HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config" / "wandb")}
    env.update({"WANDB_API_KEY": None, "WANDB_BASE_URL": None, "NETRC": None})
    proc = run_script([str(ROOT / "src" / "train.py"), "logger=wandb", *SMALL], tmp_path, env=env)
    assert proc.returncode == 1
    line = check_one_line(proc.stdout + proc.stderr, "logger.wandb: no W&B login found", "`wandb login`")
    assert "WANDB_MODE=offline" in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_dataset_script_on_an_unreadable_image_names_the_file(tmp_path, capsys):
    from scripts.dataset_stats import main as stats_main

    root = trees.folder_tree(tmp_path / "folder", n=3, rgb=False)
    for image in (root / "images").iterdir():
        image.write_bytes(b"not a jpeg")
    table = "data.labels={classes: [{name: a}, {name: b}, {name: c}]}"
    assert stats_main(["data=folder", f"data.root={root}", table]) == 1
    line = check_one_line(capsys.readouterr().err, f"cannot read image '{root / 'images'}", "replace or remove it")
    assert re.search(r"frame_\d\.jpg'", line), line


def test_dataset_script_on_a_mistyped_choice_suggests_the_closest(capsys):
    from scripts.dataset_stats import main as stats_main

    assert stats_main(["data=camvd"]) == 1
    check_one_line(capsys.readouterr().err, "data=camvd", "did you mean data=camvid")


def test_a_broken_val_split_fails_in_the_sanity_check(tmp_path):
    """Two val batches run before training: a corrupt val mask stops the run before the first training step."""
    from tests.data import trees

    root = trees.camvid_tree(tmp_path / "camvid", n=4)
    (root / "valannot" / "0001TP_000000.png").write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    cfg = __import__("tests.conftest", fromlist=["compose_config"]).compose_config(
        "train",
        [
            "data=camvid",
            f"data.root={root}",
            "data.batch_size=2",
            "data.val_batch_size=1",
            "data.num_workers=0",
            "data.input.crop_size=[16,16]",
            "model.base_width=4",
            "model.depth=2",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "callbacks.progress_bar=null",
            "extras.print_config=false",
            "trainer.log_every_n_steps=1",
            "test=false",
        ],
        output_dir=run,
    )
    with pytest.raises(SegkitError, match=r"cannot read mask .*valannot/0001TP_000000.png"):
        train(cfg)
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("*.ckpt"))
    rows = read_csv_metrics(run / "csv" / "metrics.csv") if (run / "csv" / "metrics.csv").exists() else []
    assert not [r for r in rows if r.get("train/loss")]  # no training step ran


def test_a_train_split_smaller_than_a_batch_says_so(tiny_cfg):
    cfg = tiny_cfg(
        "data.dataset.num_samples={train: 3, val: 4, test: 4}", "data.batch_size=4", "trainer.fast_dev_run=true"
    )
    with pytest.raises(
        SegkitError,
        match=r"train split 'train' has 3 images, fewer than one batch of "
        r"data.batch_size=4.*lower data.batch_size",
    ):
        train(cfg)
