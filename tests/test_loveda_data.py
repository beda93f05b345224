"""LoveDA data path: raw→train label mapping, pairing by id, scenes, splits and protocols, the batch
contract, the missing Test labels, the Codalab submission zip, and bad input. Fixtures come from
tests/data/loveda/data.py."""

from __future__ import annotations

import shutil
import zipfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.datasets.loveda import (
    LoveDADataModule,
    LoveDADataset,
    decode_loveda_mask,
    encode_loveda_mask,
    find_loveda_samples,
    loveda_spec,
)
from rsseg.data.submissions.loveda import LoveDASubmissionWriter, write_loveda_submission
from tests.data.loveda.data import IDS, PALETTE_MASK_ID, SIZE, write_loveda

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def ids_of(split: str, scenes=("Urban", "Rural")) -> list[str]:
    """Expected ids of a split, in numeric order (written by hand from the fixture's table)."""
    return [str(i) for i in sorted(i for (s, scene), ids in IDS.items() if s == split and scene in scenes for i in ids)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("loveda")
    return root, write_loveda(root)


@pytest.fixture
def copy(raw, tmp_path) -> Path:
    root = tmp_path / "loveda"
    shutil.copytree(raw[0], root)
    return root


def normalised(image: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD


def datamodule(root, **kwargs) -> LoveDADataModule:
    kwargs = {"batch_size": 2, "num_workers": 0, "pin_memory": False, **kwargs}
    return LoveDADataModule(str(root), **kwargs)


# --------------------------------------------------------------------------------------------------
# Label convention


def test_raw_zero_is_ignore_and_raw_k_is_class_k_minus_1():
    raw = np.array([[0, 1, 2, 3, 4, 5, 6, 7]], dtype=np.uint8)
    mask = decode_loveda_mask(raw)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[255, 0, 1, 2, 3, 4, 5, 6]]
    assert encode_loveda_mask(np.array([255, 0, 3, 6], np.uint8)).tolist() == [0, 1, 4, 7]


def test_mask_values_above_7_are_an_error_or_with_strict_false_ignored_and_counted():
    raw = np.array([[1, 8, 200, 7]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"masks_png/3\.png: 2 pixels have mask values above 7 \(8, 200\)"):
        decode_loveda_mask(raw, "Train/Urban/masks_png/3.png")
    with pytest.warns(DataWarning, match=r"3\.png: 2 pixels .*set to ignore"):
        assert decode_loveda_mask(raw, "3.png", strict=False).tolist() == [[0, 255, 255, 6]]


def test_spec_declares_classes_official_colours_and_a_mean_over_all_seven():
    spec = loveda_spec()
    assert spec.classes == ("background", "building", "road", "water", "barren", "forest", "agriculture")
    assert spec.palette == (
        (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128),
    )  # fmt: skip
    assert spec.num_classes == 7 and spec.ignore_index == 255
    assert spec.exclude_from_mean == () and not spec.eroded_test_labels
    assert loveda_spec("trainval").protocol == "trainval"
    with pytest.raises(ValueError, match="protocol"):
        loveda_spec("train_val")


# --------------------------------------------------------------------------------------------------
# Dataset


@pytest.mark.parametrize("split", ["train", "val"])
def test_samples_pair_image_and_mask_by_id_and_decode_to_the_ground_truth(raw, split):
    root, truth = raw
    dataset = LoveDADataset(root, split)
    assert [s.id for s in dataset.samples] == ids_of(split.capitalize())
    assert dataset.has_masks
    for index in range(len(dataset)):
        sample = dataset[index]
        expected = truth[sample["meta"]["id"]]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, *SIZE)
        torch.testing.assert_close(sample["image"], normalised(expected["image"]))
        assert sample["mask"].dtype == torch.int64
        assert torch.equal(sample["mask"], torch.from_numpy(expected["mask"].astype(np.int64)))
        assert (sample["mask"] == 255).any()  # the no-data strip is ignored, not background
        assert sample["meta"] == {
            "id": sample["meta"]["id"],
            "height": SIZE[0],
            "width": SIZE[1],
            "scene": expected["scene"],
            "split": expected["split"],
        }


def test_ids_sort_as_numbers_palette_masks_read_as_indices_and_stray_files_are_skipped(raw):
    root, truth = raw
    dataset = LoveDADataset(root, "train", scenes=("Rural",))
    assert [s.id for s in dataset.samples] == ["8", "9", "10"]  # not "10", "8", "9"
    palette = dataset[1]
    assert palette["meta"]["id"] == str(PALETTE_MASK_ID)
    assert torch.equal(palette["mask"], torch.from_numpy(truth[str(PALETTE_MASK_ID)]["mask"].astype(np.int64)))
    urban = LoveDADataset(root, "train", scenes=("Urban",))
    assert [s.id for s in urban.samples] == ["11", "12"]  # Thumbs.db and .DS_Store are not samples


@pytest.mark.parametrize(
    ("scenes", "counts"),
    [
        (("Urban", "Rural"), {"train": 5, "val": 3, "test": 3}),
        (("Urban",), {"train": 2, "val": 2, "test": 1}),
        (("rural",), {"train": 3, "val": 1, "test": 2}),  # case-insensitive, as torchgeo's scene names
    ],
)
def test_scene_selection_and_split_counts(raw, scenes, counts):
    for split, count in counts.items():
        dataset = LoveDADataset(raw[0], split, scenes=scenes)
        assert len(dataset) == count
        assert {s.meta["scene"] for s in dataset.samples} == {scene.capitalize() for scene in scenes}
    with pytest.raises(ValueError, match="unknown LoveDA scene 'suburban'"):
        LoveDADataset(raw[0], "train", scenes=("suburban",))
    with pytest.raises(ValueError, match="unknown LoveDA split"):
        LoveDADataset(raw[0], "Training")


def test_test_split_has_images_but_no_masks(raw):
    root, truth = raw
    dataset = LoveDADataset(root, "test")
    assert not dataset.has_masks and [s.id for s in dataset.samples] == ["30", "31", "32"]
    sample = dataset[2]
    assert "mask" not in sample
    assert sample["meta"]["scene"] == "Urban" and sample["meta"]["split"] == "Test"
    torch.testing.assert_close(sample["image"], normalised(truth["32"]["image"]))


def test_trainval_merges_train_and_val(raw):
    dataset = LoveDADataset(raw[0], "trainval")
    assert [s.id for s in dataset.samples] == ids_of("Train") + ids_of("Val")
    assert dataset.counts() == {
        ("Train", "Rural"): 3, ("Train", "Urban"): 2, ("Val", "Rural"): 1, ("Val", "Urban"): 2,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Datamodule


def test_datamodule_fit_and_validate_batches_follow_the_contract(raw):
    root, truth = raw
    dm = datamodule(root, crop_size=16)
    assert dm.num_classes == 7 and dm.spec.name == "loveda"  # before setup
    dm.setup("fit")
    assert len(dm.train_dataset) == 5 and len(dm.val_dataset) == 3
    loader = dm.train_dataloader()
    assert loader.drop_last
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 16, 16)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, 16, 16)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, 6, 255}

    val = next(iter(dm.val_dataloader()))  # whole images, unaugmented, in id order
    assert val["meta"]["id"] == ["20", "21"] and val["meta"]["scene"] == ["Rural", "Urban"]
    assert val["image"].shape == (2, 3, *SIZE)
    torch.testing.assert_close(val["image"][1], normalised(truth["21"]["image"]))
    assert torch.equal(val["mask"][0], torch.from_numpy(truth["20"]["mask"].astype(np.int64)))


def test_train_crop_larger_than_the_image_pads_the_mask_with_ignore(raw):
    dm = datamodule(raw[0], crop_size=48, augment=False)
    dm.setup("fit")
    sample = dm.train_dataset[0]
    assert sample["image"].shape == (3, 48, 48) and sample["mask"].shape == (48, 48)
    assert (sample["mask"] == 255).sum() >= 48 * 48 - SIZE[0] * SIZE[1]


def test_there_is_no_test_stage_because_test_labels_are_private(raw):
    dm = datamodule(raw[0])
    with pytest.raises(DataError, match=r"Test labels are private.*`validate`.*`predict`.*LoveDASubmissionWriter"):
        dm.setup("test")
    with pytest.raises(DataError, match="private"):
        dm.test_dataloader()


def test_predict_runs_over_the_test_images_without_masks(raw):
    dm = datamodule(raw[0], scenes=("Rural",), eval_batch_size=3)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert "mask" not in batch
    assert batch["image"].shape == (2, 3, *SIZE)
    assert batch["meta"]["id"] == ["30", "31"] and batch["meta"]["split"] == ["Test", "Test"]


def test_trainval_protocol_trains_on_train_and_val_and_has_no_validation(raw):
    dm = datamodule(raw[0], protocol="trainval")
    dm.setup("fit")
    assert len(dm.train_dataset) == 8 and dm.val_dataset is None
    assert dm.val_dataloader() == []
    with pytest.raises(DataError, match="no held-out split"):
        datamodule(raw[0], protocol="trainval").setup("validate")
    with pytest.raises(ValueError, match="unknown LoveDA protocol"):
        datamodule(raw[0], protocol="train_val")


def test_eval_loaders_shard_without_duplicates_under_ddp(raw):
    dm = datamodule(raw[0])
    dm.setup("validate")
    seen = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        seen += list(dm.val_dataloader().sampler)
    assert sorted(seen) == list(range(3))


def test_fit_then_predict_writes_the_submission_zip(raw, tmp_path):
    import lightning

    from rsseg.tasks import SMPSegmentationTask

    lightning.seed_everything(0)
    task = SMPSegmentationTask(num_classes=7, net={"class_path": "rsseg.models.SMPNet", "init_args": {
        "arch": "unet", "backbone": "resnet18", "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}})
    kwargs = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    lightning.Trainer(fast_dev_run=1, default_root_dir=tmp_path, **kwargs).fit(task, datamodule=datamodule(raw[0]))
    writer = LoveDASubmissionWriter(str(tmp_path / "out" / "submission.zip"), size=SIZE)
    trainer = lightning.Trainer(callbacks=[writer], default_root_dir=tmp_path, **kwargs)
    outputs = trainer.predict(task, datamodule=datamodule(raw[0], crop_size=16))  # predict ignores the crop
    assert writer.written == tmp_path / "out" / "submission.zip"
    predicted = {i: p for out in outputs for i, p in zip(out["meta"]["id"], out["pred"], strict=True)}
    assert sorted(predicted) == ids_of("Test")
    with zipfile.ZipFile(writer.written) as archive:
        assert sorted(archive.namelist()) == ["30.png", "31.png", "32.png"]
        for name in archive.namelist():
            image = Image.open(BytesIO(archive.read(name)))
            assert image.mode == "L" and image.size == (SIZE[1], SIZE[0])
            array = np.array(image)
            assert array.dtype == np.uint8 and array.max() <= 6
            assert np.array_equal(array, predicted[name[:-4]].numpy())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["submission.zip"]


# --------------------------------------------------------------------------------------------------
# Submission


def test_submission_zip_is_flat_with_1024_uint8_pngs_holding_the_predictions(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"4191": rng.integers(0, 7, (1024, 1024)), "5107": np.full((1024, 1024), 6, np.uint8)}
    maps["4191"][0, :7] = np.arange(7)
    predictions = [("4191", torch.from_numpy(maps["4191"])), ("5107", maps["5107"])]  # int64 tensor, uint8 array
    path = write_loveda_submission(predictions, tmp_path / "a.zip")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["4191.png", "5107.png"]  # no folder entries or prefixes
        for info in infos:
            image = Image.open(BytesIO(archive.read(info)))
            assert image.mode == "L" and image.size == (1024, 1024)
            array = np.array(image)
            assert array.dtype == np.uint8
            assert np.array_equal(array, maps[info.filename[:-4]])
    assert np.unique(np.array(Image.open(BytesIO(zipfile.ZipFile(path).read("4191.png"))))).tolist() == list(range(7))
    again = write_loveda_submission(predictions, tmp_path / "b.zip")
    assert again.read_bytes() == path.read_bytes()  # deterministic archive


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        (np.full((1024, 1024), 7, np.uint8), r"values 7\.\.7 outside 0–6"),
        (np.full((1024, 1024), -1, np.int64), r"values -1\.\.-1 outside 0–6"),
        (np.zeros((512, 512), np.uint8), r"the LoveDA server expects 1024×1024 maps, got 512×512"),
        (np.zeros((1024, 1024), np.float32), "expected integer class indices"),
        (np.zeros((1, 1024, 1024), np.uint8), r"expected an H×W class map"),
    ],
)
def test_submission_rejects_maps_the_server_cannot_score_and_leaves_no_file(tmp_path, prediction, message):
    good = np.zeros((1024, 1024), np.uint8)
    with pytest.raises(ValueError, match=rf"prediction for 77: {message}"):
        write_loveda_submission([("76", good), ("77", prediction)], tmp_path / "s.zip")
    assert list(tmp_path.iterdir()) == []


def test_submission_rejects_duplicate_and_unsafe_ids_and_empty_input(tmp_path):
    good = np.zeros((1024, 1024), np.uint8)
    with pytest.raises(ValueError, match="duplicate prediction for id '5'"):
        write_loveda_submission([("5", good), ("5", good)], tmp_path / "s.zip")
    with pytest.raises(ValueError, match="cannot be a flat file name"):
        write_loveda_submission([("Urban/5", good)], tmp_path / "s.zip")
    with pytest.raises(ValueError, match="no predictions"):
        write_loveda_submission([], tmp_path / "s.zip")
    assert list(tmp_path.iterdir()) == []


def test_submission_writer_refuses_to_run_on_several_processes(tmp_path):
    writer = LoveDASubmissionWriter(str(tmp_path / "s.zip"))
    module = SimpleNamespace(predict_step=lambda batch, batch_idx: None)
    with pytest.raises(RuntimeError, match="--trainer.devices 1"):
        writer.setup(SimpleNamespace(world_size=2), module, "predict")
    writer.setup(SimpleNamespace(world_size=2), module, "fit")  # only predict writes


# --------------------------------------------------------------------------------------------------
# Bad input


def test_missing_root_and_missing_split_folders_are_named(raw, copy, tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'nowhere'}: LoveDA root folder does not exist.*Zenodo"):
        LoveDADataset(tmp_path / "nowhere", "train")
    shutil.rmtree(copy / "Val")
    with pytest.raises(DataError, match=r"Val/Urban/images_png: folder not found"):
        datamodule(copy).setup("validate")
    (copy / "Val" / "Val").mkdir(parents=True)  # Val.zip extracted into Val/
    with pytest.raises(DataError, match=r"Val/Val exists: the archive was extracted one level too deep"):
        LoveDADataset(copy, "val")
    shutil.rmtree(copy / "Test" / "Rural" / "images_png")
    (copy / "Test" / "Rural" / "images_png").mkdir()
    with pytest.raises(DataError, match=r"Test/Rural/images_png: no PNG images"):
        LoveDADataset(copy, "test")
    assert len(LoveDADataset(copy, "test", scenes=("Urban",))) == 1  # the other scene still loads


def test_missing_mask_and_mask_without_image_are_named(copy):
    mask = copy / "Train" / "Rural" / "masks_png" / "10.png"
    mask.rename(copy / "10.png")
    with pytest.raises(DataError, match=rf"images_png/10\.png: its mask {mask} is missing"):
        LoveDADataset(copy, "train")
    (copy / "10.png").rename(mask)
    (copy / "Train" / "Rural" / "images_png" / "8.png").unlink()
    with pytest.raises(DataError, match=r"masks_png: 1 masks have no image .*\(e\.g\. 8\.png\)"):
        LoveDADataset(copy, "train")
    shutil.rmtree(copy / "Train" / "Urban" / "masks_png")
    with pytest.raises(DataError, match=r"Train/Urban/masks_png: folder not found; the Train split needs its masks"):
        LoveDADataset(copy, "train", scenes=("Urban",))


def test_duplicate_ids_across_scenes_are_an_error(copy):
    for sub in ("images_png", "masks_png"):
        shutil.copy(copy / "Val" / "Rural" / sub / "20.png", copy / "Val" / "Urban" / sub / "20.png")
    with pytest.raises(
        DataError, match=r"duplicate LoveDA id 20: .*/Val/Urban/images_png/20\.png and .*/Val/Rural/images_png/20\.png"
    ):
        LoveDADataset(copy, "val")
    assert len(LoveDADataset(copy, "val", scenes=("Urban",))) == 3


def test_unreadable_or_inconsistent_files_name_the_file(copy):
    folder = copy / "Val" / "Urban"
    Image.fromarray(np.ones((SIZE[0], SIZE[1] - 1), np.uint8)).save(folder / "masks_png" / "21.png")
    dataset = LoveDADataset(copy, "val", scenes=("Urban",))
    with pytest.raises(
        DataError,
        match=rf"size mismatch: .*21\.png is {SIZE[0]}×{SIZE[1]} but .*masks_png/21\.png "
        rf"is {SIZE[0]}×{SIZE[1] - 1}",
    ):
        dataset[0]
    image = folder / "images_png" / "22.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DataError, match=rf"{image}: cannot read image"):
        dataset[1]
    Image.fromarray(np.full(SIZE, 9, np.uint8)).save(folder / "masks_png" / "21.png")
    with pytest.raises(DataError, match=r"masks_png/21\.png: \d+ pixels have mask values above 7 \(9\)"):
        dataset[0]
    with pytest.warns(DataWarning):
        assert (LoveDADataset(copy, "val", scenes=("Urban",), strict=False)[0]["mask"] == 255).all()
    Image.fromarray(np.ones((*SIZE, 3), np.uint8)).save(folder / "masks_png" / "21.png")  # an RGB visualisation
    with pytest.raises(DataError, match=r"21\.png: expected a single-band index mask"):
        dataset[0]


def test_find_samples_derives_mask_paths_from_image_ids(raw):
    samples = find_loveda_samples(raw[0], "val", scenes=("Urban",))
    assert [(s.id, s.image.name, s.mask.name) for s in samples] == [
        ("21", "21.png", "21.png"),
        ("22", "22.png", "22.png"),
    ]
    assert all(s.mask.parent.name == "masks_png" and s.image.parent.name == "images_png" for s in samples)
