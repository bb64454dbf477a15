"""Every command the README and docs/ show is covered, and every relative link in them resolves.

``COVERAGE`` maps each command of a fenced ``bash`` block to how it is checked:

- ``Run``: a shrunk real run (tiny sizes) of the command, in-process, through the task its entry point runs;
- ``Compose``: composition only, as ``python src/<entry>.py <args> --cfg job`` would do, for commands that need real
  data, a download, a GPU or a cluster;
- ``Covered``: an existing test runs the command (its source must hold the given strings); its config is composed
  here too where it has one;
- ``NotRunnable``: installs, uploads or the test suite itself, with the reason.

A command shown in the docs but missing from ``COVERAGE`` fails, and so does a row whose command is no longer shown.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, TINY, compose_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Run:
    """A shrunk real run: the command's overrides plus ``shrink``, run through its entry point's task."""

    shrink: tuple[str, ...] = ()


@dataclass(frozen=True)
class Compose:
    """Composition only: the command's config must compose (``--cfg job``); ``why`` it cannot run here."""

    why: str


@dataclass(frozen=True)
class Covered:
    """``test`` (``tests/<file>.py::<name>``) runs the command; its source holds each of ``needles``."""

    test: str
    needles: tuple[str, ...]


@dataclass(frozen=True)
class NotRunnable:
    why: str


# The run the other real runs use: eval, predict and export read its checkpoint.
TRAIN_RUN = "python src/train.py debug=limit"
QUIET = ("extras.print_config=false", "progress=false")

COVERAGE: dict[str, Run | Compose | Covered | NotRunnable] = {
    # --- README: what segkit is
    "python src/train.py model=fcn8_vgg data=cityscapes data.root=/data/cityscapes": Compose(
        "needs Cityscapes and the 528 MB VGG16 ImageNet download"
    ),
    "python src/train.py -m optimizer=adam,sgd,rmsprop": Covered(
        "tests/test_train.py::test_multirun_over_optimizers",
        ("-m", "optimizer=adam,sgd,rmsprop"),
    ),
    # --- install
    "make train": Compose("installs .venv, then trains for ~95 s: composed as the src/train.py it runs"),
    "make test": NotRunnable("the whole test suite, this file included"),
    'make train ARGS="model=enet trainer.max_epochs=4"': Compose("make installs first: composed as src/train.py $ARGS"),
    # --- train on your data
    "python src/train.py data=camvid data.root=/path/to/camvid model=unet": Compose("needs CamVid at that path"),
    "python src/train.py data=folder data.root=/path/to/folder data.labels=my_table.yaml": Compose(
        "needs your folder and label table"
    ),
    # --- evaluate, predict, export, benchmark
    "python src/eval.py ckpt=logs/train/runs/<run>/checkpoints/last.ckpt": Run(QUIET),
    "python src/eval.py run_dir=logs/train/runs/<run> split=test save_predictions=true": Covered(
        "tests/test_eval_predict.py::test_eval_on_test_split_with_tta_and_saved_predictions",
        ("run_dir=", "split=test", "save_predictions=true"),
    ),
    "python src/eval.py ckpt=logs/train/runs/<run> inference=slide device=cuda precision=bf16": Compose(
        "needs a CUDA GPU"
    ),
    "python src/predict.py ckpt=PATH input=demo/ output=out/": Run(QUIET),
    "python src/export.py ckpt=PATH format=onnx output=model.onnx": Run(("height=64", "width=64")),
    "python src/benchmark.py 'models=[unet,enet]' height=360 width=480 device=cpu": Covered(
        "tests/test_benchmark_export.py::test_benchmark_two_small_models_writes_a_markdown_table",
        ("models=[unet_small,enet]", "device=cpu", "benchmark_from_config"),
    ),
    # --- sweeps
    "python src/train.py hparams_search=optimizer_sweep": Covered(
        "tests/test_sweeps.py::test_optimizer_sweep_2x2_and_summary_table", ("hparams_search=optimizer_sweep",)
    ),
    "python src/train.py hparams_search=optuna hydra.sweeper.n_trials=30": Covered(
        "tests/test_sweeps.py::test_optuna_sweep_maximises_val_miou",
        ("hparams_search=optuna", "hydra.sweeper.n_trials="),
    ),
    "python scripts/summarize_runs.py logs/train/multiruns/<time>": Covered(
        "tests/test_sweeps.py::test_optimizer_sweep_2x2_and_summary_table", ("summarize_runs.py",)
    ),
    # --- W&B
    "wandb login": NotRunnable("asks for a W&B account's API key and reaches wandb.ai"),
    "python src/train.py logger=wandb": Compose("online W&B needs a login and the network"),
    "WANDB_MODE=offline python src/train.py logger=wandb": Covered(
        "tests/test_sweeps.py::test_one_wandb_run_per_sweep_job_and_resume_continues_it",
        ('"WANDB_MODE": "offline"', "logger=wandb"),
    ),
    "wandb sync logs/train/runs/<run>/wandb/offline-run-*": NotRunnable("uploads to wandb.ai"),
    # --- cluster (README and docs/cluster.md)
    "sbatch scripts/sbatch_train.sh experiment=cityscapes_unet data.root=/data/cityscapes": Covered(
        "tests/test_distributed.py::test_sbatch_template_starts_one_task_per_gpu_on_two_nodes",
        ("sbatch_train.sh", "trainer=ddp"),
    ),
    "torchrun --standalone --nproc_per_node=4 src/train.py trainer=ddp": Compose("needs 4 GPUs"),
    "torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=<first node>:29500 "
    "--rdzv-id=<an id unique to this run> src/train.py trainer=ddp trainer.num_nodes=2": Compose(
        "needs 2 nodes of 4 GPUs"
    ),
    "torchrun --nproc_per_node=2 src/train.py trainer=ddp_cpu": Covered(
        "tests/test_distributed.py::test_torchrun_two_processes_match_one_process_and_rank_0_writes",
        ("--nproc_per_node=2", "trainer=ddp_cpu"),
    ),
    "python src/train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=4 "
    "trainer=ddp optimizer=adam,sgd": Compose(
        "needs a SLURM cluster; tests/test_distributed.py::test_slurm_launcher_config_submits_a_two_node_ddp_job checks "
        "the sbatch script it submits"
    ),
    "python src/train.py hparams_search=optuna hydra/launcher=slurm hydra.launcher.partition=gpu "
    "hydra.sweeper.n_jobs=4": Compose(
        "needs a SLURM cluster; tests/test_distributed.py::test_optuna_sweep_through_submitit_runs_two_ddp_trials_at_once "
        "runs the same sweep through submitit_local"
    ),
    # --- precision
    "python src/train.py trainer.precision=32-true": Compose(
        "a full 16-epoch run; precision is tested in test_precision"
    ),
    "python src/benchmark.py 'models=[unet_small]' precision=auto": Compose("times at 512x1024"),
    # --- runs that survive
    "python src/train.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt": Covered(
        "tests/test_resume.py::test_resume_after_kill_9_continues_the_same_run_exactly", ("ckpt_path=",)
    ),
    # --- the debug group
    "python src/train.py debug=fdr": Covered("tests/test_train.py::test_fast_dev_run_on_odd_sizes", ('"debug=fdr"',)),
    TRAIN_RUN: Run(tuple(TINY)),
    "python src/train.py debug=overfit": Compose("30 epochs"),
    # --- docs/data.md
    "python scripts/dataset_stats.py data=camvid data.root=/path/to/camvid": Covered(
        "tests/data/test_scripts.py::test_dataset_stats_prints_images_sizes_and_shares", ("stats_main", "data.root=")
    ),
    "python scripts/browse_dataset.py data=camvid data.root=/path/to/camvid --out camvid.png": Covered(
        "tests/data/test_scripts.py::test_browse_writes_a_grid_with_legend", ("browse_main", "--out")
    ),
    "python scripts/step_breakdown.py experiment=camvid_quick data.root=../shared/data/camvid --steps 60": Covered(
        "tests/data/test_scripts.py::test_step_breakdown_times_each_part_of_a_step", ("breakdown_main",)
    ),
    "python scripts/loading_speed.py": Covered(
        "tests/data/test_scripts.py::test_loading_speed_reports_images_per_second", ("speed_main",)
    ),
    # --- docs/models.md
    "python src/benchmark.py 'models=[all]' flops_only=true height=512 width=1024": Covered(
        "tests/test_benchmark_export.py::test_flops_only_mode_and_unknown_model", ("flops_only=true",)
    ),
    "python src/train.py model=pspnet_resnet50 aux_weights={aux:0.2}": Compose("downloads ResNet-50 ImageNet weights"),
    "python src/train.py model=upernet_convnext_tiny model.backbone=swin_s": Compose(
        "downloads Swin-S ImageNet weights"
    ),
    "python src/train.py model=fpn_resnet50 model.backbone=efficientnet_b3": Compose(
        "downloads EfficientNet-B3 ImageNet weights"
    ),
    "python scripts/check_trunks.py swin_b convnext_large": Covered(
        "tests/data/test_scripts.py::test_check_trunks_reports_one_line_per_trunk", ("check_trunks_main",)
    ),
    "python src/train.py model=pspnet_resnet50 ++aux_weights.aux=0.2": Compose("downloads ResNet-50 ImageNet weights"),
    # --- docs/training.md
    "python src/train.py hparams_search=optuna hydra.sweeper.storage=sqlite:///optuna.db": Covered(
        "tests/test_sweeps.py::test_optuna_sweep_prunes_a_bad_trial_and_resumes_after_kill_9",
        ("hydra.sweeper.storage=", "SIGKILL"),
    ),
    # --- docs/measurements.md
    'pip install -e ".[compare]"': NotRunnable("installs segmentation-models-pytorch from the network"),
    "python scripts/compare_twins.py": Covered(
        "tests/data/test_scripts.py::test_compare_twins_prints_a_ratio_table", ("twins_main",)
    ),
}

ENTRY_POINTS = {f"src/{name}.py": name for name in ("train", "eval", "predict", "export", "benchmark")}
# scripts whose arguments after the options are overrides of conf/train.yaml, and what each adds to them
TRAIN_SCRIPTS = {
    "scripts/dataset_stats.py": [],
    "scripts/browse_dataset.py": [],
    "scripts/camvid_quick.py": ["experiment=camvid_quick"],
    "scripts/sbatch_train.sh": ["trainer=ddp"],
}


# --- reading the docs -------------------------------------------------------------------------------------------


def _outside_quotes_comment(line: str) -> int:
    """Index of a shell comment's ``#`` (after whitespace, outside quotes), or the line's length."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def fenced_commands(path: Path) -> list[str]:
    """The command lines of ``path``'s bash blocks: continuations joined, comments dropped, spaces collapsed."""
    commands, in_block, shell, carried = [], False, False, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("```"):
            in_block, shell = (not in_block), line[3:].strip() in ("bash", "sh", "shell", "console")
            continue
        if not (in_block and shell):
            continue
        line = f"{carried} {line}" if carried else line
        if line.endswith("\\"):
            carried = line[:-1].strip()
            continue
        carried = ""
        command = " ".join(line[: _outside_quotes_comment(line)].split())
        if command:
            commands.append(command)
    return commands


def shown_commands() -> dict[str, list[str]]:
    """Command -> the docs pages that show it."""
    shown: dict[str, list[str]] = {}
    for doc in DOCS:
        for command in fenced_commands(doc):
            shown.setdefault(command, []).append(doc.name if doc.parent == ROOT else f"{doc.parent.name}/{doc.name}")
    return shown


def hydra_call(command: str) -> tuple[str, list[str], bool] | None:
    """``(entry config, overrides, multirun)`` of a command that composes a segkit config, else None. Placeholders
    (``<run>``) become a plain word; ``VAR=value`` prefixes and script options (``--out x``) are dropped."""
    words = shlex.split(re.sub(r"<[^<>]+>", "placeholder", command))
    while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    if words[:2] == ["make", "train"]:
        args = next((w.split("=", 1)[1] for w in words[2:] if w.startswith("ARGS=")), "")
        return "train", shlex.split(args), False
    script = next((i for i, w in enumerate(words) if w.endswith((".py", ".sh"))), None)
    if script is None:
        return None
    path, rest = words[script], words[script + 1 :]
    overrides = [w for w in rest if "=" in w and not w.startswith("-")]
    multirun = "-m" in rest or "--multirun" in rest
    if path in ENTRY_POINTS:
        return ENTRY_POINTS[path], overrides, multirun
    if path in TRAIN_SCRIPTS:
        return "train", [*TRAIN_SCRIPTS[path], *overrides], False
    return None


def compose_jobs(config: str, overrides: list[str], multirun: bool) -> int:
    """Compose the config of every job the command starts (one, or one per sweep combination); returns the count."""
    jobs = [overrides]
    if multirun:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    for job in jobs:
        compose_config(config, job, return_hydra_config=True)
    return len(jobs)


# --- the checks -------------------------------------------------------------------------------------------------


def test_every_shown_command_is_covered_and_every_row_is_shown():
    shown = shown_commands()
    missing = {c: pages for c, pages in shown.items() if c not in COVERAGE}
    stale = [c for c in COVERAGE if c not in shown]
    assert not missing, f"add these commands to COVERAGE in {Path(__file__).name}: {missing}"
    assert not stale, f"these COVERAGE rows are no longer in README.md or docs/: {stale}"
    assert sum(isinstance(how, Run) for how in COVERAGE.values()) <= 4  # real runs are few: the suite stays fast


def test_extraction_joins_continuations_and_drops_comments(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\npython src/train.py a=1 \\\n    b='x # y'   # note\n# a comment\n```\n"
        "```\npython src/not_a_bash_block.py\n```\n  ```bash\n  make test\n  ```\n"
    )
    assert fenced_commands(page) == ["python src/train.py a=1 b='x # y'", "make test"]
    assert hydra_call("WANDB_MODE=offline python src/train.py -m x=1,2 --out f.png") == ("train", ["x=1,2"], True)
    assert hydra_call('make train ARGS="model=enet a=1"') == ("train", ["model=enet", "a=1"], False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """The docs' ``python src/train.py debug=limit``, shrunk: the run eval, predict and export read."""
    run = tmp_path_factory.mktemp("docs_train_run")
    config, overrides, _ = hydra_call(TRAIN_RUN)
    from segkit.tasks.train import train

    cfg = compose_config(config, [*overrides, *COVERAGE[TRAIN_RUN].shrink], output_dir=run)
    metrics = train(cfg)
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return {"run": run, "last": run / "checkpoints" / "last.ckpt", "metrics": metrics}


def _real_run(command: str, how: Run, trained: dict, tmp_path: Path, monkeypatch) -> None:
    if command == TRAIN_RUN:
        assert 0.0 <= trained["metrics"]["val/mIoU"] <= 1.0 and trained["last"].is_file()
        return
    monkeypatch.chdir(tmp_path)  # relative outputs (out/, model.onnx) land here
    command = command.replace("logs/train/runs/<run>", str(trained["run"])).replace("=PATH", f"={trained['last']}")
    config, overrides, _ = hydra_call(command)
    cfg = compose_config(config, [*overrides, *how.shrink], output_dir=tmp_path / "run")
    if config == "eval":
        from segkit.tasks.evaluate import evaluate_from_config

        metrics = evaluate_from_config(cfg)  # that eval reproduces training's scores is test_eval_predict's
        assert 0.0 <= metrics["val/mIoU"] <= 1.0 and (tmp_path / "run" / "metrics.json").is_file()
    elif config == "predict":
        import cv2

        from segkit.tasks.predict import predict_from_config

        (tmp_path / "demo").mkdir()
        rng = np.random.default_rng(0)
        for name, size in {"a.png": (40, 56), "b.jpg": (33, 45)}.items():
            cv2.imwrite(str(tmp_path / "demo" / name), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        predict_from_config(cfg)
        for stem, size in {"a": (40, 56), "b": (33, 45)}.items():
            assert cv2.imread(str(tmp_path / "out" / f"{stem}_overlay.png")).shape[:2] == size
    elif config == "export":
        pytest.importorskip("onnxruntime", reason="the ONNX check needs the export extra")
        from segkit.tasks.export import export_from_config

        metrics = export_from_config(cfg)
        assert (tmp_path / "model.onnx").is_file() and metrics["onnx/max_abs_diff"] < 1e-4
    else:
        raise AssertionError(f"no real run is wired for {config}: compose it or cover it by a test")


def _covering_test_source(test: str) -> str:
    file, _, name = test.partition("::")
    path = ROOT / file
    assert path.is_file(), f"{file} does not exist"
    tree = ast.parse(path.read_text())
    found = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)
    assert found is not None, f"{file} has no test {name}"
    return ast.get_source_segment(path.read_text(), found) or ""


@pytest.mark.parametrize("command", list(COVERAGE), ids=[re.sub(r"[^\w.=/-]+", "_", c)[:80] for c in COVERAGE])
def test_command_is_covered(command, request, tmp_path, monkeypatch):
    how = COVERAGE[command]
    try:
        if isinstance(how, NotRunnable):
            assert how.why
            return
        if command.startswith("make train"):  # make train runs src/train.py with ARGS
            assert "src/train.py $(ARGS)" in (ROOT / "Makefile").read_text()
        if isinstance(how, Covered):
            source = _covering_test_source(how.test)
            for needle in how.needles:
                assert needle in source, f"{how.test} does not hold {needle!r}"
        if isinstance(how, Run):
            _real_run(command, how, request.getfixturevalue("trained"), tmp_path, monkeypatch)
            return
        call = hydra_call(command)
        if isinstance(how, Compose):
            assert call is not None, f"composition only, but no segkit config found in: {command}"
        if call is not None:
            assert compose_jobs(*call) >= 1
    except Exception:
        raise


# --- links ------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where brackets are not links."""
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    for line in _prose_lines(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def _prose_lines(path: Path) -> list[str]:
    lines, in_block = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
        elif not in_block:
            lines.append(line)
    return lines


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not broken, f"{doc.name}: broken links: {broken}"


def test_anchor_slugs_follow_github():
    assert "evaluate-predict-export-benchmark" in anchors(ROOT / "README.md")
    assert "top-level-keys-of-srctrainpy" in anchors(ROOT / "docs" / "training.md")
