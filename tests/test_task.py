"""The shared segmentation task: it learns, and it evaluates with the dataset's convention."""

from __future__ import annotations

import math

import pytest
import torch
from lightning import Trainer, seed_everything

from rsseg.data.datasets.potsdam import PotsdamDataModule
from rsseg.tasks import SMPSegmentationTask
from rsseg.tasks.segmentation import _lr_lambda

SMALL_UNET = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}


def smp_net(**init_args) -> dict:
    """``net`` of an SMPSegmentationTask in the config form."""
    return {"class_path": "rsseg.models.SMPNet", "init_args": init_args}


def _task(**kwargs) -> SMPSegmentationTask:
    return SMPSegmentationTask(net=smp_net(arch="unet", backbone="resnet18", arch_kwargs=SMALL_UNET), num_classes=6,
                               **kwargs)


def _datamodule(root) -> PotsdamDataModule:
    return PotsdamDataModule(root, batch_size=4, crop_size=96, num_workers=0, pin_memory=False)


def test_loss_decreases_on_synthetic_data(tiny_potsdam):
    """Training loss falls and the held-out loss follows; BatchNorm running statistics after 40 small
    batches make the held-out value noisy, so the firm threshold is on the training losses."""
    seed_everything(0)
    data = _datamodule(tiny_potsdam)
    data.setup("fit")
    fixed = next(iter(torch.utils.data.DataLoader(data.val_dataset, batch_size=4)))
    task = _task(lr=2e-3, scheduler="none", loss="ce")
    losses: list[float] = []
    task.on_train_batch_end = lambda outputs, batch, batch_idx: losses.append(float(outputs["loss"]))

    def held_out_loss() -> float:
        task.eval()
        with torch.no_grad():
            loss = float(task.criterion(task(fixed["image"]), fixed["mask"]))
        task.train()
        return loss

    before = held_out_loss()
    trainer = Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      limit_val_batches=0, accelerator="cpu", enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    after = held_out_loss()
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert len(losses) == 40 and last < 0.7 * first, (first, last)
    assert after < before, (before, after)


def test_evaluation_uses_dataset_convention(tiny_potsdam):
    data = _datamodule(tiny_potsdam)
    task = _task()
    trainer = Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    [result] = trainer.test(task, datamodule=data)
    names = data.spec.classes
    assert {f"test/IoU/{n}" for n in names} <= set(result)
    kept = [result[f"test/IoU/{n}"] for i, n in enumerate(names) if i not in data.spec.exclude_from_mean]
    kept = [v for v in kept if not math.isnan(v)]
    assert result["test/mIoU"] == pytest.approx(sum(kept) / len(kept), abs=1e-6)
    assert 0.0 <= result["test/OA"] <= 1.0
    wfm = [result[f"test/WFm/{n}"] for i, n in enumerate(names) if i not in data.spec.exclude_from_mean]
    assert result["test/mWFm"] == pytest.approx(sum(wfm) / len(wfm), abs=1e-6)


def test_num_classes_mismatch_with_dataset_is_an_error(tiny_potsdam):
    task = SMPSegmentationTask(net=smp_net(arch="unet", backbone="resnet18", arch_kwargs=SMALL_UNET), num_classes=4)
    trainer = Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    with pytest.raises(ValueError, match="4 classes"):
        trainer.test(task, datamodule=_datamodule(tiny_potsdam))


def test_schedules():
    cosine = _lr_lambda("cosine", warmup=10, total=110)
    assert cosine(0) == pytest.approx(0.1)
    assert cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5)
    assert cosine(110) == pytest.approx(0.0)
    poly = _lr_lambda("poly", warmup=0, total=100)
    assert poly(50) == pytest.approx(0.5**0.9)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown smp architecture 'unett'"):
        SMPSegmentationTask(net=smp_net(arch="unett"), num_classes=6)


@pytest.mark.parametrize("arch,encoder", [("unet", "resnet18"), ("deeplabv3plus", "resnet18"), ("segformer", "mit_b0")])
def test_bench_baselines_build_and_keep_the_input_size(arch, encoder):
    task = SMPSegmentationTask(net=smp_net(arch=arch, backbone=encoder), num_classes=6).eval()
    with torch.no_grad():
        assert task(torch.randn(1, 3, 64, 64)).shape == (1, 6, 64, 64)


def test_a_task_outside_a_trainer_uses_its_own_convention():
    task = _task(exclude_from_mean=(5,))
    task.setup("test")
    assert task.test_metrics.class_names[0] == "class0" and task.test_metrics.exclude_from_mean == (5,)
