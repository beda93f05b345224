"""UAVid data path: class order and colours, pairing, patches without dropped rows, manifest, errors,
the datamodule contract, and predict → stitched submission PNGs. Fixtures: tests/data/uavid/data.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.tiling import split_grid
from rsseg.data.datasets.uavid.datamodule import UAVidDataModule
from rsseg.data.datasets.uavid.labels import (
    OFFICIAL_SEQUENCES,
    OFFICIAL_TO_GEOSEG,
    SEGEARTH_OV_MERGE,
    UAVID_CLASSES,
    UAVID_PALETTE,
    decode_uavid_label,
    encode_uavid_label,
    uavid_spec,
)
from rsseg.data.datasets.uavid.prepare import find_release_frames, prepare_uavid
from rsseg.data.submissions.uavid import FrameStitcher, UAVidSubmissionWriter, write_uavid_submission
from tests.data.uavid.data import (
    FRAMES,
    SMALL,
    UAVID_RGB,
    UNKNOWN_FRAME,
    UNKNOWN_PIXELS,
    write_uavid,
)

PATCH, STRIDE = 32, 24  # overlapping train/test windows; val is always cut with stride = PATCH
SPLIT_OF = {"uavid_train": "train", "uavid_val": "val", "uavid_test": "test"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("uavid_raw") / "uavid_v1.5_official_release_image"
    return root, write_uavid(root)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("uavid_prepared") / "root"
    with pytest.warns(DataWarning):
        manifest = prepare_uavid(raw[0].parent, root, patch_size=PATCH, stride=STRIDE, progress=False)
    return root, manifest


def copy_raw(raw, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(raw[0], copy)
    return copy


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def frames_of(folder: str) -> list[tuple[str, str, tuple[int, int]]]:
    return [(seq, frame, size) for (f, seq), items in FRAMES.items() if f == folder for frame, size in items]


# --------------------------------------------------------------------------------------------------
# Classes and colours


def test_class_order_and_colours_are_the_official_toolkit_table():
    assert UAVID_CLASSES == (
        "background_clutter", "building", "road", "static_car", "tree", "low_vegetation", "human", "moving_car",
    )  # fmt: skip
    assert np.array_equal(np.array(UAVID_PALETTE, np.uint8), UAVID_RGB)
    spec = uavid_spec()
    assert spec.num_classes == 8 and spec.ignore_index == 255 and spec.exclude_from_mean == ()
    assert not spec.eroded_test_labels and spec.palette == UAVID_PALETTE
    # GeoSeg's index per class, from docs/datasets.md §2.2: building 0, road 1, tree 2, low veg 3, moving car 4,
    # static car 5, human 6, clutter 7
    geoseg = {"building": 0, "road": 1, "tree": 2, "low_vegetation": 3, "moving_car": 4, "static_car": 5,
              "human": 6, "background_clutter": 7}  # fmt: skip
    assert OFFICIAL_TO_GEOSEG == tuple(geoseg[name] for name in UAVID_CLASSES)
    assert SEGEARTH_OV_MERGE == (0, 1, 2, 3, 4, 5, 6, 3)  # moving car merged into static car


def test_official_sequence_lists_have_the_release_sizes():
    assert [len(OFFICIAL_SEQUENCES[f]) for f in ("uavid_train", "uavid_val", "uavid_test")] == [20, 7, 15]
    everything = [s for seqs in OFFICIAL_SEQUENCES.values() for s in seqs]
    assert sorted(everything, key=lambda s: int(s[3:])) == [f"seq{n}" for n in range(1, 43)]
    assert "seq16" in OFFICIAL_SEQUENCES["uavid_val"] and "seq21" in OFFICIAL_SEQUENCES["uavid_test"]


def test_decode_maps_each_colour_and_sends_unknown_to_ignore():
    colours = [*map(tuple, UAVID_RGB.tolist()), (255, 255, 255), (0, 0, 128), (129, 0, 0)]
    mask, n_unknown = decode_uavid_label(np.array(colours, np.uint8).reshape(1, -1, 3))
    assert mask.dtype == np.uint8
    assert mask[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 255, 255, 255]
    assert n_unknown == 3
    # RGB, not BGR: (128, 0, 0) is building, its BGR reading (0, 0, 128) is no class
    assert decode_uavid_label(np.array([[[128, 0, 0], [0, 0, 128]]], np.uint8))[0].tolist() == [[1, 255]]


def test_encode_gives_official_colours_and_refuses_other_values():
    mask = np.arange(8, dtype=np.uint8).reshape(2, 4)
    assert np.array_equal(encode_uavid_label(mask), UAVID_RGB[mask])
    with pytest.raises(ValueError, match=r"0–7, found \[8\]"):
        encode_uavid_label(np.array([[8]]))
    with pytest.raises(ValueError, match="255"):
        encode_uavid_label(np.array([[255]]))
    assert encode_uavid_label(np.array([[255, 1]]), ignore_rgb=(255, 255, 255)).tolist() == [
        [[255, 255, 255], [128, 0, 0]]
    ]


# --------------------------------------------------------------------------------------------------
# Discovery and preparation


def test_frames_pair_by_sequence_and_frame_in_numeric_order(raw):
    frames = find_release_frames(raw[0] / "uavid_train", labelled=True)
    assert [f.key for f in frames] == [
        "seq1/000000", "seq1/000100", "seq1/000900", "seq2/000000", "seq2/000100", "seq10/000000",
    ]  # fmt: skip
    for f in frames:
        assert f.image == raw[0] / "uavid_train" / f.seq / "Images" / f"{f.frame}.png"
        assert f.label == raw[0] / "uavid_train" / f.seq / "Labels" / f"{f.frame}.png"
    test = find_release_frames(raw[0] / "uavid_test", labelled=False)
    assert [f.key for f in test] == ["seq21/000000", "seq21/000100", "seq42/000000"]
    assert all(f.label is None for f in test)


def test_manifest_records_parameters_splits_and_counts(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == {k: v for k, v in manifest.items() if k != "already_prepared"}
    assert manifest["dataset"] == "uavid"
    assert manifest["parameters"] == {
        "protocol": "official", "patch_size": PATCH, "stride": STRIDE, "val_stride": PATCH,
        "label_order": "uavidtoolkit", "image_fill": 0, "mask_fill": 255,
    }  # fmt: skip
    assert manifest["classes"] == list(UAVID_CLASSES) and manifest["exclude_from_mean"] == []
    splits = manifest["splits"]
    assert set(splits) == {"train", "val", "test"} and manifest["unlabelled_splits"] == ["test"]
    assert splits["train"]["sequences"] == ["uavid_train/seq1", "uavid_train/seq2", "uavid_train/seq10"]
    assert splits["train"]["frame_sizes"] == {"45x80": 3, "45x85": 3}
    for folder, split in SPLIT_OF.items():
        info, frames = splits[split], frames_of(folder)
        assert info["num_frames"] == len(frames)
        grid = [split_grid(*size, PATCH, STRIDE, overlapping=split != "val") for *_, size in frames]
        assert info["num_patches"] == sum(map(len, grid))
        assert info["num_patches"] == len(manifest["patches"][split])
        assert info["labelled"] == (split != "test")
        if split == "test":
            assert info["pixels_per_class"] is None
        else:
            expected = sum(np.bincount(truth[(folder, s, f)]["mask"].ravel(), minlength=256)[:8] for s, f, _ in frames)
            assert info["pixels_per_class"] == expected.tolist()
    assert splits["train"]["unknown_pixels"] == UNKNOWN_PIXELS and splits["val"]["unknown_pixels"] == 0
    # 2 rows × 4 columns for a 45×85 frame with 32-px windows every 24 px
    assert manifest["frames"]["uavid_train/seq10/000000"]["num_patches"] == 8
    assert manifest["frames"]["uavid_test/seq42/000000"]["label"] is None
    assert manifest["nonstandard_sequences"] == {}
    assert manifest["patches"]["train"][0] == {
        "id": "seq1_000000_0000_0000", "tile": "seq1/000000", "seq": "seq1", "frame": "000000",
        "y": 0, "x": 0, "height": 32, "width": 32, "tile_height": 45, "tile_width": 85,
    }  # fmt: skip
    sources = {s["path"] for s in manifest["sources"]}
    assert "uavid_v1.5_official_release_image/uavid_test/seq42/Images/000000.png" in sources
    assert not (root / "test" / "masks").exists()


def test_no_rows_dropped_patches_reassemble_into_the_frames_exactly(prepared, raw):
    root, manifest = prepared
    _, truth = raw
    for folder, split in SPLIT_OF.items():
        by_frame: dict[str, list] = {}
        for patch in manifest["patches"][split]:
            by_frame.setdefault(patch["tile"], []).append(patch)
        assert len(by_frame) == len(frames_of(folder))
        for key, patches in by_frame.items():
            seq, frame = key.split("/")
            expected = truth[(folder, seq, frame)]
            height, width = expected["mask"].shape
            image = np.zeros((height, width, 3), np.uint8)
            mask = np.full((height, width), 77, np.uint8)  # 77 is neither a class nor ignore
            for p in patches:
                h, w = p["height"], p["width"]
                assert (h, w) == (min(PATCH, height - p["y"]), min(PATCH, width - p["x"]))
                patch_image = png(root / split / "images" / f"{p['id']}.png")
                assert patch_image.shape == (PATCH, PATCH, 3)
                assert (patch_image[h:] == 0).all() and (patch_image[:, w:] == 0).all()
                image[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch_image[:h, :w]
                if split != "test":
                    patch_mask = png(root / split / "masks" / f"{p['id']}.png")
                    assert (patch_mask[h:] == 255).all() and (patch_mask[:, w:] == 255).all()  # padding = ignore
                    mask[p["y"] : p["y"] + h, p["x"] : p["x"] + w] = patch_mask[:h, :w]
            np.testing.assert_array_equal(image, expected["image"], err_msg=f"{split} {key}")
            if split != "test":
                np.testing.assert_array_equal(mask, expected["mask"], err_msg=f"{split} {key}")


def test_a_2160_px_frame_gives_three_rows_aligned_for_training_padded_with_ignore_for_val(tmp_path):
    src = tmp_path / "src"
    height, width = 2160, 3840
    colours = np.empty((height, width, 3), np.uint8)
    colours[:] = UAVID_RGB[1]  # building …
    colours[-112:] = UAVID_RGB[2]  # … and the bottom 112 rows road: the rows GeoSeg's crop loses (at the top)
    colours[:112] = UAVID_RGB[4]  # top 112 rows tree
    image = np.full((height, width, 3), 90, np.uint8)
    for folder, seq in (("uavid_train", "seq1"), ("uavid_val", "seq16")):
        for sub, array in (("Images", image), ("Labels", colours)):
            (src / folder / seq / sub).mkdir(parents=True)
            Image.fromarray(array).save(src / folder / seq / sub / "000000.png", compress_level=1)
    manifest = prepare_uavid(src, tmp_path / "dst", patch_size=1024, progress=False)
    train, val = manifest["patches"]["train"], manifest["patches"]["val"]
    assert sorted({p["y"] for p in train}) == [0, 1024, 1136]  # last row aligned with the bottom edge
    assert sorted({p["x"] for p in train}) == [0, 1024, 2048, 2816]
    assert len(train) == 12 and {(p["height"], p["width"]) for p in train} == {(1024, 1024)}
    bottom = png(tmp_path / "dst" / "train" / "masks" / "seq1_000000_1136_0000.png")
    assert (bottom[-112:] == 2).all() and (bottom[:-112] == 1).all()
    assert sorted({p["y"] for p in val}) == [0, 1024, 2048]  # val never overlaps: last row padded
    assert len(val) == 12 and {p["height"] for p in val if p["y"] == 2048} == {112}
    last = png(tmp_path / "dst" / "val" / "masks" / "seq16_000000_2048_0000.png")
    assert (last[:112] == 2).all() and (last[112:] == 255).all()
    counts = manifest["splits"]["train"]["pixels_per_class"]
    assert counts[2] == counts[4] == 112 * width and counts[1] == (height - 224) * width
    assert "test" not in manifest["splits"]  # no uavid_test: predict unavailable, preparation still fine


def test_unknown_colours_warn_per_file_and_strict_refuses(raw, tmp_path):
    label = raw[0] / "uavid_train" / "seq2" / "Labels" / "000100.png"
    assert UNKNOWN_FRAME == ("uavid_train", "seq2", "000100")
    with pytest.warns(DataWarning, match=rf"{label}: {UNKNOWN_PIXELS} pixels .*RGB\(255, 255, 255\) × 12"):
        prepare_uavid(raw[0], tmp_path / "dst", patch_size=64, progress=False)
    with pytest.raises(DataError, match=rf"{label}: {UNKNOWN_PIXELS} pixels .*strict"):
        prepare_uavid(raw[0], tmp_path / "strict", patch_size=64, strict=True, progress=False)
    assert not (tmp_path / "strict").exists()


def test_prepare_is_idempotent_and_parameter_changes_need_force(raw, tmp_path, caplog):
    dst = tmp_path / "dst"
    with pytest.warns(DataWarning):
        assert prepare_uavid(raw[0], dst, patch_size=64, progress=False)["already_prepared"] is False
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    with caplog.at_level(logging.INFO, logger="rsseg"):
        assert prepare_uavid(raw[0], dst, patch_size=64, progress=False)["already_prepared"] is True
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == stamps
    with pytest.raises(DataError, match=r"patch_size: 64 there, 48 requested.*--force"):
        prepare_uavid(raw[0], dst, patch_size=48, progress=False)


def test_trainval_protocol_trains_on_train_and_val_without_a_val_split(raw, tmp_path):
    with pytest.warns(DataWarning):
        manifest = prepare_uavid(raw[0], tmp_path / "dst", patch_size=64, protocol="trainval", progress=False)
    assert set(manifest["splits"]) == {"train", "test"} and not (tmp_path / "dst" / "val").exists()
    assert manifest["splits"]["train"]["sequences"] == [
        "uavid_train/seq1", "uavid_train/seq2", "uavid_train/seq10", "uavid_val/seq16",
    ]  # fmt: skip
    assert manifest["splits"]["train"]["num_frames"] == 8
    with pytest.raises(DataError, match="no val split"):
        UAVidDataModule(str(tmp_path / "dst"), num_workers=0, protocol="trainval").setup("validate")
    with pytest.raises(ValueError, match="unknown UAVid protocol"):
        prepare_uavid(raw[0], tmp_path / "x", protocol="geoseg", progress=False)


def test_parallel_preparation_matches_serial(prepared, raw, tmp_path):
    root, manifest = prepared
    with pytest.warns(DataWarning, match="000100.png"):
        parallel = prepare_uavid(
            raw[0].parent, tmp_path / "dst", patch_size=PATCH, stride=STRIDE, progress=False, workers=2
        )
    drop = ("created", "already_prepared")
    assert {k: v for k, v in parallel.items() if k not in drop} == {k: v for k, v in manifest.items() if k not in drop}
    for path in sorted(root.rglob("*.png")):
        assert (tmp_path / "dst" / path.relative_to(root)).read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------------------------------
# Bad input


def test_missing_source_and_missing_release_folders(raw, tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'nowhere'}: UAVid source folder does not exist"):
        prepare_uavid(tmp_path / "nowhere", tmp_path / "dst", progress=False)
    (tmp_path / "zips").mkdir()
    (tmp_path / "zips" / "uavid_v1.5_official_release_image.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"no UAVid release folders .*extract them first"):
        prepare_uavid(tmp_path / "zips", tmp_path / "dst", progress=False)
    src = copy_raw(raw, tmp_path)
    shutil.rmtree(src / "uavid_val")
    with pytest.raises(DataError, match=rf"{src}: no uavid_val folder found"):
        prepare_uavid(src, tmp_path / "dst", progress=False)


def test_unpaired_frames_are_named(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    label = src / "uavid_val" / "seq16" / "Labels" / "000100.png"
    label.rename(label.with_name("000200.png"))
    with pytest.raises(DataError, match=r"Labels/000200\.png: label without an image .*Images/000200\.png is missing"):
        prepare_uavid(src, tmp_path / "dst", progress=False)
    label.with_name("000200.png").unlink()
    with pytest.raises(DataError, match=r"Images/000100\.png: image without a label .*Labels/000100\.png is missing"):
        prepare_uavid(src, tmp_path / "dst", progress=False)


def test_image_label_size_mismatch_names_both_files(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    label = src / "uavid_val" / "seq16" / "Labels" / "000000.png"
    Image.fromarray(np.zeros((SMALL[0], SMALL[1] - 1, 3), np.uint8)).save(label)
    expected = rf"seq16/Images/000000\.png is 45×80 but {label} is 45×79"
    with pytest.warns(DataWarning), pytest.raises(DataError, match=expected):
        prepare_uavid(src, tmp_path / "dst", progress=False)
    assert not (tmp_path / "dst").exists()


@pytest.mark.filterwarnings("ignore::rsseg.data.core.errors.DataWarning")  # train frames are cut before val fails
def test_layout_errors_name_the_folder_or_file(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    label = src / "uavid_val" / "seq16" / "Labels" / "000000.png"
    Image.fromarray(np.zeros(SMALL, np.uint8)).save(label)
    with pytest.raises(DataError, match=rf"{label}: expected an RGB colour label"):
        prepare_uavid(src, tmp_path / "dst", progress=False)
    shutil.rmtree(src / "uavid_val" / "seq16" / "Labels")
    with pytest.raises(DataError, match=rf"{src / 'uavid_val' / 'seq16'}: no Labels folder"):
        prepare_uavid(src, tmp_path / "dst", progress=False)
    shutil.rmtree(src / "uavid_val" / "seq16")
    with pytest.raises(DataError, match=rf"{src / 'uavid_val'}: no sequence folders"):
        prepare_uavid(src, tmp_path / "dst", progress=False)
    shutil.rmtree(src / "uavid_train" / "seq2" / "Images")
    with pytest.raises(DataError, match=rf"{src / 'uavid_train' / 'seq2'}: no Images folder"):
        prepare_uavid(src, tmp_path / "dst", progress=False)
    (tmp_path / "other" / "uavid_train").mkdir(parents=True)
    with pytest.raises(DataError, match="two UAVid uavid_train folders"):
        prepare_uavid(tmp_path, tmp_path / "dst", progress=False)


# --------------------------------------------------------------------------------------------------
# Datamodule


def test_spec_and_num_classes_exist_right_after_init(tmp_path):
    dm = UAVidDataModule(str(tmp_path / "not-prepared-yet"))
    assert dm.num_classes == 8 and dm.spec.name == "uavid" and dm.spec.exclude_from_mean == ()
    with pytest.raises(ValueError, match="predict_split"):
        UAVidDataModule(str(tmp_path), predict_split="train")


def test_datamodule_batches_follow_the_contract(prepared):
    root, manifest = prepared
    dm = UAVidDataModule(str(root), batch_size=4, num_workers=0, crop_size=24)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, 24, 24)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (4, 24, 24)
    assert set(batch["mask"].unique().tolist()) <= {*range(8), 255}
    val = next(iter(dm.val_dataloader()))
    first = manifest["patches"]["val"][0]
    assert val["image"].shape == (4, 3, PATCH, PATCH) and val["mask"].shape == (4, PATCH, PATCH)
    assert val["meta"]["id"][0] == first["id"] and val["meta"]["seq"][0] == "seq16"
    assert val["meta"]["frame"][0] == "000000" and val["meta"]["frame_patches"][0].item() == 6
    raw_mask = png(root / "val" / "masks" / f"{first['id']}.png")
    assert torch.equal(val["mask"][0], torch.from_numpy(raw_mask.astype(np.int64)))
    with pytest.raises(DataError, match="test labels are not public.*validate.*predict"):
        dm.setup("test")
    dm.setup("predict")
    sample = dm.predict_dataset[0]
    assert "mask" not in sample and sample["image"].shape == (3, PATCH, PATCH)
    assert sample["meta"]["tile"] == "seq21/000000" and sample["meta"]["frame_patches"] == 8
    assert len(dm.predict_dataset) == manifest["splits"]["test"]["num_patches"]


def test_eval_loaders_shard_whole_frames_under_ddp(prepared):
    dm = UAVidDataModule(str(prepared[0]), batch_size=4, num_workers=0)
    dm.setup("predict")
    frame_of = [p["tile"] for p in dm.predict_dataset.patches]
    seen, ranks_of_frame = [], {}
    for rank in range(2):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        sampler = dm.predict_dataloader().sampler
        assert isinstance(sampler, DistributedSampler)  # Lightning leaves it alone instead of re-sharding
        indices = list(sampler)
        assert len(sampler) == len(indices)
        seen += indices
        for index in indices:
            ranks_of_frame.setdefault(frame_of[index], set()).add(rank)
    assert sorted(seen) == list(range(len(frame_of)))
    assert all(len(ranks) == 1 for ranks in ranks_of_frame.values()) and len(ranks_of_frame) == 3


def test_missing_test_split_makes_predict_fail_clearly(raw, tmp_path, caplog):
    src = copy_raw(raw, tmp_path)
    shutil.rmtree(src / "uavid_test")
    with pytest.warns(DataWarning), caplog.at_level(logging.WARNING, logger="rsseg"):
        prepare_uavid(src, tmp_path / "dst", patch_size=64, progress=False)
    assert "no uavid_test folder" in caplog.text
    with pytest.raises(DataError, match=r"no 'test' split was prepared \(uavid_test was not found"):
        UAVidDataModule(str(tmp_path / "dst"), num_workers=0).setup("predict")


# --------------------------------------------------------------------------------------------------
# Predict and submission


class Oracle(lightning.LightningModule):
    """Predicts the fixture's ground truth for each patch from its meta, with a wrong class in the
    padding and, optionally, in a ``band`` of pixels along every cut edge (an edge inside the frame):
    stitching must crop the padding and take each pixel from the patch where it is most central."""

    def __init__(self, truth: dict, folder: str, band: int = 0):
        super().__init__()
        self.truth, self.folder, self.band = truth, folder, band
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def predict_step(self, batch, batch_idx):
        meta, (size_y, size_x) = batch["meta"], batch["image"].shape[-2:]
        preds = []
        for i in range(batch["image"].shape[0]):
            full = self.truth[(self.folder, meta["seq"][i], meta["frame"][i])]["mask"]
            y, x, h, w = (int(meta[k][i]) for k in ("y", "x", "height", "width"))
            patch = np.full((size_y, size_x), 6, np.uint8)
            patch[:h, :w] = full[y : y + h, x : x + w]
            b = self.band
            if b and y > 0:
                patch[:b] = (patch[:b] + 1) % 8
            if b and y + size_y < full.shape[0]:
                patch[-b:] = (patch[-b:] + 1) % 8
            if b and x > 0:
                patch[:, :b] = (patch[:, :b] + 1) % 8
            if b and x + size_x < full.shape[1]:
                patch[:, -b:] = (patch[:, -b:] + 1) % 8
            preds.append(patch)
        return {"pred": torch.from_numpy(np.stack(preds)), "meta": meta}


def _predict(root, truth, folder, out, tmp_path, band=0, whole_frames=False, **trainer_kwargs):
    split = SPLIT_OF[folder]
    dm = UAVidDataModule(str(root), batch_size=3, num_workers=0, predict_split=split, eval_whole_tiles=whole_frames)
    writer = UAVidSubmissionWriter(out, **trainer_kwargs.pop("writer", {}))
    trainer = lightning.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[writer], default_root_dir=tmp_path, **trainer_kwargs,
    )  # fmt: skip
    trainer.predict(Oracle(truth, folder, band), datamodule=dm, return_predictions=False)
    return writer


def test_predict_writes_full_frame_colour_pngs_in_the_submission_layout(prepared, raw, tmp_path):
    root, _ = prepared
    _, truth = raw
    out = tmp_path / "submission"
    writer = _predict(root, truth, "uavid_test", out, tmp_path, band=3)  # test windows overlap by 8 px
    expected = {out / seq / "Labels" / f"{frame}.png" for seq, frame, _ in frames_of("uavid_test")}
    assert set(writer.written) == expected
    assert {p for p in out.rglob("*") if p.is_file()} == expected
    for seq, frame, size in frames_of("uavid_test"):
        colours = png(out / seq / "Labels" / f"{frame}.png")
        assert colours.shape == (*size, 3) and colours.dtype == np.uint8
        np.testing.assert_array_equal(colours, UAVID_RGB[truth[("uavid_test", seq, frame)]["mask"]])


def test_whole_test_frames_predict_into_the_submission(prepared, raw, tmp_path):
    """eval_whole_tiles gives whole test frames (stitched, no mask: labels are private) for tiling inside the
    task, as D2LS's 1152×1024 test tiles need; each frame is one prediction at (0, 0) that the writer writes."""
    root, _ = prepared
    raw_root, truth = raw
    data = UAVidDataModule(str(root), num_workers=0, predict_split="test", eval_whole_tiles=True)
    data.setup("predict")
    batches = list(data.predict_dataloader())
    assert len(batches) == len(frames_of("uavid_test")) and all("mask" not in batch for batch in batches)
    for batch in batches:
        seq, frame = batch["meta"]["seq"][0], batch["meta"]["frame"][0]
        image = png(raw_root / "uavid_test" / seq / "Images" / f"{frame}.png")
        np.testing.assert_array_equal(batch["image"][0].permute(1, 2, 0).numpy(), image)
        assert (int(batch["meta"]["frame_patches"][0]), int(batch["meta"]["y"][0])) == (1, 0)
    out = tmp_path / "submission"
    writer = _predict(root, truth, "uavid_test", out, tmp_path, whole_frames=True)
    assert len(writer.written) == len(frames_of("uavid_test"))
    for seq, frame, _ in frames_of("uavid_test"):
        colours = png(out / seq / "Labels" / f"{frame}.png")
        np.testing.assert_array_equal(colours, UAVID_RGB[truth[("uavid_test", seq, frame)]["mask"]])


def test_predicting_val_reproduces_its_labels_in_the_toolkit_layout(prepared, raw, tmp_path):
    root, _ = prepared
    raw_root, truth = raw
    out = tmp_path / "pred_val"
    _predict(root, truth, "uavid_val", out, tmp_path)
    for seq, frame, _ in frames_of("uavid_val"):
        written = png(out / seq / "Labels" / f"{frame}.png")
        np.testing.assert_array_equal(written, png(raw_root / "uavid_val" / seq / "Labels" / f"{frame}.png"))


def test_incomplete_frames_are_never_written(prepared, raw, tmp_path):
    root, _ = prepared
    _, truth = raw
    with pytest.raises(RuntimeError, match=r"seq21/000000 \(3 of 8 patches\).*incomplete"):
        _predict(root, truth, "uavid_test", tmp_path / "a", tmp_path, limit_predict_batches=1)
    with pytest.warns(UserWarning, match="seq21/000000"):
        writer = _predict(root, truth, "uavid_test", tmp_path / "b", tmp_path, limit_predict_batches=1,
                          writer={"on_incomplete": "warn"})
    assert writer.written == [] and not list((tmp_path / "b").rglob("*.png"))


def test_stitcher_keeps_the_most_central_prediction_and_checks_its_input():
    stitcher = FrameStitcher()
    # a 4×6 frame, 4×4 windows at x = 0 and x = 2 (overlap of 2 columns)
    left, right = np.full((4, 4), 1, np.uint8), np.full((4, 4), 2, np.uint8)
    common = dict(seq="seq21", frame="000000", y=0, height=4, frame_height=4, frame_width=6, frame_patches=2)
    assert stitcher.add(patch=left, x=0, width=4, **common) is None
    assert stitcher.pending() == [("seq21", "000000", 1, 2)]
    with pytest.raises(ValueError, match="already received"):
        stitcher.add(patch=left, x=0, width=4, **common)
    frame = stitcher.add(patch=right, x=2, width=4, **common)
    # column 2 is 1 px from the left window's cut edge and 0 px from the right one's: left wins; column 3
    # is 0 px from the left window's cut edge and 1 px from the right one's: right wins
    assert frame.tolist() == [[1, 1, 1, 2, 2, 2]] * 4 and stitcher.pending() == []
    with pytest.raises(ValueError, match="does not fit"):
        stitcher.add(patch=left, x=4, width=4, **common)
    with pytest.raises(ValueError, match=r"not UAVid classes 0–7 \(values \[255\]\)"):
        stitcher.add(patch=np.full((4, 4), 255, np.uint8), x=0, width=4, **common)


def test_write_submission_checks_names_sizes_and_values(tmp_path):
    label = np.arange(8, dtype=np.int64).reshape(2, 4)
    [path] = write_uavid_submission([("seq21", "000000.png", torch.from_numpy(label))], tmp_path)
    assert path == tmp_path / "seq21" / "Labels" / "000000.png"
    assert np.array_equal(png(path), UAVID_RGB[label])
    sizes = {("seq21", "000000"): (2, 4)}
    with pytest.raises(ValueError, match=r"seq21/000000: label map is 2×3, the frame is 2×4"):
        write_uavid_submission([("seq21", "000000", label[:, :3])], tmp_path, frame_sizes=sizes)
    with pytest.raises(ValueError, match="not one of the expected frames"):
        write_uavid_submission([("seq22", "000000", label)], tmp_path, frame_sizes=sizes)
    with pytest.raises(ValueError, match=r"values \[8\]"):
        write_uavid_submission([("seq21", "000000", label + 1)], tmp_path)
    with pytest.raises(ValueError, match="integer"):
        write_uavid_submission([("seq21", "000000", label.astype(np.float32))], tmp_path)
    with pytest.raises(ValueError, match="given twice"):
        write_uavid_submission([("seq21", "000000", label), ("seq21", "000000", label)], tmp_path)
    with pytest.raises(ValueError, match="seq21"):
        write_uavid_submission([("sequence21", "000000", label)], tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        write_uavid_submission([("seq21", "../000000", label)], tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["000000.png"]


def test_the_submission_config_predicts_padded_tiles_of_whole_frames(prepared, tmp_path):
    """experiments/submission/uavid.yaml on top of a method's UAVid config: `rsseg predict` writes every test
    frame at its size from whole frames cut into padded tiles (here 24×20 for the fixture's small frames)."""
    from rsseg.cli import main

    repo = Path(__file__).resolve().parents[1]
    configs = [arg for name in ("unet/uavid", "unet/smoke", "smoke/uavid")
               for arg in ("--config", str(repo / f"experiments/{name}.yaml"))]
    args = [*configs, "--data.init_args.root", str(prepared[0]), "--data.init_args.crop_size", "32",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
            "--model.init_args.net.init_args.arch_kwargs", '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}',
            "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    main(["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "submission"
    main(["predict", *args, "--config", str(repo / "experiments/submission/uavid.yaml"),
          "--model.init_args.inference_tiles", "[24, 20]", "--ckpt_path", str(checkpoint),
          "--return_predictions", "false", "--trainer.callbacks+=rsseg.data.UAVidSubmissionWriter",
          "--trainer.callbacks.output_dir", str(out)])
    for seq, frame, size in frames_of("uavid_test"):
        assert png(out / seq / "Labels" / f"{frame}.png").shape == (*size, 3)
