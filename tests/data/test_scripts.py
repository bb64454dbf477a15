"""The dataset tools run on a fixture tree: stats table, browse grid, loading speed."""

from __future__ import annotations

import cv2
import pytest
from scripts.browse_dataset import main as browse_main
from scripts.dataset_stats import main as stats_main
from scripts.loading_speed import main as speed_main

from tests.data import trees


def test_dataset_stats_prints_images_sizes_and_shares(tmp_path, capsys):
    root = trees.voc_tree(tmp_path)
    assert stats_main(["data=voc", f"data.root={root}", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "images: 2" in out and "24x16: 2" in out and "ignored pixels: 12.50%" in out  # 2 border rows of 16
    shares = {line.split()[1]: float(line.split()[3]) for line in out.splitlines() if line[:3].strip().isdigit()}
    assert (
        len(shares) == 21
        and abs(sum(shares.values()) - 100) < 0.1
        and shares["aeroplane"] == 0
        and shares["person"] > 0
    )


def test_missing_root_is_reported_not_raised(tmp_path, capsys):
    assert stats_main(["data=ade20k", f"data.root={tmp_path / 'nope'}"]) == 1
    assert "Expected layout" in capsys.readouterr().err


def test_browse_writes_a_grid_with_legend(tmp_path):
    root = trees.cityscapes_tree(tmp_path / "cs", n=3)
    out = tmp_path / "grid.png"
    assert browse_main(["data=cityscapes", f"data.root={root}", "--out", str(out), "--n", "3", "--cols", "2"]) == 0
    grid = cv2.imread(str(out))
    assert grid.shape[1] == 2 * 320 and grid.shape[0] > 2 * 213  # two rows of 320x213 tiles plus the legend


def test_loading_speed_reports_images_per_second(capsys):
    assert speed_main(["--pipelines", "camvid", "--images", "4", "--epochs", "1", "--workers", "0"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == "camvid" and float(row[-1]) > 0


def test_compare_twins_prints_a_ratio_table(capsys):
    """The torchvision pair needs no optional package: a tiny shape, one round, same parameter counts."""
    from scripts.compare_twins import main as twins_main

    argv = ["--pairs", "deeplabv3_resnet50", "--height", "32", "--width", "32", "--rounds", "1", "--steps", "1"]
    assert twins_main(argv + ["--eval-steps", "1", "--train-batch", "2"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "deeplabv3_resnet50" and row[3].strip() == "42.00 / 42.00"
    assert float(row[5]) > 0 and float(row[7]) > 0


def test_check_trunks_reports_one_line_per_trunk(capsys):
    """The big-trunk script on the smallest RegNet: the step's line, then the tally; an unknown name is refused."""
    from scripts.check_trunks import main as check_trunks_main

    assert check_trunks_main(["regnet_x_400mf", "--size", "32", "--no-export"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("regnet_x_400mf") and "step" in lines[0] and lines[-1] == "1/1 trunks passed"
    with pytest.raises(SystemExit):
        check_trunks_main(["resnet5"])
    assert "unknown trunks ['resnet5']" in capsys.readouterr().err


def test_compare_twins_names_an_unknown_pair(capsys):
    from scripts.compare_twins import main as twins_main

    with pytest.raises(SystemExit):
        twins_main(["--pairs", "unet"])
    assert "unknown pair(s) unet; choose from deeplabv3_resnet50" in capsys.readouterr().err


def test_camvid_quick_verdict_follows_precision_and_threads():
    """0.58 for a bf16 run on 2 threads, else 0.50 on 2 threads and 0.45 on one; thin classes named."""
    from scripts.camvid_quick import verdict

    ious = {"road": 0.9, "pole": 0.04, "sign_symbol": 0.2}
    assert "mIoU >= 0.58 (precision bf16-mixed, 2 threads): NOT met (0.574)" in verdict(0.574, ious, 2, "bf16-mixed")
    assert "mIoU >= 0.58 (precision bf16-mixed, 2 threads): met (0.590)" in verdict(0.590, ious, 2, "bf16-mixed")
    assert "mIoU >= 0.5 (precision 32-true, 2 threads): met" in verdict(0.574, ious, 2, "32-true")
    assert "mIoU >= 0.45 (precision bf16-mixed, 1 thread): met" in verdict(0.46, ious, 1, "bf16-mixed")
    assert "mIoU >= 0.5 (precision 32-true, 2 threads): NOT met (0.460)" in verdict(0.46, ious, 2, "32-true")
    assert verdict(0.6, ious, 2, "bf16-mixed").endswith("no class below 0.1: NOT met (pole)")
    assert verdict(0.6, {"road": 0.9}, 2, "bf16-mixed").endswith("no class below 0.1: met")
    assert verdict(0.6, {}, 2, "bf16-mixed").endswith("no class below 0.1: NOT met (no per-class IoU)")


def test_step_breakdown_times_each_part_of_a_step(capsys):
    """segkit's choices and the ones before them (fused attention, Lightning's EMA, torch's optimiser loop), on
    SegFormer-B0 and synthetic images: one row of positive times each."""
    from scripts.step_breakdown import main as breakdown_main

    base = ["model=segformer_b0", "optimizer=adamw", "callbacks=ema", "trainer.precision=32-true"]
    base += ["data.dataset.height=32", "data.dataset.width=48", "data.batch_size=2", "--steps", "2", "--warmup", "1"]
    assert breakdown_main(base) == 0
    assert breakdown_main(base + ["optimizer.fused=false", "--fused-attention", "--lightning-ema"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:3].strip("| ").replace(".", "").isdigit()]
    assert len(rows) == 2
    for row in rows:
        values = [float(v) for v in row.strip("| ").split(" | ")]
        assert len(values) == 8 and all(v >= 0 for v in values) and values[-2] > 0  # ms are rounded to 0.1
    assert breakdown_main(["trainer.precision=16-mixed", "--steps", "1"]) == 1
