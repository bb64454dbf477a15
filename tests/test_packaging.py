"""segkit as a package: every source package and the whole of conf/ ship in it, and a non-editable install, run
from another folder, trains, evaluates and finds every shipped label table through the package."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def listed_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def test_setup_cfg_lists_every_package_and_maps_conf():
    found = {
        ".".join(init.parent.relative_to(ROOT / "src").parts)
        for init in (ROOT / "src").rglob("__init__.py")
        if "egg-info" not in str(init)
    }
    assert found | {"segkit.conf"} == listed_packages()
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert "segkit.conf = conf" in parser["options"]["package_dir"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps .`` of a copy of the checkout into a folder of its own (the dependencies come from
    the test's environment; segkit from that folder only)."""
    work = tmp_path_factory.mktemp("pkg")
    source = work / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "conf", source / "conf")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            ".",
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(source)  # nothing may read the copy any more
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline"}
    env.pop("SEGKIT_ROOT", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_non_editable_install_finds_its_configs_and_label_tables(installed, tmp_path):
    code = (
        "import json, segkit, segkit.files\n"
        "from segkit.data.labels import load_table, tables_dir\n"
        "names = sorted(p.stem for p in tables_dir().glob('*.yaml'))\n"
        "tables = {n: load_table(n).num_classes for n in names}\n"
        "print(json.dumps([segkit.__file__, str(segkit.files.conf_dir()), tables]))\n"
    )
    proc = run_installed(installed, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, conf, tables = json.loads(proc.stdout.strip().splitlines()[-1])
    assert module.startswith(str(installed)) and conf.startswith(str(installed))
    shipped = sorted(p.stem for p in (ROOT / "conf" / "data" / "labels").glob("*.yaml"))
    assert sorted(tables) == shipped and tables["camvid"] == 11 and tables["cityscapes_19"] == 19


def test_a_non_editable_install_trains_and_evaluates_from_another_folder(installed, tmp_path):
    bin_dir = installed / "bin"
    tiny = [
        "data.dataset.num_samples={train: 8, val: 4, test: 4}",
        "data.dataset.height=32",
        "data.dataset.width=32",
        "data.input.eval_size=[24,24]",
        "model.base_width=4",
        "model.depth=2",
        "trainer.max_epochs=1",
        "trainer.precision=32-true",
        "callbacks.progress_bar=null",
        "test=false",
    ]
    train = run_installed(installed, tmp_path, str(bin_dir / "segkit-train"), *tiny, "hydra.run.dir=run")
    assert train.returncode == 0, train.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed"
    evaluate = run_installed(
        installed, tmp_path, str(bin_dir / "segkit-eval"), "ckpt=run", "progress=false", "hydra.run.dir=eval"
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["mIoU"] == pytest.approx(result["metrics"]["val/mIoU"], abs=1e-6)
    assert "Resized(size=(24, 24))" in report["inference"]  # the net's input spec, from the checkpoint
