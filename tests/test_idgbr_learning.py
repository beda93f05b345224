"""IDGBR learns to refine: degraded road maps of the synthetic CHN6-CUG twin get better boundaries.

Heavy (about 25 minutes on 2 CPU cores; run with ``pytest -m heavy``): the pieces it chains are each
covered by the fast tests in test_idgbr_model.py, test_idgbr_task.py and test_coarse_maps.py.

Measured (session 5, this setup with seeds 0 and 1; coarse maps: mIoU 0.870, boundary WF 0.343): after
1000 steps the refined maps score mIoU 0.941 / boundary WF 0.524 (seed 0) and 0.946 / 0.672 (seed 1) with
guidance weight 1. Classifier-free guidance at the paper's weight 3 is unstable on a model this small and
this briefly trained — 0.944 / 0.674 (seed 0) but 0.787 / 0.328 (seed 1) at 1000 steps, and one earlier run
fell to 0.200 at 600 steps — so the check samples with weight 1 (the conditional model alone).

Offline there is no pretrained Stable Diffusion VAE, and a random VAE cannot carry label codes through
its latent, so the test first fits the tiny VAE as an autoencoder of the twin's label codes and images
(``LatentAutoencoderTask``; Stable Diffusion's VAE is such a pretrained autoencoder), then runs IDGBR's
own stages unchanged.
"""

import json

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from rsseg.data import CHN6CUGDataModule, CoarseMapDataModule
from rsseg.data.core.io import read_image, write_png
from rsseg.data.datasets.chn6cug import ROAD_THRESHOLD, binarise_mask, find_pairs
from rsseg.data.synthetic.chn6cug import write_synthetic_chn6cug
from rsseg.metrics import BoundaryWFMeasure, SegmentationMetrics
from rsseg.models.idgbr import LabelEmbedding
from rsseg.tasks.idgbr import IDGBRTask, LatentAutoencoderTask
from tests.idgbr_tiny import TINY_VAE, tiny_idgbr_net

pytestmark = pytest.mark.heavy


def degrade(mask: np.ndarray) -> np.ndarray:
    """A coarse model's typical error on roads: too wide, rounded corners (dilate 3 px, blur, threshold)."""
    wide = cv2.dilate(mask, np.ones((7, 7), np.uint8)).astype(np.float32)
    return (cv2.GaussianBlur(wide, (0, 0), 2.5) > 0.5).astype(np.uint8)


def write_degraded_maps(root, name="degraded"):
    folder = root / "coarse" / name
    record = {"format": 1, "name": name, "dataset": "chn6cug", "protocol": "official", "num_classes": 2,
              "splits": {}}
    for split, official in (("train", "train"), ("test", "val")):
        pairs = find_pairs(root, official)
        (folder / split).mkdir(parents=True)
        for tile, (_, mask_path) in pairs.items():
            write_png(folder / split / f"{tile}.png", degrade(binarise_mask(read_image(mask_path), ROAD_THRESHOLD)))
        record["splits"][split] = {"count": len(pairs), "checkpoint": None}
    (folder / "coarse.json").write_text(json.dumps(record))
    return folder


def fit_label_embedding(path):
    embedding = LabelEmbedding(2)
    optimizer = torch.optim.Adam(embedding.parameters(), lr=2e-2)
    for _ in range(200):
        labels = torch.randint(0, 2, (8, 16, 16))
        loss = torch.nn.functional.cross_entropy(embedding(labels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({"state_dict": {f"net.{k}": v for k, v in embedding.state_dict().items()}}, path)


def coarse_scores(root, folder):
    semantic, boundary = SegmentationMetrics(2), BoundaryWFMeasure()
    for tile, (_, mask_path) in find_pairs(root, "val").items():
        truth = torch.from_numpy(binarise_mask(read_image(mask_path), ROAD_THRESHOLD)).long()[None]
        coarse = torch.from_numpy(read_image(folder / "test" / f"{tile}.png")).long()[None]
        semantic.update(coarse, truth)
        boundary.update(coarse, truth)
    return semantic.compute()["mIoU"], boundary.compute()["WF"]


def test_refining_degraded_road_maps_raises_boundary_wf_and_keeps_miou(tmp_path):
    torch.manual_seed(0)
    root = tmp_path / "chn6cug"
    write_synthetic_chn6cug(root, counts=(16, 4), size=256)
    coarse_folder = write_degraded_maps(root)
    fit_label_embedding(tmp_path / "label_embedding.ckpt")
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, default_root_dir=tmp_path)
    L.Trainer(max_steps=400, **quiet).fit(
        LatentAutoencoderTask(str(tmp_path / "label_embedding.ckpt"), num_classes=2, vae_config=TINY_VAE,
                              export=str(tmp_path / "vae")),
        CHN6CUGDataModule(str(root), batch_size=8, crop_size=64, num_workers=0))
    coarse_miou, coarse_wf = coarse_scores(root, coarse_folder)

    task = IDGBRTask(num_classes=2, net=tiny_idgbr_net(vae=str(tmp_path / "vae")),
                     label_embedding=str(tmp_path / "label_embedding.ckpt"), repa_weight=0.0, cubic_timesteps=False,
                     lr=5e-4, inference_steps=10, inference_window=64, guidance_scale=1.0, test_per_class_wfm=False,
                     wfm_workers=0)
    data = CoarseMapDataModule(CHN6CUGDataModule(str(root), batch_size=8, crop_size=64, num_workers=1,
                                                 eval_batch_size=1), "degraded")
    trainer = L.Trainer(max_steps=1000, **quiet)
    trainer.fit(task, data)
    refined = trainer.test(task, data, verbose=False)[0]
    assert refined["test/boundary_WF"] > coarse_wf + 0.03
    assert refined["test/mIoU"] >= coarse_miou - 0.01
