"""ENet and median-frequency class weights against a hand computation, the cache, and the loss wiring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segkit import SegkitError
from segkit.build import build_datamodule
from segkit.data import class_weights as cw
from segkit.data.class_weights import cached_counts
from segkit.data.labels import load_table

# Three 2x2 masks over 3 classes (255 = ignore):
MASKS = [np.array([[0, 0], [0, 1]]), np.array([[0, 255], [255, 255]]), np.array([[1, 1], [1, 1]])]


class Masks:
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return np.zeros((2, 2, 3), np.uint8), self.masks[i]


def test_weights_match_a_hand_computation():
    counts = cw.count_pixels(Masks(MASKS), num_classes=3)
    # class 0: 3 + 1 = 4 px, class 1: 1 + 4 = 5 px, class 2: 0 px; 9 labelled pixels
    assert counts.pixels.tolist() == [4, 5, 0]
    # labelled pixels of the images holding each class: 0 in images 1, 2 (4 + 1); 1 in images 1, 3 (4 + 4)
    assert counts.image_pixels.tolist() == [5, 8, 0]
    enet = cw.enet_weights(counts)
    assert enet == pytest.approx([1 / math.log(1.02 + 4 / 9), 1 / math.log(1.02 + 5 / 9), 1 / math.log(1.02)])
    f0, f1 = 4 / 5, 5 / 8
    median = np.median([f0, f1])
    assert cw.median_freq_weights(counts) == pytest.approx([median / f0, median / f1, 0.0])


def test_median_frequency_follows_eigen_and_fergus():
    """Eigen & Fergus (2015): freq(c) = pixels of c / total labelled pixels of the images where c is present,
    weight = median(freq) / freq(c) - written out here per class over a tiny label set, ignore pixels excluded."""
    masks = [
        np.array([[0, 0, 0], [0, 1, 1]]),  # 6 labelled pixels: classes 0, 1
        np.array([[2, 2, 255], [255, 255, 255]]),  # 2 labelled pixels: class 2
        np.array([[0, 3, 3], [3, 3, 3]]),  # 6 labelled pixels: classes 0, 3
        np.array([[1, 1, 1], [1, 1, 0]]),  # 6 labelled pixels: classes 1, 0
    ]
    freq = {}
    for c in range(5):
        holding = [m[m != 255] for m in masks if (m == c).any()]
        if holding:
            freq[c] = sum(int((m == c).sum()) for m in holding) / sum(m.size for m in holding)
    # class 0: 4 + 1 + 1 = 6 px over 6 + 6 + 6; class 1: 2 + 5 = 7 over 6 + 6; class 2: 2 over 2; class 3: 5 over 6
    assert freq == pytest.approx({0: 6 / 18, 1: 7 / 12, 2: 1.0, 3: 5 / 6})
    median = float(np.median(list(freq.values())))  # (7/12 + 5/6) / 2 over the four present classes
    expected = [median / freq[c] if c in freq else 0.0 for c in range(5)]  # class 4 is absent: weight 0
    weights = cw.median_freq_weights(cw.count_pixels(Masks(masks), num_classes=5))
    assert weights == pytest.approx(expected)
    # not the split's share: with the 20 labelled pixels as every class's denominator, class 2 would weigh most
    share = cw.count_pixels(Masks(masks), num_classes=5).share
    assert np.argmax(weights) == 0 and np.argmax(np.where(share > 0, 1 / np.maximum(share, 1e-9), 0)) == 2


def test_counts_are_cached_by_dataset_split_and_table(tmp_path):
    table = load_table({"name": "t", "classes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]})
    first = cw.cached_counts(Masks(MASKS), table, "toy|/x|train", cache_dir=tmp_path)
    files = list((tmp_path / "class_counts").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("toy-t-")
    blank = Masks([np.zeros((2, 2), np.int64)] * 3)
    again = cw.cached_counts(blank, table, "toy|/x|train", cache_dir=tmp_path)  # read back, not counted
    assert again.pixels.tolist() == first.pixels.tolist()
    merged = load_table({"name": "t", "classes": [{"name": "a"}, {"name": "bc", "ids": [1, 2]}]})
    cw.cached_counts(Masks(MASKS), merged, "toy|/x|train", cache_dir=tmp_path)
    cw.cached_counts(Masks(MASKS), table, "toy|/x|val", cache_dir=tmp_path)
    assert len(list((tmp_path / "class_counts").glob("*.json"))) == 3


def test_loss_takes_named_weights_through_build_module(tiny_cfg, tmp_path, monkeypatch):
    from segkit.build import build_datamodule, build_module

    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_cfg("loss.class_weights=median_freq", "data.dataset.num_samples={train: 4, val: 2, test: 2}")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    expected = cw.median_freq_weights(cw.count_pixels(dm.raw_dataset("train"), dm.num_classes))
    assert module.loss_fn.weight.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    with pytest.raises(SegkitError, match="loss.class_weights='inverse'; use one of"):
        cw.class_weights(dm, "inverse")


def test_camvid_weights_and_stats(camvid_root, tmp_path, capsys):
    """The stats script and the weights on real CamVid (a 20-image slice keeps it fast)."""
    from scripts.dataset_stats import main as stats_main

    from segkit.data.reports import compose_datamodule

    assert stats_main(["data=camvid", f"data.root={camvid_root}", "--limit", "20"]) == 0
    report = capsys.readouterr().out
    assert "images: 367 (statistics over the first 20)" in report and "480x360: 20" in report
    assert "bicyclist" in report and "med_freq" in report
    dm = compose_datamodule(["data=camvid", f"data.root={camvid_root}"])
    train = dm.raw_dataset("train")
    train.pairs = train.pairs[:20]
    weights = cw.class_weights(dm, "median_freq", cache_dir=tmp_path)
    assert len(weights) == 11 and all(w > 0 for w in weights)
    names = dm.class_names
    assert weights[names.index("road")] < 1 < weights[names.index("pole")]  # frequent classes below 1, rare above


def test_named_weights_resolve_inside_a_weighted_sum(tiny_cfg, tmp_path, monkeypatch):
    """`loss=ce_dice loss.losses.ce.class_weights=enet`: the CE term of the sum gets the counted weights."""
    from segkit.build import build_datamodule, build_module

    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_cfg(
        "loss=ce_dice", "loss.losses.ce.class_weights=enet", "data.dataset.num_samples={train: 4, val: 2, test: 2}"
    )
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    expected = cw.enet_weights(cw.count_pixels(dm.raw_dataset("train"), dm.num_classes))
    ce = next(term for term in module.loss_fn.modules() if type(term).__name__ == "CrossEntropyLoss")
    assert ce.weight.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert cfg.loss.losses.ce.class_weights == "enet"  # the run's config keeps the name
    listed = tiny_cfg("loss=ce_lovasz", "+loss.losses.0.class_weights=enet")  # the list form of a sum
    ce = next(t for t in build_module(listed, dm).loss_fn.modules() if type(t).__name__ == "CrossEntropyLoss")
    assert ce.weight.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    with pytest.raises(SegkitError, match=r"^loss.losses.ce.class_weights='inverse'; use one of \['enet'"):
        build_module(tiny_cfg("loss=ce_dice", "loss.losses.ce.class_weights=inverse"), dm)


def test_enet_constant_from_a_mapping(tiny_cfg, tmp_path, monkeypatch):
    """`class_weights: {method: enet, c: 1.1}` flattens the ENet weights; bad mappings fail naming the key."""
    from segkit.build import build_datamodule, build_module

    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_cfg(
        "loss=ce_dice",
        "loss.losses.ce.class_weights={method: enet, c: 1.1}",
        "data.dataset.num_samples={train: 4, val: 2, test: 2}",
    )
    dm = build_datamodule(cfg)
    counts = cw.count_pixels(dm.raw_dataset("train"), dm.num_classes)
    ce = next(t for t in build_module(cfg, dm).loss_fn.modules() if type(t).__name__ == "CrossEntropyLoss")
    assert ce.weight.tolist() == pytest.approx(cw.enet_weights(counts, 1.1).tolist(), rel=1e-6)
    flat, sharp = cw.enet_weights(counts, 1.1), cw.enet_weights(counts)
    assert flat.max() / flat.min() < sharp.max() / sharp.min()
    with pytest.raises(SegkitError, match=r"^loss.losses.ce.class_weights has keys \['power'\]"):
        build_module(tiny_cfg("loss=ce_dice", "loss.losses.ce.class_weights={method: enet, power: 2}"), dm)
    with pytest.raises(SegkitError, match=r"c=1.0; ENet weights need c > 1"):
        build_module(tiny_cfg("loss=ce_dice", "loss.losses.ce.class_weights={method: enet, c: 1.0}"), dm)


def test_a_truncated_class_weight_cache_is_rebuilt(tiny_cfg, tmp_path):
    datamodule = build_datamodule(tiny_cfg())
    dataset = datamodule.raw_dataset("train")
    fresh = cached_counts(dataset, datamodule.labels, "synthetic-train", cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache" / "class_counts").glob("*.json")
    cache.write_text(cache.read_text()[: len(cache.read_text()) // 2])  # a write cut short
    again = cached_counts(dataset, datamodule.labels, "synthetic-train", cache_dir=tmp_path / "cache")
    assert again.pixels.tolist() == fresh.pixels.tolist() and json.loads(cache.read_text())["images"] == 16
    assert not list(cache.parent.glob(".*.tmp"))  # the rewrite went through a temporary file
