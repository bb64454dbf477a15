import numpy as np
import pytest
from omegaconf import OmegaConf

from segkit import SegkitError
from segkit.data.datasets.camvid import CamVid
from segkit.data.labels import LabelTable
from segkit.files import conf_dir


@pytest.fixture
def camvid_labels() -> LabelTable:
    return LabelTable.from_config(OmegaConf.to_container(OmegaConf.load(conf_dir() / "data/labels/camvid.yaml")))


def test_camvid_samples_have_train_ids(camvid_root, camvid_labels):
    train = CamVid(camvid_root, "train", camvid_labels)
    val = CamVid(camvid_root, "val", camvid_labels)
    assert (len(train), len(val)) == (367, 101)
    seen = set()
    for i in (0, 100, 366):
        image, mask = train[i]
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert mask.shape == (360, 480) and mask.dtype == np.int64
        seen |= set(np.unique(mask).tolist())
    assert seen <= set(range(11)) | {255}
    assert 255 in seen  # void (11) became ignore
    assert camvid_labels.names[3] == "road" and camvid_labels.num_classes == 11


def test_camvid_folder_layout(tmp_path, camvid_labels):
    import cv2

    for split in ("val",):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        cv2.imwrite(str(tmp_path / split / "a.png"), np.zeros((8, 10, 3), np.uint8))
        cv2.imwrite(str(tmp_path / f"{split}annot" / "a.png"), np.full((8, 10), 11, np.uint8))
    image, mask = CamVid(tmp_path, "val", camvid_labels)[0]
    assert image.shape == (8, 10, 3) and (mask == 255).all()


def test_missing_root_and_missing_mask_are_clear(tmp_path, camvid_labels):
    with pytest.raises(SegkitError, match="does not exist.*data.root"):
        CamVid(tmp_path / "nope", "train", camvid_labels)
    (tmp_path / "train.txt").write_text("train/a.png trainannot/a.png\ntrain/b.png trainannot/b.png\n")
    with pytest.raises(SegkitError, match="4 listed file"):
        CamVid(tmp_path, "train", camvid_labels)
    with pytest.raises(SegkitError, match="split 'test' not found"):
        CamVid(tmp_path, "test", camvid_labels)
