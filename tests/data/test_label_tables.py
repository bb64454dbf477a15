"""Label tables as data: the shipped Cityscapes/ADE20K/VOC/SUN RGB-D tables, merges, colours, unknown values."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from segkit import SegkitError
from segkit.data.datasets.cityscapes import benchmark_name, write_label_ids
from segkit.data.labels import LabelTable, load_table

# The official cityscapesScripts table, written out independently of the package: labelId -> (trainId, categoryId).
OFFICIAL = {
    0: (255, 0),
    1: (255, 0),
    2: (255, 0),
    3: (255, 0),
    4: (255, 0),
    5: (255, 0),
    6: (255, 0),
    7: (0, 1),
    8: (1, 1),
    9: (255, 1),
    10: (255, 1),
    11: (2, 2),
    12: (3, 2),
    13: (4, 2),
    14: (255, 2),
    15: (255, 2),
    16: (255, 2),
    17: (5, 3),
    18: (255, 3),
    19: (6, 3),
    20: (7, 3),
    21: (8, 4),
    22: (9, 4),
    23: (10, 5),
    24: (11, 6),
    25: (12, 6),
    26: (13, 7),
    27: (14, 7),
    28: (15, 7),
    29: (255, 7),
    30: (255, 7),
    31: (16, 7),
    32: (17, 7),
    33: (18, 7),
}
# cityscapesScripts labels.py, column ignoreInEval: the labelIds its category scores leave out.
IGNORE_IN_EVAL = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}
ALL_IDS = np.arange(34, dtype=np.uint8)[None, :]
VEHICLE = ["car", "truck", "bus", "train", "motorcycle", "bicycle", "caravan", "trailer"]


def test_cityscapes_19_maps_every_label_id_to_its_official_train_id():
    table = load_table("cityscapes_19")
    assert table.num_classes == 19 and table.names[0] == "road" and table.names[18] == "bicycle"
    assert table.remap(ALL_IDS)[0].tolist() == [OFFICIAL[i][0] for i in range(34)]


def test_cityscapes_categories_is_the_official_category_table():
    official = load_table("cityscapes_categories")
    assert official.names == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    expected = [255 if i in IGNORE_IN_EVAL else OFFICIAL[i][1] - 1 for i in range(34)]
    assert official.remap(ALL_IDS)[0].tolist() == expected


def _official_category_iou(gt: np.ndarray, pred: np.ndarray) -> list[float]:
    """cityscapesScripts getIouScoreForCategory, written out: a confusion matrix over labelIds, each category
    scored over its labels that are not ignoreInEval, against the other evaluated labels only."""
    conf = np.zeros((34, 34), dtype=np.int64)
    np.add.at(conf, (gt.ravel(), pred.ravel()), 1)
    evaluated = [i for i in range(34) if i not in IGNORE_IN_EVAL]
    ious = []
    for category in range(1, 8):
        inside = [i for i in evaluated if OFFICIAL[i][1] == category]
        outside = [i for i in evaluated if OFFICIAL[i][1] != category]
        tp = conf[np.ix_(inside, inside)].sum()
        fp = conf[np.ix_(outside, inside)].sum()
        fn = conf[np.ix_(inside, outside)].sum()
        ious.append(tp / (tp + fp + fn))
    return ious


def test_cityscapes_categories_scores_equal_the_official_category_iou():
    import torch

    from segkit.metrics import SegmentationMetrics

    table = load_table("cityscapes_categories")
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 34, size=(4, 40, 50))
    evaluated = np.array([i for i in range(34) if i not in IGNORE_IN_EVAL])
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.choice(evaluated, size=gt.shape))
    pred = np.where(np.isin(pred, evaluated), pred, rng.choice(evaluated, size=gt.shape))  # a net predicts classes

    def remap(t, masks):
        return torch.from_numpy(np.stack([t.remap(m) for m in masks]))

    metrics = SegmentationMetrics(table.num_classes, table.ignore_index)
    metrics.update(remap(table, pred), remap(table, gt))
    ours = metrics.scores()["IoU"].tolist()
    assert ours == pytest.approx(_official_category_iou(gt, pred), abs=1e-12)
    merged = load_table("cityscapes_categories_merge_all")  # the merge-everything variant scores otherwise
    metrics = SegmentationMetrics(merged.num_classes, merged.ignore_index)
    metrics.update(remap(merged, pred), remap(merged, gt))
    assert metrics.scores()["IoU"].tolist() != pytest.approx(_official_category_iou(gt, pred), abs=1e-3)


def test_cityscapes_categories_merge_all_maps_every_label_id_to_its_category():
    flat = load_table("cityscapes_categories_merge_all")
    assert flat.names == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    assert flat.remap(ALL_IDS)[0].tolist() == [OFFICIAL[i][1] - 1 if OFFICIAL[i][1] else 255 for i in range(34)]
    void = load_table("cityscapes_categories_void")
    assert void.num_classes == 8 and void.names[0] == "void"
    assert void.remap(ALL_IDS)[0].tolist() == [OFFICIAL[i][1] for i in range(34)]


def test_person_vs_rest_table():
    table = load_table("cityscapes_person")
    assert table.names == ("rest", "person")
    out = table.remap(ALL_IDS)[0].tolist()
    assert out[24] == out[25] == 1 and out[:4] == [255] * 4
    assert all(out[i] == 0 for i in range(4, 34) if i not in (24, 25))


def test_categories_table_equals_cityscapes_19_merged_by_name():
    merge = {
        "flat": ["road", "sidewalk", "parking", "rail_track"],
        "construction": ["building", "wall", "fence", "guard_rail", "bridge", "tunnel"],
        "object": ["pole", "polegroup", "traffic_light", "traffic_sign"],
        "nature": ["vegetation", "terrain"],
        "sky": ["sky"],
        "human": ["person", "rider"],
        "vehicle": VEHICLE,
    }
    merged = load_table({"base": "cityscapes_19", "merge": merge})
    categories = load_table("cityscapes_categories_merge_all")
    assert merged.names == categories.names
    assert np.array_equal(merged.remap(ALL_IDS), categories.remap(ALL_IDS))


def test_vehicle_merge_in_an_override_pulls_ignored_classes_in():
    table = load_table({"base": "cityscapes_19", "merge": {"vehicle": VEHICLE}})
    assert table.num_classes == 14 and table.names[13] == "vehicle"
    out = table.remap(ALL_IDS)[0]
    assert set(out[[26, 27, 28, 29, 30, 31, 32, 33]].tolist()) == {13}
    assert out[24] == 11 and out[0] == 255 and table.colors[13] == (0, 0, 142)


def test_merge_from_own_file_with_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: cityscapes_19\nmerge:\n  two_wheeler: {classes: [motorcycle, bicycle], color: [1, 2, 3]}\n")
    table = load_table(str(path))
    assert table.name == "mine" and table.num_classes == 18 and table.names[-1] == "two_wheeler"
    assert table.colors[-1] == (1, 2, 3) and table.remap(np.array([[32, 33]], np.uint8)).tolist() == [[17, 17]]


def test_merge_errors_name_the_culprit():
    with pytest.raises(SegkitError, match="merge.vehicle names unknown class 'lorry'"):
        load_table({"base": "cityscapes_19", "merge": {"vehicle": ["car", "lorry"]}})
    with pytest.raises(SegkitError, match="class 'bus' is merged into both 'big' and 'vehicle'"):
        load_table({"base": "cityscapes_19", "merge": {"big": ["bus", "truck"], "vehicle": ["car", "bus"]}})
    with pytest.raises(SegkitError, match="source id 26 is claimed by both 'car' and 'van'"):
        LabelTable.from_config({"classes": [{"name": "car", "ids": [26]}, {"name": "van", "ids": [26, 27]}]})
    with pytest.raises(SegkitError, match=r"source colour \(1, 2, 3\) is claimed by both 'a' and 'b'"):
        LabelTable.from_config(
            {"classes": [{"name": "a", "source_colors": [[1, 2, 3]]}, {"name": "b", "source_colors": [[1, 2, 3]]}]}
        )


def test_ade20k_zero_label_reduced_or_kept():
    reduced = load_table("ade20k")
    assert reduced.num_classes == 150 and reduced.names[0] == "wall" and reduced.names[-1] == "flag"
    assert reduced.remap(np.array([[0, 1, 2, 150]], np.uint8)).tolist() == [[255, 0, 1, 149]]
    kept = load_table("ade20k", reduce_zero_label=False)
    assert kept.num_classes == 151 and kept.names[:2] == ("other", "wall")
    assert kept.remap(np.array([[0, 1, 2, 150]], np.uint8)).tolist() == [[0, 1, 2, 150]]


def test_voc_and_sunrgbd_tables():
    voc = load_table("voc")
    assert (
        voc.num_classes == 21
        and voc.colors[1] == (128, 0, 0)
        and voc.remap(np.array([[255, 20]])).tolist() == [[255, 20]]
    )
    sun = load_table("sunrgbd")
    assert sun.num_classes == 37 and sun.remap(np.array([[0, 1, 37]], np.uint8)).tolist() == [[255, 0, 36]]


def test_rgb_source_colours_decode_and_unknown_colour_is_named():
    table = LabelTable.from_config(
        {
            "name": "rgb",
            "ignore_colors": [[255, 255, 255]],
            "classes": [
                {"name": "bg", "source_colors": [[0, 0, 0]]},
                {"name": "road", "source_colors": [[128, 64, 128], [1, 1, 1]]},
            ],
        }
    )
    rgb = np.array([[[0, 0, 0], [128, 64, 128], [1, 1, 1], [255, 255, 255]]], np.uint8)
    assert table.remap(rgb).tolist() == [[0, 1, 1, 255]]
    with pytest.raises(SegkitError, match=r"m.png: mask colour\(s\) \[\(9, 9, 9\)\] are not in label table 'rgb'"):
        table.remap(np.array([[[9, 9, 9]]], np.uint8), source="m.png")


def test_unknown_ids_ignored_with_one_warning(caplog):
    table = load_table("voc", unknown="ignore")
    with caplog.at_level(logging.WARNING, logger="segkit"):
        assert table.remap(np.array([[1, 77]], np.uint8), source="a.png").tolist() == [[1, 255]]
        table.remap(np.array([[78]], np.uint8), source="b.png")
    warnings = [r.getMessage() for r in caplog.records if "not in label table" in r.getMessage()]
    assert len(warnings) == 1 and "a.png" in warnings[0] and "[77]" in warnings[0]
    with pytest.raises(
        SegkitError, match=r"c.png: mask value\(s\) \[77\] are not in label table 'voc'.*unknown_ids=ignore"
    ):
        load_table("voc").remap(np.array([[77]], np.uint8), source="c.png")


def test_predictions_written_back_as_official_label_ids(tmp_path):
    import cv2

    table = load_table("cityscapes_19")
    train_ids = np.array([[0, 18, 13, 255]], np.int64)
    name = benchmark_name("x/berlin_000000_000019_leftImg8bit.png")
    assert name == "berlin_000000_000019_labelIds.png"
    path = write_label_ids(train_ids, tmp_path / name, table)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tolist() == [[7, 33, 26, 0]]
    assert table.remap(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))[0, :3].tolist() == [0, 18, 13]
