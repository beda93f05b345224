"""CHN6-CUG data path: pairing by id, road binarisation, protocols (no test-as-val), dataset and
datamodule batches. Fixtures come from tests/data/chn6cug/data.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsseg.data.core.errors import DataError
from rsseg.data.datasets.chn6cug import (
    ROAD_THRESHOLD,
    CHN6CUGDataModule,
    CHN6CUGDataset,
    binarise_mask,
    chn6cug_spec,
    find_pairs,
    holdout_ids,
    protocol_splits,
)
from tests.data.chn6cug.data import EMPTY_ID, HEIGHT, TILES, WIDTH, write_chn6cug

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("chn6cug")
    return root, write_chn6cug(root)


def copy_raw(raw, tmp_path) -> Path:
    shutil.copytree(raw[0], tmp_path / "copy")
    return tmp_path / "copy"


def test_pairs_are_found_by_id_and_sorted(raw):
    root = raw[0]
    pairs = find_pairs(root, "train")
    assert list(pairs) == sorted(TILES["train"])
    for tile, (image, mask) in pairs.items():
        assert image == root / "train" / "images" / f"{tile}_sat.jpg"
        assert mask == root / "train" / "gt" / f"{tile}_mask.png"


def test_road_threshold_and_mask_kinds():
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    assert binarise_mask(grey, ROAD_THRESHOLD).tolist() == [[0, 0, 1, 1]]
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [0, 200, 0], [100, 100, 100]]], np.uint8)
    assert binarise_mask(rgb, ROAD_THRESHOLD).tolist() == [[0, 1, 1, 0]]
    assert binarise_mask(np.array([[1, 0]], np.uint8), ROAD_THRESHOLD).tolist() == [[1, 0]]


def test_samples_match_the_encoded_masks_and_images(raw):
    root, truth = raw
    for folder in ("train", "val"):
        ds = CHN6CUGDataset(root, folder)
        assert len(ds) == len(TILES[folder])
        for sample in ds:
            tile = sample["meta"]["id"]
            assert sample["meta"] == {"id": tile, "height": HEIGHT, "width": WIDTH}
            assert sample["image"].shape == (3, HEIGHT, WIDTH) and sample["image"].dtype == torch.float32
            assert sample["mask"].dtype == torch.int64
            # covers the RGB-saved, 0/1, lossy and road-free masks
            np.testing.assert_array_equal(sample["mask"].numpy(), truth[folder][tile]["mask"])
            decoded = np.array(Image.open(root / folder / "images" / f"{tile}_sat.jpg"))
            image = (sample["image"] * STD + MEAN).mul(255).round().permute(1, 2, 0).numpy()
            np.testing.assert_allclose(image, decoded, atol=0.5)
    empty = CHN6CUGDataset(root, "train")[sorted(TILES["train"]).index(EMPTY_ID)]
    assert empty["mask"].sum() == 0


def test_missing_mask_or_image_is_a_data_error_naming_it(raw, tmp_path):
    root = copy_raw(raw, tmp_path)
    (root / "train" / "gt" / "sh100004_mask.png").unlink()
    with pytest.raises(DataError, match=r"train/gt/sh100004_mask\.png: mask not found for image .*sh100004_sat\.jpg"):
        find_pairs(root, "train")
    (root / "val" / "images" / "bj100901_sat.jpg").unlink()
    with pytest.raises(DataError, match=r"val/images/bj100901_sat\.jpg: image not found for mask"):
        find_pairs(root, "val")


def test_missing_folders_and_empty_splits_are_data_errors(raw, tmp_path):
    with pytest.raises(DataError, match="nowhere: folder not found"):
        find_pairs(tmp_path / "nowhere", "train")
    root = copy_raw(raw, tmp_path)
    shutil.rmtree(root / "val" / "gt")
    with pytest.raises(DataError, match=r"val/gt: folder not found"):
        find_pairs(root, "val")
    for path in (root / "train" / "images").iterdir():
        path.rename(path.with_suffix(".png"))
    with pytest.raises(DataError, match=r"train/images: no <id>_sat\.jpg images"):
        find_pairs(root, "train")


def test_size_mismatch_is_a_data_error_naming_both(raw, tmp_path):
    root = copy_raw(raw, tmp_path)
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 2), np.uint8)).save(root / "val" / "gt" / "am100900_mask.png")
    with pytest.raises(DataError, match=rf"am100900_sat\.jpg is {HEIGHT}×{WIDTH} but .*am100900_mask\.png is"):
        CHN6CUGDataset(root, "val")[0]


def test_official_protocol_tests_on_val_folder_and_has_no_val_split(raw):
    splits = protocol_splits(raw[0], "official")
    assert set(splits) == {"train", "test"}
    assert list(splits["train"]) == sorted(TILES["train"]) and list(splits["test"]) == sorted(TILES["val"])


def test_holdout_val_comes_from_train_deterministically(raw):
    splits = protocol_splits(raw[0], "holdout", val_fraction=0.34)
    assert set(splits) == {"train", "val", "test"}
    assert len(splits["val"]) == 2 and len(splits["train"]) == 4
    assert set(splits["val"]) | set(splits["train"]) == set(TILES["train"])
    assert not set(splits["val"]) & set(splits["train"])
    assert list(splits["test"]) == sorted(TILES["val"])  # the reported split is never held out or validated on
    ids = list(TILES["train"])
    assert holdout_ids(ids, 0.34) == holdout_ids(ids[::-1], 0.34) == sorted(splits["val"])
    with pytest.raises(ValueError):
        holdout_ids(ids, 0.0)


def test_datamodule_official(raw):
    dm = CHN6CUGDataModule(str(raw[0]), batch_size=4, num_workers=0, crop_size=32, pin_memory=False)
    assert dm.num_classes == 2 and dm.spec == chn6cug_spec("official")
    assert dm.spec.classes == ("background", "road") and dm.spec.palette == ((0, 0, 0), (255, 255, 255))
    dm.setup("fit")
    assert dm.val_dataset is None and dm.val_dataloader() == []
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    with pytest.raises(DataError, match="no val split"):
        dm.setup("validate")
    dm.setup("test")
    dm.setup("predict")
    batches = list(dm.test_dataloader())
    assert sum(len(b["meta"]["id"]) for b in batches) == len(TILES["val"])
    assert batches[0]["image"].shape[-2:] == (HEIGHT, WIDTH)  # whole tiles for evaluation
    assert dm.predict_dataset is dm.test_dataset


def test_datamodule_holdout(raw):
    dm = CHN6CUGDataModule(str(raw[0]), batch_size=2, num_workers=0, crop_size=None, protocol="holdout",
                           val_fraction=0.34, augment=False, pin_memory=False)
    dm.setup("validate")
    assert len(dm.val_dataset) == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["mask"].shape == (2, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="protocol"):
        CHN6CUGDataModule("unused", protocol="test-as-val")
