import numpy as np
import pytest

from segkit import SegkitError
from segkit.data.datasets.synthetic import CLASS_NAMES, SyntheticShapes
from segkit.data.labels import LabelTable


def table(**extra) -> LabelTable:
    cfg = {"name": "t", "classes": [{"name": "a", "ids": [0, 3]}, {"name": "b", "ids": [1]}], "ignore_ids": [2]}
    cfg.update(extra)
    return LabelTable.from_config(cfg)


def test_remap_merges_and_ignores():
    raw = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    assert table().remap(raw).tolist() == [[0, 1, 255, 0]]


def test_unknown_id_is_an_error_naming_file_and_value_or_ignored():
    raw = np.array([[0, 7]], dtype=np.uint8)
    with pytest.raises(SegkitError, match=r"x.png: mask value\(s\) \[7\]"):
        table().remap(raw, source="x.png")
    assert table(unknown="ignore").remap(raw).tolist() == [[0, 255]]


def test_id_claimed_twice_is_an_error():
    with pytest.raises(SegkitError, match="source id 1 is claimed by both 'a' and 'b'"):
        LabelTable.from_config({"classes": [{"name": "a", "ids": [1]}, {"name": "b", "ids": [1]}]})


def test_synthetic_is_deterministic_and_varied():
    labels = LabelTable.from_config({"name": "synthetic", "classes": [{"name": n} for n in CLASS_NAMES]})
    a = SyntheticShapes("train", labels, num_samples=4, height=48, width=64)
    b = SyntheticShapes("train", labels, num_samples=4, height=48, width=64)
    image, mask = a[1]
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and mask.dtype == np.int64
    assert np.array_equal(image, b[1][0]) and np.array_equal(mask, b[1][1])
    assert not np.array_equal(a[0][1], a[1][1])
    val = SyntheticShapes("val", labels, num_samples=4, height=48, width=64)
    assert not np.array_equal(val[1][0], image)
    classes = set()
    for i in range(4):
        classes |= set(np.unique(a[i][1]).tolist())
    assert 0 in classes and len(classes) >= 3 and classes <= set(range(6))
