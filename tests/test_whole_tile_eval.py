"""Native-resolution evaluation: whole tiles stitched from patches, sliding windows over uint8 tiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lightning import Trainer

from rsseg.data.core.io import read_image
from rsseg.data.core.prepared import StitchedTileDataset
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from rsseg.data.datasets.isprs.labels import decode_isprs_label
from rsseg.data.datasets.potsdam import PotsdamDataModule, PotsdamDataset
from rsseg.tasks import SMPSegmentationTask

SMALL_UNET = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}
SMALL_NET = {"class_path": "rsseg.models.SMPNet", "init_args": {"arch": "unet", "arch_kwargs": SMALL_UNET}}


def test_stitched_tiles_equal_the_source_tiles(tiny_potsdam, tiny_potsdam_raw):
    tiles = StitchedTileDataset(PotsdamDataset(tiny_potsdam, "test"))
    assert tiles.names == ["2_13"]
    sample = tiles[0]
    image = read_image(tiny_potsdam_raw / "2_Ortho_RGB" / "top_potsdam_2_13_RGB.tif")
    label = read_image(tiny_potsdam_raw / "5_Labels_all_noBoundary" / "top_potsdam_2_13_label_noBoundary.tif")
    assert sample["image"].dtype == torch.uint8
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), image)
    np.testing.assert_array_equal(sample["mask"].numpy(), decode_isprs_label(label)[0])
    assert (sample["meta"]["height"], sample["meta"]["width"]) == image.shape[:2]


def test_uint8_tiles_are_normalised_window_by_window():
    task = SMPSegmentationTask(net=SMALL_NET, num_classes=6, inference_window=64, inference_overlap=16).eval()
    tile = torch.randint(0, 256, (1, 3, 150, 131), dtype=torch.uint8)
    as_float = normalise(tile[0].permute(1, 2, 0).numpy(), IMAGENET_MEAN, IMAGENET_STD)[None]
    with torch.no_grad():
        from_uint8 = task.predict_logits(tile)
        from_float = task.predict_logits(as_float)
    assert from_uint8.device.type == "cpu" and from_uint8.shape == (1, 6, 150, 131)
    torch.testing.assert_close(from_uint8, from_float, rtol=1e-4, atol=1e-4)


def test_whole_tile_test_run_counts_every_labelled_pixel(tiny_potsdam):
    data = PotsdamDataModule(tiny_potsdam, batch_size=2, num_workers=0, pin_memory=False, eval_whole_tiles=True)
    task = SMPSegmentationTask(net=SMALL_NET, num_classes=6, inference_window=64, inference_overlap=16,
                               test_per_class_wfm=False)
    counted = []
    task.on_test_batch_end = lambda outputs, batch, batch_idx, dataloader_idx=0: counted.append(
        (tuple(batch["image"].shape), int((batch["mask"] != 255).sum()))
    )
    trainer = Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    [result] = trainer.test(task, datamodule=data)
    assert [shape for shape, _ in counted] == [(1, 3, 230, 211)]  # one whole 2_13 tile, uint8
    patches = PotsdamDataset(tiny_potsdam, "test")
    labelled = sum(int((patches[i]["mask"] != 255).sum()) for i in range(len(patches)))
    assert counted[0][1] == labelled
    assert not math.isnan(result["test/mIoU"]) and "test/loss" not in result


def test_whole_tiles_need_a_tiled_dataset(tmp_path):
    from rsseg.data.datasets.loveda import LoveDADataModule
    from rsseg.data.synthetic import write_synthetic_loveda

    write_synthetic_loveda(tmp_path, per_split=(2, 2, 2), size=128)
    # eval_whole_tiles belongs to prepared roots; LoveDA is read as released, in whole images
    with pytest.raises(TypeError, match="eval_whole_tiles"):
        LoveDADataModule(str(tmp_path), num_workers=0, eval_whole_tiles=True)
