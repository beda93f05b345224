"""W&B tracking of CLI runs, read back from the offline run files (the real client, never a mock)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rsseg.cli import main
from rsseg.data.datasets.potsdam import PotsdamDataModule
from rsseg.manifest import data_checksum, git_revision
from tests.test_cli import _tiny_args
from tests.wandb_offline import offline_runs


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_fit_and_test_log_config_manifest_tables_and_labelled_masks(tiny_potsdam, tmp_path, offline_wandb):
    main(["fit", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1"])
    main(["test", *_tiny_args(tiny_potsdam, tmp_path)])
    fit, test = offline_runs(tmp_path)
    for run, job in ((fit, "fit"), (test, "test")):
        assert (run.name, run.group, run.job_type) == ("unet", "potsdam", job)
        assert set(run.tags) == {"unet", "unetformer"}  # method and protocol
        assert run.config["config"]["model"]["class_path"] == "rsseg.tasks.SMPSegmentationTask"
        assert run.config["config"]["data"]["init_args"]["root"] == str(tiny_potsdam)
        manifest = run.config["manifest"]
        assert manifest["git"]["commit"] == git_revision()["commit"]
        assert manifest["seed"] == 42 and manifest["protocol"] == "unetformer"
        assert manifest["data_checksum"] == data_checksum(tiny_potsdam)
        assert manifest["versions"]["torch"] and manifest["device"]
    assert len(fit.logged("train/loss")) >= 3  # the training curve, every step

    # the per-class table repeats the logged scalars, and both follow from the logged confusion matrix
    [scalars] = [row for row in test.history if "test/mIoU" in row]
    table = test.table("test/per_class")
    classes = [row[0] for row in table["data"]]
    assert table["columns"] == ["class", "IoU", "F1", "Precision", "Recall", "WFm"]
    for row in table["data"]:
        assert row[1] == pytest.approx(scalars[f"test/IoU/{row[0]}"], nan_ok=True)
        assert row[5] == pytest.approx(scalars[f"test/WFm/{row[0]}"], nan_ok=True)
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for actual, predicted, n in test.table("test/confusion_matrix_table")["data"]:
        counts[classes.index(actual), classes.index(predicted)] = n
    tp = np.diag(counts)
    with np.errstate(invalid="ignore"):
        iou = tp / (counts.sum(0) + counts.sum(1) - tp)
    assert scalars["test/mIoU"] == pytest.approx(np.nanmean(iou[:5]))  # clutter left out (UNetFormer protocol)
    assert scalars["test/OA"] == pytest.approx(tp.sum() / counts.sum())

    # prediction panels: the first test patches with class-labelled prediction and ground-truth masks
    [panel] = test.logged("test/predictions")
    labels = test.config["_wandb"]["mask/class_labels"]["test/predictions_wandb_delimeter_ground_truth"]["value"]
    assert labels == {**{str(i): c for i, c in enumerate(classes)}, "255": "ignore"}
    data = PotsdamDataModule(str(tiny_potsdam), num_workers=0)
    data.setup("test")
    assert len(panel["all_masks"]) == panel["count"] == min(4, len(data.test_dataset))
    for i, masks in enumerate(panel["all_masks"]):
        sample = data.test_dataset[i]
        assert panel["captions"][i] == sample["meta"]["id"]
        truth = np.asarray(Image.open(test.folder / "files" / masks["ground_truth"]["path"]))
        np.testing.assert_array_equal(truth, sample["mask"].numpy())
        pred = np.asarray(Image.open(test.folder / "files" / masks["prediction"]["path"]))
        assert pred.shape == truth.shape and pred.max() < len(classes)


def test_a_config_logger_wins_and_false_turns_logging_off(tiny_potsdam, tmp_path, offline_wandb):
    main(["test", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.logger", "false"])
    assert offline_runs(tmp_path) == []
    main(["test", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir", str(tmp_path / "csv")])
    assert offline_runs(tmp_path) == [] and list((tmp_path / "csv").rglob("metrics.csv"))
