"""Potsdam image bands: RGB / IRRG / RGBIR discovery (in folders or flat), lossless 4-band patches,
``in_channels`` and per-band normalisation. The band files are written here next to the
tests/data/potsdam/data.py fixture, from arrays kept as ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rsseg.data.core.errors import DataError
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsseg.data.datasets.potsdam import PotsdamDataModule, PotsdamDataset, find_potsdam_files, prepare_potsdam
from tests.data.potsdam.data import write_potsdam

TILES = {"2_10": (53, 70), "2_11": (70, 53), "2_13": (45, 61)}  # val, train, test
PATCH = 32
RGBIR_STATS = ((0.485, 0.456, 0.406, 0.485), (0.229, 0.224, 0.225, 0.229))  # IR borrows red's statistics
IRRG_STATS = ((0.485, 0.485, 0.456), (0.229, 0.229, 0.224))


def irrg_path(root: Path, tile: str) -> Path:
    return root / "3_Ortho_IRRG" / f"top_potsdam_{tile}_IRRG.tif"  # in its archive folder


def rgbir_path(root: Path, tile: str) -> Path:
    return root / f"top_potsdam_{tile}_RGBIR.tif"  # flat


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The RGB fixture plus IRRG and RGBIR files of the same tiles; returns the 4-band truth per tile."""
    root = tmp_path_factory.mktemp("potsdam_bands_raw")
    truth = write_potsdam(root, TILES)
    rng = np.random.default_rng(7)
    (root / "3_Ortho_IRRG").mkdir()
    rgbir = {}
    for tile, (height, width) in TILES.items():
        ir = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        rgb = truth[tile]["image"]
        rgbir[tile] = np.dstack([rgb, ir])
        tifffile.imwrite(irrg_path(root, tile), np.dstack([ir, rgb[..., 0], rgb[..., 1]]), photometric="rgb")
        tifffile.imwrite(rgbir_path(root, tile), rgbir[tile], photometric="rgb", extrasamples=["unspecified"])
    return root, rgbir


@pytest.fixture(scope="module")
def rgbir_root(raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam_rgbir") / "root"
    return root, prepare_potsdam(raw[0], root, patch_size=PATCH, bands="RGBIR", progress=False)


def test_discovery_picks_the_requested_bands_in_folders_or_flat(raw):
    root, _ = raw
    for bands, path in (
        ("RGB", lambda t: root / "2_Ortho_RGB" / f"top_potsdam_{t}_RGB.tif"),
        ("IRRG", lambda t: irrg_path(root, t)),
        ("RGBIR", lambda t: rgbir_path(root, t)),
    ):
        files = find_potsdam_files(root, bands)
        assert set(files) == set(TILES)
        for tile in TILES:
            assert files[tile]["image"] == path(tile)
            assert files[tile]["label"] == root / f"top_potsdam_{tile}_label.tif"
    assert find_potsdam_files(root) == find_potsdam_files(root, "RGB")


def test_missing_bands_and_unknown_bands_are_named(raw, tmp_path):
    src = tmp_path / "raw"
    shutil.copytree(raw[0], src)
    shutil.rmtree(src / "3_Ortho_IRRG")
    with pytest.raises(DataError, match=r"no Potsdam images \(top_potsdam_<r>_<c>_IRRG\.tif\) found"):
        prepare_potsdam(src, tmp_path / "dst", bands="IRRG", progress=False)
    with pytest.raises(ValueError, match="bands must be one of RGB, IRRG, RGBIR"):
        prepare_potsdam(src, tmp_path / "dst", bands="NIR", progress=False)
    with pytest.raises(ValueError, match="bands"):
        PotsdamDataModule(str(tmp_path), bands="BGR")


def test_rgbir_patches_are_lossless_four_band_pngs_that_reassemble(raw, rgbir_root):
    root, manifest = rgbir_root
    _, rgbir = raw
    assert manifest["parameters"]["bands"] == "RGBIR"
    assert manifest["image_bands"]["order"] == ["R", "G", "B", "IR"]
    assert {s["path"] for s in manifest["sources"]} >= {f"top_potsdam_{t}_RGBIR.tif" for t in TILES}
    for split, patches in manifest["patches"].items():
        for tile in {p["tile"] for p in patches}:
            height, width = TILES[tile]
            image = np.zeros((height, width, 4), np.uint8)
            for p in (p for p in patches if p["tile"] == tile):
                with Image.open(root / split / "images" / f"{p['id']}.png") as stored:
                    assert stored.mode == "RGBA"
                    patch = np.array(stored)
                assert patch.shape == (PATCH, PATCH, 4)
                h, w = p["height"], p["width"]
                assert (patch[h:] == 0).all() and (patch[:, w:] == 0).all()
                image[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch[:h, :w]
            np.testing.assert_array_equal(image, rgbir[tile], err_msg=f"{split} {tile}")


def test_irrg_patches_keep_the_band_order(raw, tmp_path):
    _, rgbir = raw
    manifest = prepare_potsdam(raw[0], tmp_path / "irrg", patch_size=PATCH, bands="IRRG", progress=False)
    assert manifest["image_bands"]["order"] == ["IR", "R", "G"]
    patch = np.array(Image.open(tmp_path / "irrg" / "val" / "images" / "top_potsdam_2_10_00000_00000.png"))
    np.testing.assert_array_equal(patch, rgbir["2_10"][:PATCH, :PATCH][..., [3, 0, 1]])


def test_datamodule_exposes_in_channels_and_normalises_per_band(rgbir_root):
    root, manifest = rgbir_root
    dm = PotsdamDataModule(str(root), batch_size=2, num_workers=0, crop_size=24, bands="RGBIR")
    assert dm.in_channels == 4 and (dm.mean, dm.std) == RGBIR_STATS  # known before setup
    assert PotsdamDataModule(str(root), bands="IRRG").in_channels == 3
    assert (PotsdamDataModule(str(root), bands="IRRG").mean, PotsdamDataModule(str(root)).std) == (
        IRRG_STATS[0],
        IMAGENET_STD,
    )
    assert PotsdamDataModule(str(root)).mean == IMAGENET_MEAN  # RGB: exactly ImageNet
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # crops, flips and rot90 on 4 channels
    assert batch["image"].shape == (2, 4, 24, 24) and batch["mask"].shape == (2, 24, 24)
    assert torch.nn.Conv2d(dm.in_channels, 6, 1)(batch["image"]).shape == (2, 6, 24, 24)
    sample = dm.val_dataset[0]
    stored = np.array(Image.open(root / "val" / "images" / f"{manifest['patches']['val'][0]['id']}.png"))
    mean, std = (torch.tensor(v).view(4, 1, 1) for v in RGBIR_STATS)
    expected = (torch.from_numpy(stored).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(sample["image"], expected)
    assert PotsdamDataset(root, "val")[0]["image"].shape[0] == 4  # the dataset reads the bands itself


def test_datamodule_bands_must_match_the_prepared_root(rgbir_root):
    with pytest.raises(DataError, match=r"prepared with bands 'RGBIR' but bands 'RGB' were requested"):
        PotsdamDataModule(str(rgbir_root[0]), num_workers=0).setup("fit")


def test_a_three_band_file_under_the_rgbir_name_is_an_error(raw, tmp_path):
    src = tmp_path / "raw"
    shutil.copytree(raw[0], src)
    bad = rgbir_path(src, "2_11")
    tifffile.imwrite(bad, np.zeros((*TILES["2_11"], 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=rf"{bad}: expected a 4-band RGBIR image, got shape \(70, 53, 3\)"):
        prepare_potsdam(src, tmp_path / "dst", patch_size=PATCH, bands="RGBIR", progress=False)
