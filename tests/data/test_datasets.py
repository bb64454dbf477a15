"""Each dataset family read from a tiny tree in its real layout, and the bad-input messages."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from segkit import SegkitError
from segkit.data.datasets.ade20k import ADE20K
from segkit.data.datasets.cityscapes import Cityscapes
from segkit.data.datasets.folder import ImageMaskFolder
from segkit.data.datasets.sunrgbd import SUNRGBD
from segkit.data.datasets.voc import VOCSegmentation
from segkit.data.input_spec import InputSpec
from segkit.data.labels import load_table
from segkit.data.transforms import train_transforms
from tests.data import trees


def test_cityscapes_label_ids_and_precomputed_train_ids(tmp_path):
    table = load_table("cityscapes_19")
    root = trees.cityscapes_tree(tmp_path / "cs")
    train = Cityscapes(root, "train", table)
    image, mask = train[0]
    assert len(train) == 2 and image.shape == (16, 24, 3) and mask.dtype == np.int64
    assert set(np.unique(mask).tolist()) == {255, 0, 13, 11}  # unlabeled, road, car, person
    categories = Cityscapes(root, "val", load_table("cityscapes_categories"))
    assert set(np.unique(categories[0][1]).tolist()) == {255, 0, 6, 5}
    pre = Cityscapes(trees.cityscapes_tree(tmp_path / "pre", train_ids=True), "train", table)
    assert pre.train_ids and set(np.unique(pre[0][1]).tolist()) == {0, 13, 255}


def test_cityscapes_train_ids_files_serve_only_tables_they_can_answer(tmp_path):
    """labelTrainIds files have lost parking, caravan, ...: a table that needs them is refused, naming the file."""
    root = trees.cityscapes_tree(tmp_path / "pre", train_ids=True)
    official = Cityscapes(root, "val", load_table("cityscapes_categories"))  # ignores exactly the lost labels
    assert set(np.unique(official[0][1]).tolist()) <= {0, 6, 255}
    for table in ("cityscapes_categories_merge_all", "cityscapes_person", "cityscapes_categories_void"):
        with pytest.raises(SegkitError, match=rf"label table '{table}' gives .*_gtFine_labelTrainIds.png' .*labelIds"):
            Cityscapes(root, "val", load_table(table))


def test_cityscapes_coarse_and_missing_split_print_the_layout(tmp_path):
    root = trees.cityscapes_tree(tmp_path)
    with pytest.raises(
        SegkitError, match=r"(?s)Cityscapes split 'test' .* does not exist.*Expected layout:.*leftImg8bit"
    ):
        Cityscapes(root, "test", load_table("cityscapes_19"))
    with pytest.raises(
        SegkitError, match=r"2 listed file\(s\) are missing \(2 mask\(s\), 0 image\(s\)\); first: .*gtCoarse"
    ):
        Cityscapes(root, "train", load_table("cityscapes_19"), mode="coarse")


def test_ade20k_reduced_and_151_modes(tmp_path):
    root = trees.ade20k_tree(tmp_path)
    reduced = ADE20K(root, "train", load_table("ade20k"))
    assert set(np.unique(reduced[0][1]).tolist()) == {255, 0, 149}
    kept = ADE20K(root / "ADEChallengeData2016", "val", load_table("ade20k", reduce_zero_label=False))
    assert set(np.unique(kept[0][1]).tolist()) == {0, 1, 150}


def test_voc_palette_pngs_decode_to_indices_with_border_ignored(tmp_path):
    root = trees.voc_tree(tmp_path)
    dataset = VOCSegmentation(root, "train", load_table("voc"))
    image, mask = dataset[0]
    assert image.shape == (16, 24, 3)
    assert (mask[0] == 255).all() and (mask[-1] == 255).all()
    assert set(np.unique(mask[1:-1]).tolist()) == {0, 15, 20}  # background, person, tvmonitor


def test_voc_train_aug_with_sbd_mat_files_and_seg11valid(tmp_path):
    root = trees.voc_tree(tmp_path / "voc")
    # SBD holds a VOC train image, a VOC val image (excluded from train_aug) and two of its own
    sbd = trees.sbd_tree(tmp_path / "sbd", train=["2007_000000", "2009_000001"], val=["2008_000000", "2010_000002"])
    table = load_table("voc")
    aug = VOCSegmentation(root, "train_aug", table, sbd_root=sbd)
    names = [p[0].stem for p in aug.pairs]
    assert names == ["2007_000000", "2007_000001", "2009_000001", "2010_000002"]
    assert aug.pairs[0][1].suffix == ".png" and aug.pairs[2][1].suffix == ".mat"
    assert set(np.unique(aug[2][1]).tolist()) == {0, 7, 12}
    with pytest.raises(SegkitError, match="needs SBD: set data.dataset.sbd_root"):
        VOCSegmentation(root, "train_aug", table)
    with pytest.raises(SegkitError, match=r"(?s)seg11valid.txt' does not exist.*736-image"):
        VOCSegmentation(root, "seg11valid", table)
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/seg11valid.txt").write_text("2008_000001\n")
    assert len(VOCSegmentation(root, "seg11valid", table)) == 1


def test_sunrgbd_depth_is_the_fourth_channel_through_the_transforms(tmp_path):
    root = trees.sunrgbd_tree(tmp_path)
    rgb = SUNRGBD(root, "train", load_table("sunrgbd"))
    assert rgb[0][0].shape == (16, 24, 3)
    rgbd = SUNRGBD(root, "train", load_table("sunrgbd"), use_depth=True)
    image, mask = rgbd[0]
    assert image.shape == (16, 24, 4) and image[0, 0, 3] == 0 and image[0, -1, 3] == 255  # 0 m .. 10 m
    assert set(np.unique(mask).tolist()) == {255, 0, 36}
    mean, std = (0.485, 0.456, 0.406, 0.5), (0.229, 0.224, 0.225, 0.25)
    out = train_transforms(crop_size=(8, 8), mean=mean, std=std)(image=image, mask=mask.astype(np.uint8))
    assert out["image"].shape == (4, 8, 8)
    with pytest.raises(SegkitError, match="4 channels but mean/std give 3/3"):
        InputSpec(load_table("sunrgbd")).eval_transform()(image=image, mask=mask.astype(np.uint8))


def test_folder_with_rgb_masks_split_by_ratio_or_lists(tmp_path):
    root = trees.folder_tree(tmp_path / "f", n=5)
    table = load_table(str(trees.folder_table(tmp_path / "my_rgb.yaml")))
    train = ImageMaskFolder("train", table, root=root, ratios={"train": 0.6, "val": 0.4}, split_seed=3)
    val = ImageMaskFolder("val", table, root=root, ratios={"train": 0.6, "val": 0.4}, split_seed=3)
    train_names = [p[0].stem for p in train.pairs]
    assert len(train) == 3 and len(val) == 2 and not set(train_names) & {p[0].stem for p in val.pairs}
    again = ImageMaskFolder("train", table, root=root, ratios={"train": 0.6, "val": 0.4}, split_seed=3)
    assert [p[0].stem for p in again.pairs] == train_names
    assert set(np.unique(train[0][1]).tolist()) == {0, 1, 2}
    (root / "train.txt").write_text("frame_4\nframe_0.jpg\n")
    assert [p[0].stem for p in ImageMaskFolder("train", table, root=root).pairs] == ["frame_4", "frame_0"]
    ids_root = trees.folder_tree(tmp_path / "ids", n=2, rgb=False)
    ids = ImageMaskFolder(
        "train",
        load_table({"classes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}),
        root=ids_root,
        ratios={"train": 1.0},
    )
    assert set(np.unique(ids[0][1]).tolist()) == {0, 1, 2}


# --- bad input -----------------------------------------------------------------------------------------------------


def test_missing_root_prints_the_expected_layout(tmp_path):
    for cls, args, marker in [
        (Cityscapes, (), "leftImg8bit"),
        (ADE20K, (), "annotations"),
        (VOCSegmentation, (), "JPEGImages"),
        (SUNRGBD, (), "label37"),
    ]:
        with pytest.raises(SegkitError, match=rf"(?s)'{tmp_path / 'nope'}' does not exist.*Expected layout:.*{marker}"):
            cls(tmp_path / "nope", "train", load_table("voc"), *args)
    with pytest.raises(SegkitError, match=r"(?s)images.*does not exist.*Expected layout:.*masks/"):
        ImageMaskFolder("train", load_table("voc"), root=tmp_path)
    with pytest.raises(SegkitError, match="data=folder needs data.root"):
        ImageMaskFolder("train", load_table("voc"))


def test_images_without_masks_list_the_first_and_the_count(tmp_path):
    root = trees.folder_tree(tmp_path, n=7, rgb=False)
    for i in range(6):
        (root / "masks" / f"frame_{i}.png").unlink()
    with pytest.raises(SegkitError, match=r"6 image\(s\) have no mask .* first: .*frame_0.jpg, .*frame_4.jpg$"):
        ImageMaskFolder("train", load_table("voc"), root=root, ratios={"train": 1.0})
    ade = trees.ade20k_tree(tmp_path / "ade")
    (ade / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png").unlink()
    with pytest.raises(SegkitError, match=r"1 listed file\(s\) are missing \(1 mask\(s\).*ADE_train_00000001.png"):
        ADE20K(ade, "train", load_table("ade20k"))


def test_unknown_mask_value_names_file_and_value_or_warns_once(tmp_path, caplog):
    root = trees.folder_tree(tmp_path, n=2, rgb=False)
    two = {"name": "two", "classes": [{"name": "a"}, {"name": "b"}]}
    dataset = ImageMaskFolder("train", load_table(two), root=root, ratios={"train": 1.0})
    with pytest.raises(SegkitError, match=r"frame_0.png: mask value\(s\) \[2\] are not in label table 'two'"):
        dataset[0]
    lenient = ImageMaskFolder("train", load_table(two, unknown="ignore"), root=root, ratios={"train": 1.0})
    with caplog.at_level(logging.WARNING, logger="segkit"):
        assert 255 in lenient[0][1] and 255 in lenient[1][1]
    assert sum("not in label table" in r.getMessage() for r in caplog.records) == 1


def test_unreadable_image_names_the_file(tmp_path):
    root = trees.folder_tree(tmp_path, n=2, rgb=False)
    (root / "images" / "frame_1.jpg").write_bytes(b"not a jpeg")
    dataset = ImageMaskFolder(
        "train", load_table({"classes": [{"name": n} for n in "abc"]}), root=root, ratios={"train": 1.0}
    )
    with pytest.raises(SegkitError, match=r"cannot read image '.*frame_1.jpg'"):
        dataset[1]


def test_errors_in_loader_workers_keep_the_message(tmp_path):
    from segkit.data.pipeline import TransformedDataset

    root = trees.folder_tree(tmp_path, n=2, rgb=False)
    (root / "images" / "frame_0.jpg").write_bytes(b"")
    dataset = ImageMaskFolder(
        "train", load_table({"classes": [{"name": n} for n in "abc"]}), root=root, ratios={"train": 1.0}
    )
    transform = InputSpec(dataset.labels).eval_transform()
    loader = torch.utils.data.DataLoader(TransformedDataset(dataset, transform), batch_size=1, num_workers=1)
    with pytest.raises(SegkitError, match=r"^cannot read image '.*frame_0.jpg'") as err:
        next(iter(loader))
    assert "\n" not in str(err.value) and "Traceback" in err.value.worker_traceback  # the line, not torch's report


def test_decoded_cache_reads_each_file_once_and_hands_out_copies(tmp_path, monkeypatch):
    """``data.cache_mb``: a kept sample is decoded once, comes back equal and in its own dtypes, and a caller that
    writes into what it got does not change it; past the limit samples are read again; class statistics and a
    DataLoader worker see the same samples."""
    from segkit.data.datamodule import SegmentationDataModule
    from segkit.data.pipeline import DecodedCache, TransformedDataset

    root = trees.folder_tree(tmp_path, n=3, rgb=False)
    table = load_table({"classes": [{"name": n} for n in "abc"]})
    dataset = ImageMaskFolder("train", table, root=root, ratios={"train": 1.0})
    reads: list[int] = []
    read_input = dataset.read_input
    monkeypatch.setattr(dataset, "read_input", lambda i: reads.append(i) or read_input(i))
    image, mask = dataset[0]
    size = (image.nbytes + mask.size) / 2**20  # the mask kept as uint8
    assert mask.dtype == np.int64
    cache = DecodedCache(dataset, limit_mb=1.5 * size)
    reads.clear()
    first, again = cache[0], cache[0]
    assert reads == [0] and cache.kept[0][1][0].dtype == np.uint8
    for got in (first, again):
        np.testing.assert_array_equal(got[0], image)
        np.testing.assert_array_equal(got[1], mask)
        assert got[0].dtype == image.dtype and got[1].dtype == mask.dtype
    first[0][:] = 0
    first[1][:] = 7
    np.testing.assert_array_equal(cache[0][0], image)
    np.testing.assert_array_equal(cache[0][1], mask)
    cache[1], cache[1]  # over the limit: read every time
    assert reads == [0, 1, 1] and list(cache.kept) == [0]
    np.testing.assert_array_equal(cache.mask(0), dataset.mask(0))
    assert len(cache) == 3 and cache.pairs == dataset.pairs  # the dataset's own attributes
    monkeypatch.undo()
    loader = torch.utils.data.DataLoader(
        TransformedDataset(cache, InputSpec(table).eval_transform()), batch_size=1, num_workers=1
    )
    assert torch.equal(next(iter(loader))[1][0], torch.as_tensor(mask))
    data = SegmentationDataModule(
        dataset=lambda split, labels, root: ImageMaskFolder(split, labels, root=root, ratios={"train": 1.0}),
        labels=table, splits={"train": "train"}, root=str(root), cache_mb=64,
    )  # fmt: skip
    assert isinstance(data.split_dataset("train").dataset, DecodedCache)
    samples = [(image, mask)]  # a dataset of the user's without mask(): class statistics read the sample
    np.testing.assert_array_equal(DecodedCache(samples, limit_mb=0).mask(0), mask)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(SegkitError, match=rf"data\.cache_mb={bad}"):
            SegmentationDataModule(dataset=ImageMaskFolder, labels=table, cache_mb=bad)
