"""Vaihingen data path: decoding, telling images from same-named labels, splits of both protocols,
variable tile sizes, patch reassembly, the metric convention and bad input. Fixtures come from
tests/data/vaihingen/data.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.io import read_image
from rsseg.data.core.tiling import split_grid
from rsseg.data.datasets.isprs.labels import decode_isprs_label
from rsseg.data.datasets.vaihingen import (
    OFFICIAL_TEST_AREAS,
    OFFICIAL_TRAIN_AREAS,
    PROTOCOLS,
    VaihingenDataModule,
    VaihingenDataset,
    find_vaihingen_files,
    prepare_vaihingen,
    vaihingen_spec,
)
from tests.data.vaihingen.data import (
    AREAS,
    ERODED_DIR,
    UNKNOWN_AREA,
    UNKNOWN_PIXELS,
    eroded_path,
    image_path,
    label_path,
    write_vaihingen,
)

PATCH, STRIDE = 32, 24
UNETFORMER_SPLITS = {"train": ["1", "3"], "val": ["30"], "test": ["2", "4"]}
IRRG_MEAN = torch.tensor([0.485, 0.485, 0.456]).view(3, 1, 1)  # IR borrows red's ImageNet statistics
IRRG_STD = torch.tensor([0.229, 0.229, 0.224]).view(3, 1, 1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen_raw")
    return root, write_vaihingen(root)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen_prepared") / "root"
    with pytest.warns(DataWarning):
        manifest = prepare_vaihingen(raw[0], root, patch_size=PATCH, stride=STRIDE, progress=False)
    return root, manifest


@pytest.fixture(scope="module")
def official(raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen_official") / "root"
    with pytest.warns(DataWarning):
        manifest = prepare_vaihingen(raw[0], root, patch_size=PATCH, protocol="official", progress=False)
    return root, manifest


def copy_raw(raw, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(raw[0], copy)
    return copy


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


# --------------------------------------------------------------------------------------------------
# Decoding and discovery


def test_fixture_labels_decode_to_their_ground_truth_through_the_shared_path(raw):
    root, truth = raw
    mask, n_boundary, n_unknown = decode_isprs_label(read_image(label_path(root, UNKNOWN_AREA)))
    np.testing.assert_array_equal(mask, truth[UNKNOWN_AREA]["full"])
    assert (n_boundary, n_unknown) == (0, UNKNOWN_PIXELS)
    eroded, n_boundary, n_unknown = decode_isprs_label(read_image(eroded_path(root, "2")))
    np.testing.assert_array_equal(eroded, truth["2"]["eroded"])
    assert n_boundary == (truth["2"]["eroded"] == 255).sum() > 0 and n_unknown == 0


def test_discovery_tells_the_image_from_the_same_named_label_by_its_top_folder(raw):
    root, _ = raw
    files = find_vaihingen_files(root)
    assert set(files) == set(AREAS)
    for area in AREAS:
        assert files[area] == {
            "image": image_path(root, area),
            "label": label_path(root, area),
            "label_noBoundary": eroded_path(root, area),
        }
    assert image_path(root, "1").name == label_path(root, "1").name  # the ambiguity being resolved


def test_participant_labels_are_a_fallback_and_complete_labels_win(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    participants = src / "gts_for_participants"
    participants.mkdir()
    shutil.copy(label_path(src, "1"), participants)
    shutil.move(label_path(src, "3"), participants)
    files = find_vaihingen_files(src)
    assert files["1"]["label"] == label_path(src, "1")  # the COMPLETE copy
    assert files["3"]["label"] == participants / "top_mosaic_09cm_area3.tif"  # the only copy


def test_images_outside_top_are_an_error_that_explains_the_folder_rule(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    (src / "top").rename(src / "images")
    with pytest.raises(DataError, match=r"duplicate Vaihingen label files for area 1: .*folder named 'top'"):
        find_vaihingen_files(src)
    for area in AREAS:  # without labels, the images are taken for labels and no image is found
        label_path(src, area).unlink()
    with pytest.raises(DataError, match=r"no Vaihingen images .* outside a folder named 'top'"):
        find_vaihingen_files(src)


def test_two_top_folders_are_an_error(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    shutil.copytree(src / "top", src / "again" / "top")
    with pytest.raises(DataError, match=r"duplicate Vaihingen image files for area 1: .*top_mosaic_09cm_area1\.tif"):
        find_vaihingen_files(src)


def test_unextracted_archives_are_pointed_at(tmp_path):
    (tmp_path / "ISPRS_semantic_labeling_Vaihingen.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"no Vaihingen images .*ISPRS_semantic_labeling_Vaihingen\.zip: extract"):
        find_vaihingen_files(tmp_path)


# --------------------------------------------------------------------------------------------------
# Splits and preparation


def test_protocol_tile_lists():
    assert len(OFFICIAL_TRAIN_AREAS) == 16 and len(OFFICIAL_TEST_AREAS) == 17
    assert not set(OFFICIAL_TRAIN_AREAS) & set(OFFICIAL_TEST_AREAS)
    assert {int(a) for a in OFFICIAL_TRAIN_AREAS} == {1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37}
    unetformer = PROTOCOLS["unetformer"].splits
    assert unetformer["val"] == ("30",) and len(unetformer["train"]) == 15 and "30" not in unetformer["train"]
    assert set(unetformer["train"]) | {"30"} == set(OFFICIAL_TRAIN_AREAS)
    assert unetformer["test"] == OFFICIAL_TEST_AREAS
    assert set(PROTOCOLS["official"].splits) == {"train", "test"}


def test_unetformer_manifest_splits_counts_and_labels(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    splits = manifest["splits"]
    assert {s: splits[s]["tiles"] for s in splits} == UNETFORMER_SPLITS
    assert {s: splits[s]["label_kind"] for s in splits} == {"train": "full", "val": "full", "test": "eroded"}
    assert manifest["parameters"]["bands"] == "IRRG" and manifest["image_bands"]["order"] == ["IR", "R", "G"]
    assert manifest["unused_tiles_found"] == ["9"] and manifest["exclude_from_mean"] == [5]
    assert len(splits["train"]["missing_tiles"]) == 13 and len(splits["test"]["missing_tiles"]) == 15
    for split, areas in UNETFORMER_SPLITS.items():
        kind = "eroded" if split == "test" else "full"
        expected = sum(np.bincount(truth[a][kind].ravel(), minlength=256)[:6] for a in areas)
        assert splits[split]["pixels_per_class"] == expected.tolist()
        grid = [split_grid(*AREAS[a], PATCH, STRIDE, overlapping=split == "train") for a in areas]
        assert splits[split]["num_patches"] == sum(map(len, grid))
    assert splits["train"]["unknown_pixels"] == UNKNOWN_PIXELS
    assert manifest["tiles"]["30"]["image"] == "top/top_mosaic_09cm_area30.tif"
    assert manifest["tiles"]["30"]["label"] == "top_mosaic_09cm_area30.tif"
    assert manifest["tiles"]["2"]["label"] == f"{ERODED_DIR}/top_mosaic_09cm_area2_noBoundary.tif"
    assert manifest["patches"]["val"][0]["id"] == "top_mosaic_09cm_area30_00000_00000"


def test_official_protocol_has_area_30_in_train_and_no_val(official):
    root, manifest = official
    splits = {s: info["tiles"] for s, info in manifest["splits"].items()}
    assert splits == {"train": ["1", "3", "30"], "test": ["2", "4"]}
    assert manifest["exclude_from_mean"] == [] and not (root / "val").exists()


def test_prepared_patches_reassemble_into_the_tiles_exactly(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    for split, patches in manifest["patches"].items():
        for area in UNETFORMER_SPLITS[split]:
            height, width = AREAS[area]
            mask = np.full((height, width), 77, np.uint8)  # 77 is neither a class nor ignore
            image = np.zeros((height, width, 3), np.uint8)
            for p in (p for p in patches if p["tile"] == area):
                patch_mask = png(root / split / "masks" / f"{p['id']}.png")
                patch_image = png(root / split / "images" / f"{p['id']}.png")
                assert patch_mask.shape == (PATCH, PATCH) and patch_image.shape == (PATCH, PATCH, 3)
                assert (p["tile_height"], p["tile_width"]) == (height, width)
                h, w = p["height"], p["width"]
                assert (patch_mask[h:] == 255).all() and (patch_mask[:, w:] == 255).all()
                mask[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch_mask[:h, :w]
                image[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch_image[:h, :w]
            kind = "eroded" if split == "test" else "full"
            np.testing.assert_array_equal(mask, truth[area][kind], err_msg=f"{split} {area}")
            np.testing.assert_array_equal(image, truth[area]["image"], err_msg=f"{split} {area}")  # IR-R-G kept


def test_spec_convention_per_protocol():
    unetformer, official = vaihingen_spec("unetformer"), vaihingen_spec("official")
    assert unetformer.name == "vaihingen" and unetformer.num_classes == 6 and unetformer.ignore_index == 255
    assert unetformer.exclude_from_mean == (5,) and official.exclude_from_mean == ()
    assert unetformer.eroded_test_labels and not vaihingen_spec(test_labels="full").eroded_test_labels
    with pytest.raises(ValueError, match="protocol"):
        vaihingen_spec("mmseg")
    with pytest.raises(ValueError, match="test_labels"):
        vaihingen_spec(test_labels="thin")


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule


def test_variable_tile_sizes_give_fixed_size_batches(prepared):
    root, manifest = prepared
    dm = VaihingenDataModule(str(root), batch_size=6, num_workers=0, crop_size=None, eval_batch_size=64)
    assert dm.in_channels == 3 and dm.num_classes == 6 and dm.spec.exclude_from_mean == (5,)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (6, 3, PATCH, PATCH) and train["mask"].shape == (6, PATCH, PATCH)
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))  # every test patch in one batch: areas 2 (70×53) and 4 (59×83)
    assert test["image"].shape == (manifest["splits"]["test"]["num_patches"], 3, PATCH, PATCH)
    assert test["mask"].dtype == torch.int64 and (test["mask"] == 255).any()
    assert set(zip(test["meta"]["tile_height"].tolist(), test["meta"]["tile_width"].tolist(), strict=True)) == {
        AREAS["2"],
        AREAS["4"],
    }
    cropped = VaihingenDataModule(str(root), batch_size=4, num_workers=0, crop_size=24)
    cropped.setup("fit")
    assert next(iter(cropped.train_dataloader()))["image"].shape == (4, 3, 24, 24)


def test_images_are_normalised_with_irrg_band_statistics(prepared):
    root, manifest = prepared
    sample = VaihingenDataset(root, "val")[0]
    raw_image = torch.from_numpy(png(root / "val" / "images" / f"{manifest['patches']['val'][0]['id']}.png"))
    expected = (raw_image.permute(2, 0, 1).float() / 255 - IRRG_MEAN) / IRRG_STD
    torch.testing.assert_close(sample["image"], expected)


def test_official_datamodule_has_no_val_and_the_wrong_protocol_is_named(official, prepared):
    dm = VaihingenDataModule(str(official[0]), num_workers=0, protocol="official")
    assert dm.spec.exclude_from_mean == ()
    dm.setup("fit")
    assert dm.val_dataset is None and dm.val_dataloader() == []
    with pytest.raises(DataError, match="no val split"):
        dm.setup("validate")
    with pytest.raises(DataError, match=r"prepared with protocol 'unetformer' but protocol 'official'"):
        VaihingenDataModule(str(prepared[0]), protocol="official").setup("fit")


def test_datamodule_explains_a_raw_root(raw):
    with pytest.raises(DataError, match=rf"raw Vaihingen download.*rsseg prepare vaihingen --src {raw[0]}"):
        VaihingenDataModule(str(raw[0])).setup("fit")


# --------------------------------------------------------------------------------------------------
# Bad input


def test_missing_label_names_the_file_and_its_archive(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    eroded_path(src, "4").unlink()
    with pytest.raises(
        DataError,
        match=r"missing label file top_mosaic_09cm_area4_noBoundary\.tif for area 4 .*eroded_COMPLETE\.zip",
    ):
        prepare_vaihingen(src, tmp_path / "dst", progress=False)


def test_size_mismatch_names_both_files(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    tifffile.imwrite(label_path(src, "1"), np.full((53, 69, 3), 255, np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=r"top/top_mosaic_09cm_area1\.tif is 53×70 but .*area1\.tif is 53×69"):
        prepare_vaihingen(src, tmp_path / "dst", patch_size=PATCH, progress=False)
    assert not (tmp_path / "dst").exists()


def test_empty_val_split_and_bad_arguments(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    image_path(src, "30").unlink()
    with pytest.raises(DataError, match=r"none of the 1 val areas .*top/top_mosaic_09cm_area30\.tif"):
        prepare_vaihingen(src, tmp_path / "dst", progress=False)
    with pytest.raises(ValueError, match="IRRG"):
        prepare_vaihingen(raw[0], tmp_path / "dst", bands="RGB", progress=False)
    with pytest.raises(ValueError, match="protocol"):
        prepare_vaihingen(raw[0], tmp_path / "dst", protocol="random", progress=False)
