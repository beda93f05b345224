"""Coarse label maps for refiners (rsseg.data.refinement.coarse): written by `rsseg predict`, served aligned with the
mask under augmentation, replaced atomically, every problem a DataError naming the file; and the
``predict_split`` of the datamodules that predicts them."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shlex
import shutil
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import lightning
import numpy as np
import pytest
import torch
import yaml

from rsseg.cli import main
from rsseg.data import CHN6CUGDataModule, CoarseMapDataModule, CoarseMapWriter, LoveDADataModule, PotsdamDataModule
from rsseg.data.core.errors import DataError
from rsseg.data.core.io import read_image, write_png
from rsseg.data.datasets.chn6cug import CHN6CUGDataset
from rsseg.data.datasets.potsdam import PotsdamDataset, prepare_potsdam
from rsseg.data.refinement.coarse import RECORD_NAME, write_command
from rsseg.data.synthetic import write_synthetic_potsdam
from rsseg.tasks import SMPSegmentationTask
from tests.data.chn6cug.data import HEIGHT, TILES, WIDTH, write_chn6cug
from tests.data.loveda.data import write_loveda

PATCH = 64
FILL = 3  # class written where a mask is ignore (255), which no model predicts
MODEL = {"net": {"class_path": "rsseg.models.SMPNet", "init_args": {
             "arch": "unet", "backbone": "resnet18",
             "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}},
         "test_per_class_wfm": False}
LOADER = {"num_workers": 0, "pin_memory": False, "persistent_workers": False}


@pytest.fixture(scope="module")
def potsdam_root(tmp_path_factory):
    """Tiny prepared Potsdam: 64² patches, four per split (train overlapping, val/test padded)."""
    work = tmp_path_factory.mktemp("coarse_potsdam")
    write_synthetic_potsdam(work / "raw", tiles={"2_11": (80, 90), "2_10": (70, 72), "2_13": (72, 70)})
    prepare_potsdam(work / "raw", work / "prepared", patch_size=PATCH, progress=False)
    return work / "prepared"


@pytest.fixture(scope="module")
def chn6cug_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coarse_chn6cug")
    write_chn6cug(root)
    return root


def potsdam(root: Path, **kwargs) -> PotsdamDataModule:
    return PotsdamDataModule(str(root), batch_size=2, **{"crop_size": 32, **LOADER, **kwargs})


def chn6cug(root: Path, **kwargs) -> CHN6CUGDataModule:
    return CHN6CUGDataModule(str(root), batch_size=2, **{"crop_size": 32, **LOADER, **kwargs})


def write_masks_as_maps(make, name: str, splits: tuple[str, ...]) -> Path:
    """A coarse map set whose maps are the masks (ignore → FILL), as the writer would lay it out."""
    entries = {}
    for split in splits:
        data = make(predict_split=split)
        data.setup("predict")  # the split as stored: no crop, no augmentation
        for sample in data.predict_dataset:
            mask = sample["mask"].numpy().astype(np.uint8)
            path = data.root / "coarse" / name / split / f"{sample['meta']['id']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(path, np.where(mask == 255, FILL, mask).astype(np.uint8))
        entries[split] = {"count": len(data.predict_dataset), "created": "2024-01-01T00:00:00+00:00",
                          "checkpoint": None, "checkpoint_sha256": None,
                          "model": {"class_path": "ground.truth", "hparams": {}}}
    record = {"format": 1, "name": name, "dataset": data.spec.name, "protocol": data.spec.protocol,
              "num_classes": data.num_classes, "splits": entries}
    (data.root / "coarse" / name / RECORD_NAME).write_text(json.dumps(record))
    return data.root / "coarse" / name


@pytest.fixture(scope="module")
def potsdam_gt(potsdam_root):
    return write_masks_as_maps(lambda **kw: potsdam(potsdam_root, **kw), "gt", ("train", "val", "test"))


@pytest.fixture(scope="module")
def chn6cug_gt(chn6cug_root):
    return write_masks_as_maps(lambda **kw: chn6cug(chn6cug_root, **kw), "gt", ("train", "test"))


def cli_config(tmp_path: Path, data: dict, **trainer) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "default_root_dir": str(tmp_path / "run"), **trainer},
        "model": {"class_path": "rsseg.tasks.SMPSegmentationTask", "init_args": MODEL},
        "data": data,
    }
    path = tmp_path / "model.yaml"  # not config.yaml: Lightning saves the run's config there
    path.write_text(yaml.safe_dump(config))
    return path


def potsdam_data_config(root: Path) -> dict:
    return {"class_path": "rsseg.data.PotsdamDataModule",
            "init_args": {"root": str(root), "batch_size": 2, "crop_size": 32, **LOADER}}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# Writing through the CLI


@pytest.fixture(scope="module")
def trained(potsdam_root, tmp_path_factory):
    """`rsseg fit` one step, then the documented predict command for the train and the test split."""
    work = tmp_path_factory.mktemp("coarse_cli")
    config = cli_config(work, potsdam_data_config(potsdam_root))
    main(["fit", "--config", str(config)])
    (checkpoint,) = work.rglob("*.ckpt")
    for split in ("train", "test"):
        command = write_command("v1", split).replace("<the coarse model's config>", str(config))
        main(shlex.split(command.replace("<its checkpoint>", str(checkpoint)))[1:])
    return potsdam_root / "coarse" / "v1", checkpoint


def test_predict_writes_one_map_per_patch_equal_to_the_checkpoints_prediction(trained, potsdam_root):
    folder, checkpoint = trained
    assert sorted(p.name for p in folder.iterdir()) == [RECORD_NAME, "test", "train"]  # no staging left
    model = SMPSegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    for split in ("train", "test"):
        dataset = PotsdamDataset(potsdam_root, split)
        assert sorted(p.name for p in (folder / split).iterdir()) == sorted(f"{p['id']}.png" for p in dataset.patches)
        samples = list(dataset)
        with torch.no_grad():
            expected = model(torch.stack([sample["image"] for sample in samples])).argmax(1)
        for sample, prediction in zip(samples, expected, strict=True):
            coarse = read_image(folder / split / f"{sample['meta']['id']}.png")
            assert coarse.dtype == np.uint8 and coarse.shape == sample["mask"].shape == (PATCH, PATCH)
            assert coarse.max() < 6 and np.array_equal(coarse, prediction.numpy())

    record = json.loads((folder / RECORD_NAME).read_text())
    assert {k: record[k] for k in ("format", "name", "dataset", "protocol", "num_classes")} == {
        "format": 1, "name": "v1", "dataset": "potsdam", "protocol": "unetformer", "num_classes": 6}
    assert set(record["splits"]) == {"train", "test"}
    for entry in record["splits"].values():
        assert entry["count"] == 4
        assert entry["checkpoint"] == str(checkpoint.resolve())
        assert entry["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert entry["model"]["class_path"] == "rsseg.tasks.segmentation.SMPSegmentationTask"
        hparams = entry["model"]["hparams"]
        assert hparams["num_classes"] == 6 and hparams["net"]["init_args"]["arch"] == "unet"
        assert datetime.fromisoformat(entry["created"]).tzinfo is not None


def test_fit_through_the_cli_on_the_coarse_datamodule(potsdam_root, potsdam_gt, tmp_path):
    data = {"class_path": "rsseg.data.CoarseMapDataModule",
            "init_args": {"data": potsdam_data_config(potsdam_root), "coarse": "gt"}}
    main(["fit", "--config", str(cli_config(tmp_path, data, enable_checkpointing=False))])


# --------------------------------------------------------------------------------------------------
# Serving: coarse follows mask


def check_train_alignment(data: CoarseMapDataModule, epochs: int) -> None:
    """Over ``epochs`` passes, every sample's coarse map equals its mask (the fixtures' training masks
    have no ignore), and the augmentation did move things (so the check means something)."""
    crops: dict[int, set[bytes]] = {}
    for _ in range(epochs):
        for index in range(len(data.train_dataset)):
            sample = data.train_dataset[index]
            mask, coarse = sample["mask"], sample["coarse"]
            assert coarse.dtype == torch.int64 and coarse.shape == mask.shape
            assert torch.equal(coarse, mask)
            crops.setdefault(index, set()).add(mask.numpy().tobytes())
    assert max(len(seen) for seen in crops.values()) > 2


def test_potsdam_coarse_follows_mask_under_crop_flips_and_rot90(potsdam_root, potsdam_gt):
    data = CoarseMapDataModule(potsdam(potsdam_root), "gt")
    data.setup("fit")
    check_train_alignment(data, epochs=6)
    batch = next(iter(data.train_dataloader()))
    assert batch["coarse"].shape == batch["mask"].shape == (2, 32, 32)
    for sample in data.val_dataset:
        assert torch.equal(sample["coarse"], torch.where(sample["mask"] == 255, FILL, sample["mask"]))


@pytest.mark.parametrize("crop_size", [32, 56])  # 56 > 40×48 tiles: image, mask and coarse are padded
def test_chn6cug_coarse_follows_mask_under_crop_flips_and_rot90(chn6cug_root, chn6cug_gt, crop_size):
    data = CoarseMapDataModule(chn6cug(chn6cug_root, crop_size=crop_size, num_workers=1), "gt")
    data.setup("fit")
    check_train_alignment(data, epochs=4)
    for batch in data.train_dataloader():  # through a worker process too
        assert torch.equal(batch["coarse"], batch["mask"])
    if crop_size == 56:
        assert (batch["coarse"] == 255).any()  # padding is ignore in both
    data.setup("test")
    plain = CHN6CUGDataset(chn6cug_root, "val")
    for index, sample in enumerate(data.test_dataset):
        assert torch.equal(sample["coarse"], sample["mask"]) and sample["coarse"].shape == (HEIGHT, WIDTH)
        assert torch.equal(sample["image"], plain[index]["image"])


def test_coarse_datamodule_exposes_the_inner_datamodule(potsdam_root, potsdam_gt):
    inner = potsdam(potsdam_root)
    data = CoarseMapDataModule(inner, str(potsdam_gt))  # a path works as well as a name
    assert (data.spec, data.num_classes, data.mean, data.std, data.root) == (
        inner.spec, 6, inner.mean, inner.std, inner.root)
    assert data.dataset_name == "potsdam"
    data.setup("predict")
    assert len(data.predict_dataloader()) == 2 and "coarse" in data.predict_dataset[0]
    with pytest.raises(ValueError, match="eval_whole_tiles"):
        CoarseMapDataModule(potsdam(potsdam_root, eval_whole_tiles=True), "gt")


# --------------------------------------------------------------------------------------------------
# Atomicity


class FailAfterFirstBatch(lightning.Callback):
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        raise RuntimeError("simulated crash")


def predict(root: Path, model: SMPSegmentationTask, callbacks: list, **trainer) -> None:
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=callbacks, **trainer)
    trainer.predict(model, datamodule=potsdam(root), return_predictions=False)


def test_a_failed_predict_leaves_the_previous_maps_and_record(potsdam_root, tmp_path, caplog):
    model = SMPSegmentationTask(num_classes=6, **MODEL)
    writer = functools.partial(CoarseMapWriter, "atomic", output_root=str(tmp_path))  # away from the root
    with caplog.at_level(logging.WARNING, logger="rsseg"):
        predict(potsdam_root, model, [writer()])
    assert "untrained model" in caplog.text
    folder = tmp_path / "coarse" / "atomic"
    before = tree(folder)
    ids = [patch["id"] for patch in PotsdamDataset(potsdam_root, "test").patches]
    assert sorted(before) == [RECORD_NAME, *sorted(f"test/{sample_id}.png" for sample_id in ids)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(potsdam_root, model, [writer(), FailAfterFirstBatch()])
    assert tree(folder) == before
    with pytest.raises(RuntimeError, match="2 maps but the test split has 4"):
        predict(potsdam_root, model, [writer()], limit_predict_batches=1)
    assert tree(folder) == before

    data = CoarseMapDataModule(potsdam(potsdam_root), str(folder))  # maps outside the root, by path
    data.setup("test")
    sample = data.test_dataset[0]
    assert np.array_equal(sample["coarse"].numpy(), read_image(folder / "test" / f"{sample['meta']['id']}.png"))


def test_writer_refuses_unsafe_ids_and_twins(potsdam_root):
    with pytest.raises(ValueError, match="cannot be a file name"):
        CoarseMapWriter("a/b")
    data = potsdam(potsdam_root)
    model = SMPSegmentationTask(num_classes=6, **MODEL)
    writer = CoarseMapWriter("unsafe")
    twins = [writer, CoarseMapWriter("unsafe")]
    with pytest.raises(ValueError, match="2 CoarseMapWriter callbacks write the coarse maps 'unsafe'"):
        writer.setup(SimpleNamespace(world_size=1, datamodule=data, callbacks=twins), model, "predict")
    one_process = SimpleNamespace(broadcast=lambda value: value, barrier=lambda name=None: None,
                                  reduce=lambda value, reduce_op: value)
    trainer = SimpleNamespace(world_size=1, datamodule=data, ckpt_path=None, callbacks=[writer],
                              strategy=one_process, is_global_zero=True)
    writer.setup(trainer, model, "predict")
    writer.on_predict_epoch_start(trainer, model)
    prediction = {"pred": torch.zeros(1, 4, 4, dtype=torch.uint8), "meta": {"id": ["../escape"]}}
    with pytest.raises(ValueError, match="sample id '../escape'"):
        writer.write_on_batch_end(trainer, model, prediction, None, None, 0)
    writer.on_exception(trainer, model, ValueError())
    assert list((potsdam_root / "coarse" / "unsafe").iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Errors, each naming the file


@pytest.fixture
def maps(potsdam_root, potsdam_gt, tmp_path):
    """A private copy of the "gt" set, reached by path, to break."""
    shutil.copytree(potsdam_gt, tmp_path / "maps")
    return tmp_path / "maps"


def setup_coarse(potsdam_root: Path, coarse: str | Path, stage: str = "fit") -> CoarseMapDataModule:
    data = CoarseMapDataModule(potsdam(potsdam_root), str(coarse))
    data.setup(stage)
    return data


def test_missing_set_or_record_says_how_to_write_it(potsdam_root, maps):
    with pytest.raises(DataError, match=r"coarse/nothing/coarse.json: no coarse maps here.*rsseg predict .*"
                                        r"--data.init_args.predict_split train "
                                        r"--trainer.callbacks\+=rsseg.data.CoarseMapWriter"):
        setup_coarse(potsdam_root, "nothing")
    (maps / RECORD_NAME).unlink()
    with pytest.raises(DataError, match=re.escape(f"{maps / RECORD_NAME}: no coarse maps here")):
        setup_coarse(potsdam_root, maps)


def test_split_missing_from_the_record(potsdam_root, maps):
    record = json.loads((maps / RECORD_NAME).read_text())
    del record["splits"]["val"]
    (maps / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(DataError, match=re.escape(f"{maps / RECORD_NAME}: no coarse maps of the 'val' split")
                       + ".*--data.init_args.predict_split val"):
        setup_coarse(potsdam_root, maps)


def test_missing_map(potsdam_root, maps):
    victim = sorted((maps / "train").iterdir())[1]
    victim.unlink()
    with pytest.raises(DataError, match=re.escape(f"{victim}: coarse map not found (1 of 4")):
        setup_coarse(potsdam_root, maps)


@pytest.mark.parametrize("split, stage", [("train", "fit"), ("test", "test")])  # augmented and plain paths
def test_map_of_another_size(potsdam_root, maps, split, stage):
    victim = sorted((maps / split).iterdir())[0]
    write_png(victim, np.zeros((50, PATCH), np.uint8))
    data = setup_coarse(potsdam_root, maps, stage)
    dataset = data.train_dataset if split == "train" else data.test_dataset
    with pytest.raises(DataError, match=re.escape(f"{victim}: coarse map is 50×64 but its sample is 64×64")):
        [dataset[index] for index in range(len(dataset))]


def test_value_beyond_the_classes(potsdam_root, maps):
    victim = sorted((maps / "test").iterdir())[0]
    write_png(victim, np.full((PATCH, PATCH), 6, np.uint8))
    data = setup_coarse(potsdam_root, maps, "test")
    with pytest.raises(DataError, match=re.escape(f"{victim}: value 6 is not a class index")):
        [data.test_dataset[index] for index in range(len(data.test_dataset))]


@pytest.mark.parametrize("key, value", [("dataset", "vaihingen"), ("num_classes", 7)])
def test_record_of_other_data(potsdam_root, maps, key, value):
    record = json.loads((maps / RECORD_NAME).read_text())
    record[key] = value
    (maps / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(DataError, match=re.escape(f"{maps / RECORD_NAME}: these coarse maps were written for {key}")):
        setup_coarse(potsdam_root, maps)


# --------------------------------------------------------------------------------------------------
# predict_split


def test_potsdam_predict_split_takes_the_stored_patches_without_augmentation(potsdam_root):
    data = potsdam(potsdam_root, predict_split="train")
    data.setup("predict")
    plain = PotsdamDataset(potsdam_root, "train")
    assert data.predict_dataset.split == "train" and data.predict_dataset.transform is None
    assert len(data.predict_dataset) == len(plain) == 4
    for index in range(len(plain)):
        sample, expected = data.predict_dataset[index], plain[index]
        assert sample["mask"].shape == (PATCH, PATCH)
        assert torch.equal(sample["image"], expected["image"]) and torch.equal(sample["mask"], expected["mask"])
    unknown = re.escape(f"{potsdam_root}: predict_split 'trainval'") + ".*it has train, val, test"
    with pytest.raises(DataError, match=unknown):
        potsdam(potsdam_root, predict_split="trainval").setup("predict")


def test_chn6cug_predict_split_takes_whole_tiles_without_augmentation(chn6cug_root):
    data = chn6cug(chn6cug_root, predict_split="train")
    data.setup("predict")
    plain = CHN6CUGDataset(chn6cug_root, "train")
    assert len(data.predict_dataset) == len(TILES["train"])
    for index in range(len(plain)):
        sample, expected = data.predict_dataset[index], plain[index]
        assert sample["mask"].shape == (HEIGHT, WIDTH)
        assert torch.equal(sample["image"], expected["image"]) and torch.equal(sample["mask"], expected["mask"])
    with pytest.raises(DataError, match=re.escape(f"{chn6cug_root}: predict_split 'val'") + ".*it has train, test"):
        chn6cug(chn6cug_root, predict_split="val").setup("predict")
    holdout = chn6cug(chn6cug_root, predict_split="val", protocol="holdout", val_fraction=0.34)
    holdout.setup("predict")
    assert len(holdout.predict_dataset) == 2


def test_loveda_predict_split(tmp_path):
    write_loveda(tmp_path)
    data = LoveDADataModule(str(tmp_path), batch_size=2, predict_split="train", **LOADER)
    data.setup("predict")
    assert sorted(sample.id for sample in data.predict_dataset.samples) == ["10", "11", "12", "8", "9"]
    assert data.predict_dataset.transform is None and "mask" in data.predict_dataset[0]
    with pytest.raises(DataError, match=r"predict_split 'Train' .*it has train, val, test, trainval"):
        LoveDADataModule(str(tmp_path), predict_split="Train", **LOADER).setup("predict")
