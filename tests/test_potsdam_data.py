"""Potsdam data path: colour decoding, tiling, preparation (manifest, splits, idempotence, atomicity),
bad input, and the dataset/datamodule batch contract. Fixtures come from tests/data/potsdam/data.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.io import read_image
from rsseg.data.core.tiling import extract_patch, patch_grid, split_grid
from rsseg.data.datasets.isprs.labels import ISPRS_PALETTE, decode_isprs_label
from rsseg.data.datasets.potsdam import (
    OFFICIAL_TEST_TILES,
    OFFICIAL_TRAIN_TILES,
    PROTOCOLS,
    PotsdamDataModule,
    PotsdamDataset,
    potsdam_spec,
    prepare_potsdam,
)
from tests.data.potsdam.data import TILES, UNKNOWN_PIXELS, UNKNOWN_TILE, write_potsdam

PATCH, STRIDE = 32, 24  # overlapping windows, and every fixture tile needs padding somewhere
SPLIT_OF = {"2_11": "train", "3_10": "train", "2_10": "val", "2_13": "test", "4_15": "test"}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam_raw")
    return root, write_potsdam(root)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam_prepared") / "root"
    with pytest.warns(DataWarning):
        manifest = prepare_potsdam(raw[0], root, patch_size=PATCH, stride=STRIDE, progress=False)
    return root, manifest


def copy_raw(raw, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(raw[0], copy)
    return copy


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def no_leftovers(dst: Path) -> bool:
    return not [p for p in dst.parent.iterdir() if p.name.startswith(f"{dst.name}.")]


# --------------------------------------------------------------------------------------------------
# ISPRS colours


def test_decode_maps_each_official_colour_and_sends_boundary_and_unknown_to_ignore():
    colours = [*ISPRS_PALETTE, (0, 0, 0), (128, 64, 32), (254, 255, 255)]
    rgb = np.array(colours, dtype=np.uint8).reshape(1, -1, 3)
    mask, n_boundary, n_unknown = decode_isprs_label(rgb)
    assert mask.dtype == np.uint8
    assert mask[0].tolist() == [0, 1, 2, 3, 4, 5, 255, 255, 255]
    assert (n_boundary, n_unknown) == (1, 2)


def test_decode_is_rgb_not_bgr_blue_is_building_red_is_clutter():
    mask, _, _ = decode_isprs_label(np.array([[[0, 0, 255], [255, 0, 0]]], dtype=np.uint8))
    assert mask.tolist() == [[1, 5]]


def test_fixture_tiff_decodes_to_its_ground_truth_through_read_image(raw):
    root, truth = raw
    mask, _, n_unknown = decode_isprs_label(read_image(root / f"top_potsdam_{UNKNOWN_TILE}_label.tif"))
    np.testing.assert_array_equal(mask, truth[UNKNOWN_TILE]["full"])
    assert n_unknown == UNKNOWN_PIXELS


# --------------------------------------------------------------------------------------------------
# Tiling


@pytest.mark.parametrize(
    ("height", "width", "size", "stride", "ys", "xs"),
    [
        (1000, 1337, 512, 512, [0, 512], [0, 512, 1024]),
        (1000, 1337, 512, 256, [0, 256, 512], [0, 256, 512, 768, 1024]),
        (6000, 6000, 1024, 1024, [0, 1024, 2048, 3072, 4096, 5120], [0, 1024, 2048, 3072, 4096, 5120]),
        (512, 512, 512, 256, [0], [0]),  # an exact fit needs one window, not a duplicate
        (5, 300, 8, 8, [0], list(range(0, 300, 8))),  # smaller than one window: padded
    ],
)
def test_patch_grid_hand_computed_cases(height, width, size, stride, ys, xs):
    assert patch_grid(height, width, size, stride) == [(y, x) for y in ys for x in xs]


@pytest.mark.parametrize(("height", "width"), [(70, 53), (64, 97), (53, 70), (40, 45), (1, 1), (97, 64)])
@pytest.mark.parametrize(("size", "stride"), [(32, 32), (32, 24), (32, 7), (16, 1)])
def test_patch_grid_covers_every_pixel_with_the_stride_and_reaches_the_edges(height, width, size, stride):
    grid = patch_grid(height, width, size, stride)
    covered = np.zeros((height, width), int)
    for y, x in grid:
        covered[y : y + size, x : x + size] += 1
    assert covered.min() >= 1
    ys, xs = sorted({y for y, _ in grid}), sorted({x for _, x in grid})
    assert ys[0] == xs[0] == 0
    assert all(b - a == stride for a, b in zip(ys, ys[1:], strict=False))
    assert all(b - a == stride for a, b in zip(xs, xs[1:], strict=False))
    assert ys[-1] + size >= height and xs[-1] + size >= width
    assert len(ys) == 1 or ys[-2] + size < height  # the last window is the first to reach the edge
    assert len(xs) == 1 or xs[-2] + size < width


@pytest.mark.parametrize(("size", "stride"), [(32, 0), (32, 33), (0, 1)])
def test_patch_grid_rejects_bad_arguments(size, stride):
    with pytest.raises(ValueError):
        patch_grid(100, 100, size, stride)


def test_extract_patch_pads_masks_with_ignore_and_images_with_zero():
    mask = np.arange(70 * 53, dtype=np.int64).reshape(70, 53).astype(np.uint8) % 6
    image = np.full((70, 53, 3), 200, np.uint8)
    patch = extract_patch(mask, 64, 32, 32, 255)
    assert patch.shape == (32, 32)
    np.testing.assert_array_equal(patch[:6, :21], mask[64:, 32:])
    assert (patch[6:] == 255).all() and (patch[:, 21:] == 255).all()
    image_patch = extract_patch(image, 64, 32, 32, 0)
    assert image_patch.shape == (32, 32, 3)
    assert (
        (image_patch[:6, :21] == 200).all()
        and (image_patch[6:] == 0).all()
        and (image_patch[:, 21:] == 0).all()
    )


# --------------------------------------------------------------------------------------------------
# Preparation


def test_manifest_records_parameters_splits_and_counts(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == {k: v for k, v in manifest.items() if k != "already_prepared"}
    assert manifest["dataset"] == "potsdam" and manifest["rsseg_version"]
    assert manifest["parameters"] == {
        "protocol": "unetformer",
        "patch_size": PATCH,
        "stride": STRIDE,
        "test_labels": "eroded",
        "bands": "RGB",
        "image_fill": 0,
        "mask_fill": 255,
    }
    splits = manifest["splits"]
    assert {s: splits[s]["tiles"] for s in splits} == {
        "train": ["2_11", "3_10"],
        "val": ["2_10"],
        "test": ["2_13", "4_15"],
    }
    assert {s: splits[s]["label_kind"] for s in splits} == {"train": "full", "val": "full", "test": "eroded"}
    assert manifest["excluded_tiles_found"] == ["7_10"] and "7_10" in manifest["protocol"]["excluded_tiles"]
    assert "7_10" not in manifest["tiles"]
    assert not manifest["complete"] and len(splits["train"]["missing_tiles"]) == 20
    assert len(splits["test"]["missing_tiles"]) == 12 and splits["val"]["missing_tiles"] == []
    for split, info in splits.items():
        tiles = [t for t, s in SPLIT_OF.items() if s == split]
        kind = "eroded" if split == "test" else "full"
        expected = sum(np.bincount(truth[t][kind].ravel(), minlength=256)[:6] for t in tiles)
        assert info["pixels_per_class"] == expected.tolist()
        grid = [split_grid(*TILES[t], PATCH, STRIDE, overlapping=split == "train") for t in tiles]
        assert info["num_patches"] == sum(map(len, grid))
        assert info["num_patches"] == len(manifest["patches"][split])
    assert splits["train"]["unknown_pixels"] == UNKNOWN_PIXELS
    assert splits["test"]["boundary_pixels"] == sum(
        int((truth[t]["eroded"] == 255).sum()) for t in ("2_13", "4_15")
    )
    assert splits["train"]["boundary_pixels"] == 0
    sources = {s["path"]: s for s in manifest["sources"]}
    assert set(sources) == {f"2_Ortho_RGB/top_potsdam_{t}_RGB.tif" for t in SPLIT_OF} | {
        f"top_potsdam_{t}_label.tif" for t in ("2_11", "3_10", "2_10")
    } | {f"5_Labels_all_noBoundary/top_potsdam_{t}_label_noBoundary.tif" for t in ("2_13", "4_15")}
    assert all(s["size"] == (raw[0] / p).stat().st_size for p, s in sources.items())
    first = manifest["patches"]["train"][0]
    assert first == {
        "id": "top_potsdam_2_11_00000_00000",
        "tile": "2_11",
        "y": 0,
        "x": 0,
        "height": 32,
        "width": 32,
        "tile_height": 70,
        "tile_width": 53,
    }


def test_prepared_patches_reassemble_into_the_tiles_exactly(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    for split, patches in manifest["patches"].items():
        by_tile: dict[str, list] = {}
        for patch in patches:
            by_tile.setdefault(patch["tile"], []).append(patch)
        for tile, tile_patches in by_tile.items():
            height, width = TILES[tile]
            mask = np.full((height, width), 77, np.uint8)  # 77 is neither a class nor ignore
            image = np.zeros((height, width, 3), np.uint8)
            for p in tile_patches:
                patch_mask = png(root / split / "masks" / f"{p['id']}.png")
                patch_image = png(root / split / "images" / f"{p['id']}.png")
                assert patch_mask.shape == (PATCH, PATCH) and patch_image.shape == (PATCH, PATCH, 3)
                h, w = p["height"], p["width"]
                assert (h, w) == (min(PATCH, height - p["y"]), min(PATCH, width - p["x"]))
                assert (patch_mask[h:] == 255).all() and (patch_mask[:, w:] == 255).all()  # padding = ignore
                assert (patch_image[h:] == 0).all() and (patch_image[:, w:] == 0).all()
                mask[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch_mask[:h, :w]
                image[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch_image[:h, :w]
            kind = "eroded" if split == "test" else "full"
            np.testing.assert_array_equal(mask, truth[tile][kind], err_msg=f"{split} {tile}")
            np.testing.assert_array_equal(image, truth[tile]["image"], err_msg=f"{split} {tile}")


def test_stride_applies_to_training_and_evaluation_patches_never_overlap(prepared):
    _, manifest = prepared
    train_steps = {p["x"] for p in manifest["patches"]["train"]} | {p["y"] for p in manifest["patches"]["train"]}
    assert STRIDE in train_steps  # overlapping training windows
    for split in ("val", "test"):
        origins = [(p["y"], p["x"]) for p in manifest["patches"][split]]
        assert origins and all(y % PATCH == 0 and x % PATCH == 0 for y, x in origins), split


def test_test_masks_use_eroded_labels_and_train_masks_full_labels(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    corner = png(root / "test" / "masks" / "top_potsdam_2_13_00000_00000.png")  # a window without padding
    np.testing.assert_array_equal(corner == 255, truth["2_13"]["eroded"][:PATCH, :PATCH] == 255)
    assert (corner == 255).any()  # boundaries are ignored in test
    patch = png(root / "train" / "masks" / "top_potsdam_2_11_00000_00000.png")
    assert not (patch == 255).any()  # full labels: no boundary, and this window has no padding


def test_unknown_colours_warn_with_file_name_and_count(raw, tmp_path):
    with pytest.warns(DataWarning, match=rf"top_potsdam_{UNKNOWN_TILE}_label\.tif: {UNKNOWN_PIXELS} pixels"):
        prepare_potsdam(raw[0], tmp_path / "dst", patch_size=64, progress=False)


def test_strict_mode_refuses_unknown_colours_and_writes_nothing(raw, tmp_path):
    message = rf"top_potsdam_{UNKNOWN_TILE}_label\.tif: {UNKNOWN_PIXELS} pixels .*strict mode"
    with pytest.raises(DataError, match=message):
        prepare_potsdam(raw[0], tmp_path / "dst", patch_size=64, progress=False, strict=True)
    assert not (tmp_path / "dst").exists() and not list(tmp_path.iterdir())


def test_prepare_twice_does_nothing_the_second_time(raw, tmp_path, caplog):
    dst = tmp_path / "dst"
    with pytest.warns(DataWarning):
        first = prepare_potsdam(raw[0], dst, patch_size=PATCH, progress=False)
    assert first["already_prepared"] is False
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    with caplog.at_level(logging.INFO, logger="rsseg"):
        second = prepare_potsdam(raw[0], dst, patch_size=PATCH, progress=False)
    assert second["already_prepared"] is True
    assert "already prepared" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == stamps


def test_changed_parameters_need_force_and_force_rebuilds(raw, tmp_path):
    dst = tmp_path / "dst"
    with pytest.warns(DataWarning):
        prepare_potsdam(raw[0], dst, patch_size=PATCH, progress=False)
    with pytest.raises(DataError, match=r"patch_size: 32 there, 48 requested.*--force"):
        prepare_potsdam(raw[0], dst, patch_size=48, progress=False)
    with pytest.raises(DataError, match="protocol"):
        prepare_potsdam(raw[0], dst, patch_size=PATCH, protocol="official", progress=False)
    with pytest.warns(DataWarning):
        rebuilt = prepare_potsdam(raw[0], dst, patch_size=48, force=True, progress=False)
    assert rebuilt["already_prepared"] is False
    assert json.loads((dst / "manifest.json").read_text())["parameters"]["patch_size"] == 48
    assert not (dst / "train" / "images" / "top_potsdam_2_11_00032_00000.png").exists()  # old grid gone
    assert (dst / "train" / "images" / "top_potsdam_2_11_00022_00000.png").exists()  # 70 px: last row at 70 - 48
    assert no_leftovers(dst)


def test_changed_source_files_trigger_a_rebuild(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    dst = tmp_path / "dst"
    with pytest.warns(DataWarning):
        prepare_potsdam(src, dst, patch_size=PATCH, progress=False)
    os.utime(src / "2_Ortho_RGB" / "top_potsdam_2_11_RGB.tif", ns=(1, 1))
    with pytest.warns(DataWarning):
        assert prepare_potsdam(src, dst, patch_size=PATCH, progress=False)["already_prepared"] is False


def test_official_protocol_has_24_train_14_test_tiles_and_no_val(raw, tmp_path):
    assert len(OFFICIAL_TRAIN_TILES) == 24 and len(OFFICIAL_TEST_TILES) == 14
    unetformer = PROTOCOLS["unetformer"].splits
    assert len(unetformer["train"]) == 22 and unetformer["val"] == ("2_10",)
    assert "7_10" not in unetformer["train"] and set(unetformer["test"]) == set(OFFICIAL_TEST_TILES)
    with pytest.warns(DataWarning):
        manifest = prepare_potsdam(
            raw[0], tmp_path / "dst", patch_size=64, protocol="official", progress=False
        )
    assert set(manifest["splits"]) == {"train", "test"}
    assert manifest["splits"]["train"]["tiles"] == ["2_10", "2_11", "3_10", "7_10"]
    assert not (tmp_path / "dst" / "val").exists()


def test_spec_declares_the_metric_convention():
    spec = potsdam_spec()
    assert spec.num_classes == 6 and spec.ignore_index == 255
    assert spec.exclude_from_mean == (5,) and spec.eroded_test_labels
    assert potsdam_spec("official").exclude_from_mean == ()  # mmseg convention: clutter in the means
    assert not potsdam_spec(test_labels="full").eroded_test_labels
    with pytest.raises(ValueError, match="protocol"):
        potsdam_spec("mmseg")


# --------------------------------------------------------------------------------------------------
# Bad input


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'nowhere'}: .*does not exist"):
        prepare_potsdam(tmp_path / "nowhere", tmp_path / "dst", progress=False)


def test_image_label_size_mismatch_names_both_files(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    label = src / "top_potsdam_2_11_label.tif"
    tifffile.imwrite(label, np.full((70, 52, 3), 255, np.uint8), photometric="rgb")
    with pytest.raises(
        DataError, match=r"top_potsdam_2_11_RGB\.tif is 70×53 but .*top_potsdam_2_11_label\.tif is 70×52"
    ):
        prepare_potsdam(src, tmp_path / "dst", patch_size=PATCH, progress=False)
    assert not (tmp_path / "dst").exists() and no_leftovers(tmp_path / "dst")


def test_corrupt_tiff_mid_preparation_leaves_nothing_behind(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    image = src / "2_Ortho_RGB" / "top_potsdam_4_15_RGB.tif"  # the last tile cut: others are done by then
    image.write_bytes(image.read_bytes()[:-500])
    dst = tmp_path / "dst"
    with pytest.warns(DataWarning), pytest.raises(DataError, match=rf"{image}: cannot read image"):
        prepare_potsdam(src, dst, patch_size=PATCH, progress=False)
    assert not dst.exists()
    assert no_leftovers(dst)


def test_failed_forced_rebuild_keeps_the_previous_preparation(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    dst = tmp_path / "dst"
    with pytest.warns(DataWarning):
        prepare_potsdam(src, dst, patch_size=PATCH, progress=False)
    before = (dst / "manifest.json").read_text()
    (src / "2_Ortho_RGB" / "top_potsdam_4_15_RGB.tif").write_bytes(b"II*\x00garbage")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="top_potsdam_4_15_RGB.tif"):
        prepare_potsdam(src, dst, patch_size=PATCH, force=True, progress=False)
    assert (dst / "manifest.json").read_text() == before
    assert no_leftovers(dst)


def test_missing_label_of_a_present_tile_is_named(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    (src / "5_Labels_all_noBoundary" / "top_potsdam_2_13_label_noBoundary.tif").unlink()
    with pytest.raises(DataError, match=r"missing label file top_potsdam_2_13_label_noBoundary\.tif"):
        prepare_potsdam(src, tmp_path / "dst", progress=False)
    # the full labels are enough when test_labels="full"
    with pytest.warns(DataWarning):
        manifest = prepare_potsdam(src, tmp_path / "dst", patch_size=64, test_labels="full", progress=False)
    assert (
        manifest["splits"]["test"]["label_kind"] == "full"
        and manifest["splits"]["test"]["boundary_pixels"] == 0
    )


def test_duplicate_files_and_empty_split_are_errors(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    (src / "extra").mkdir()
    shutil.copy(src / "top_potsdam_2_11_label.tif", src / "extra")
    with pytest.raises(DataError, match=r"duplicate Potsdam label files for tile 2_11"):
        prepare_potsdam(src, tmp_path / "dst", progress=False)
    shutil.rmtree(src / "extra")
    (src / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif").unlink()  # the only val tile
    with pytest.raises(DataError, match=r"none of the 1 val tiles"):
        prepare_potsdam(src, tmp_path / "dst", progress=False)


def test_refuses_to_overwrite_a_folder_that_is_not_a_prepared_root(raw, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare_potsdam(raw[0], dst, force=True, progress=False)
    assert (dst / "thesis.tex").read_text() == "precious"


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule


def test_datamodule_batches_follow_the_contract(prepared):
    root, manifest = prepared
    dm = PotsdamDataModule(str(root), batch_size=4, num_workers=0, crop_size=24)
    assert dm.num_classes == 6 and dm.spec.exclude_from_mean == (5,)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, 24, 24)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (4, 24, 24)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert dm.train_dataloader().drop_last

    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, PATCH, PATCH) and val["mask"].shape == (4, PATCH, PATCH)
    first = manifest["patches"]["val"][0]
    assert val["meta"]["id"][0] == first["id"] and val["meta"]["tile"][0] == "2_10"
    for key in ("y", "x", "height", "width", "tile_height", "tile_width"):
        assert val["meta"][key][0].item() == first[key]
    raw_image = torch.from_numpy(png(root / "val" / "images" / f"{first['id']}.png"))
    expected = (raw_image.permute(2, 0, 1).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(val["image"][0], expected)
    raw_mask = png(root / "val" / "masks" / f"{first['id']}.png")
    assert torch.equal(val["mask"][0], torch.from_numpy(raw_mask.astype(np.int64)))

    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert (test["mask"] == 255).any()  # eroded boundaries
    dm.setup("predict")
    assert len(dm.predict_dataset) == manifest["splits"]["test"]["num_patches"]


def test_train_crop_larger_than_patch_pads_mask_with_ignore(prepared):
    dataset = PotsdamDataset(prepared[0], "train", transform=None)
    dm = PotsdamDataModule(str(prepared[0]), batch_size=2, num_workers=0, crop_size=PATCH + 8, augment=False)
    dm.setup("fit")
    sample = dm.train_dataset[0]
    crop = PATCH + 8
    assert sample["image"].shape == (3, crop, crop) and sample["mask"].shape == (crop, crop)
    assert (sample["mask"] == 255).sum() >= crop**2 - PATCH**2
    assert torch.equal(sample["mask"][4 : 4 + PATCH, 4 : 4 + PATCH], dataset[0]["mask"])  # centred, unchanged


def test_eval_loaders_shard_without_duplicates_under_ddp(prepared):
    dm = PotsdamDataModule(str(prepared[0]), batch_size=4, num_workers=0)
    dm.setup("test")
    seen = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 3, "rank": rank})
        seen += list(dm.test_dataloader().sampler)
    assert sorted(seen) == list(range(len(dm.test_dataset)))


def test_lightning_fit_runs_with_and_without_a_val_split(prepared, raw, tmp_path):
    import lightning

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 6, 1)
            self.val_batches = 0

        def training_step(self, batch, _):
            logits = self.head(batch["image"])
            return torch.nn.functional.cross_entropy(logits, batch["mask"], ignore_index=255)

        def validation_step(self, batch, _):
            self.val_batches += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    official = tmp_path / "official"
    with pytest.warns(DataWarning):
        prepare_potsdam(raw[0], official, patch_size=PATCH, protocol="official", progress=False)
    for root, protocol, val_batches in ((prepared[0], "unetformer", 1), (official, "official", 0)):
        model = Tiny()
        trainer = lightning.Trainer(
            fast_dev_run=1,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        dm = PotsdamDataModule(str(root), batch_size=2, num_workers=0, crop_size=16, protocol=protocol)
        trainer.fit(model, datamodule=dm)
        assert model.val_batches == val_batches
    with pytest.raises(DataError, match="no val split"):
        PotsdamDataModule(str(official), num_workers=0, protocol="official").setup("validate")


def test_datamodule_explains_raw_missing_and_foreign_roots(raw, prepared, tmp_path):
    with pytest.raises(DataError, match=rf"raw Potsdam download.*rsseg prepare potsdam --src {raw[0]}"):
        PotsdamDataModule(str(raw[0])).setup("fit")
    with pytest.raises(DataError, match=rf"{tmp_path / 'missing'}: folder does not exist"):
        PotsdamDataModule(str(tmp_path / "missing")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"not a prepared Potsdam root: .*empty \(no manifest\.json\)"):
        PotsdamDataModule(str(tmp_path / "empty")).setup("test")
    with pytest.raises(DataError, match=r"prepared with protocol 'unetformer' but protocol 'official'"):
        PotsdamDataModule(str(prepared[0]), protocol="official").setup("fit")


def test_dataset_names_missing_and_mismatched_patch_files(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared[0], root)
    dataset = PotsdamDataset(root, "val")
    dataset.image_path(0).unlink()
    with pytest.raises(DataError, match=rf"{dataset.image_path(0)}: file not found"):
        dataset[0]
    Image.fromarray(np.zeros((PATCH, PATCH - 1), np.uint8)).save(dataset.mask_path(1))
    with pytest.raises(
        DataError, match=rf"size mismatch: .* but {dataset.mask_path(1)} is {PATCH}×{PATCH - 1}"
    ):
        dataset[1]
    truncated = dataset.mask_path(2).read_bytes()
    dataset.mask_path(2).write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(DataError, match=rf"{dataset.mask_path(2)}: cannot read image"):
        dataset[2]


def test_parallel_preparation_matches_serial(prepared, raw, tmp_path):
    root, manifest = prepared
    with pytest.warns(DataWarning, match=UNKNOWN_TILE):
        parallel = prepare_potsdam(
            raw[0], tmp_path / "dst", patch_size=PATCH, stride=STRIDE, progress=False, workers=2
        )
    drop = ("created", "already_prepared")
    assert {k: v for k, v in parallel.items() if k not in drop} == {
        k: v for k, v in manifest.items() if k not in drop
    }
    for path in sorted(root.rglob("*.png")):
        assert (tmp_path / "dst" / path.relative_to(root)).read_bytes() == path.read_bytes()


def _crops(root: Path, seed: int, workers: int) -> list[torch.Tensor]:
    from lightning import seed_everything

    from rsseg.data.datasets.potsdam import PotsdamDataModule

    seed_everything(seed)
    data = PotsdamDataModule(str(root), batch_size=1, crop_size=32, num_workers=workers, persistent_workers=False)
    data.setup("fit")
    return [batch["mask"][0] for batch, _ in zip(data.train_dataloader(), range(8), strict=False)]


def test_augmentation_follows_the_seed_and_differs_between_workers(tiny_potsdam):
    """albumentations seeds its own generator: without seeding, every forked worker drew the same crops."""
    first, again, other = _crops(tiny_potsdam, 3, 0), _crops(tiny_potsdam, 3, 0), _crops(tiny_potsdam, 4, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    with_workers = _crops(tiny_potsdam, 3, 2)
    assert all(torch.equal(a, b) for a, b in zip(with_workers, _crops(tiny_potsdam, 3, 2), strict=True))


class _Draws(torch.utils.data.Dataset):
    """Each sample is the next number from the transform's generator: what a random crop would draw."""

    def __init__(self):
        from rsseg.data.core.transforms import seeded_compose

        self.transform = seeded_compose([])

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return int(self.transform.random_generator.integers(1 << 30))


@pytest.mark.parametrize("init", [True, False])
def test_workers_draw_different_augmentations(init):
    from rsseg.data.core.transforms import seed_augmentation

    loader = torch.utils.data.DataLoader(_Draws(), batch_size=1, num_workers=2,
                                         worker_init_fn=seed_augmentation if init else None)
    draws = [int(x) for x in loader]  # worker 0 gives samples 0 and 2, worker 1 samples 1 and 3
    assert (draws[0] != draws[1]) == init  # without reseeding both workers repeat the same stream
