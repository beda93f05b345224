"""`rsseg fit` and evaluation through the CLI on every semantic dataset's synthetic twin.

RefSegRS and RRSIS-D (referring) need a referring method (DANet/LAVT); their datamodules are tested alone
(tests/test_refsegrs_data.py, tests/test_rrsisd_data.py) and run through `rsseg bench`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from rsseg.cli import main
from rsseg.data.registry import DATAMODULES, PREPARERS
from rsseg.data.synthetic import SYNTHESIZERS

TINY_SYNTH = {
    "potsdam": {"tiles": {"2_11": (150, 170), "2_10": (130, 140), "2_13": (140, 131)}},
    "vaihingen": {"tiles": {"1": (150, 170), "30": (130, 140), "2": (140, 131)}},
    "uavid": {"frame_size": (216, 384), "sequences": (1, 1, 1), "frames_per_seq": 1},
    "loveda": {"per_split": (2, 2, 2), "size": 128},
    "chn6cug": {"counts": (4, 2), "size": 128},
}
# (evaluation command, datamodule arguments): LoveDA and UAVid test labels are private, so they validate.
EVALUATION = {
    "potsdam": ("test", {"crop_size": 64}),
    "vaihingen": ("test", {"crop_size": 64}),
    "uavid": ("validate", {"crop_size": 64}),
    "loveda": ("validate", {"crop_size": 64}),
    "chn6cug": ("test", {"crop_size": 64}),
}


def tiny_synthetic_root(dataset: str, tmp_path: Path) -> Path:
    """A tiny synthetic twin of ``dataset`` under ``tmp_path``, prepared (128² patches) where it needs it."""
    raw = tmp_path / "raw"
    functools.partial(SYNTHESIZERS[dataset], **TINY_SYNTH[dataset])(raw)
    if dataset not in PREPARERS:
        return raw
    PREPARERS[dataset](raw, tmp_path / "prepared", patch_size=128, progress=False)
    return tmp_path / "prepared"


def test_every_semantic_dataset_is_covered():
    referring = {"refsegrs", "rrsisd"}
    assert set(TINY_SYNTH) == set(DATAMODULES) - referring == set(SYNTHESIZERS) - referring


@pytest.mark.parametrize("dataset", sorted(TINY_SYNTH))
def test_fit_and_evaluate_on_the_synthetic_twin(dataset, tmp_path):
    root = tiny_synthetic_root(dataset, tmp_path)
    command, data_args = EVALUATION[dataset]
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": {"class_path": "rsseg.tasks.SMPSegmentationTask",
                  "init_args": {"test_per_class_wfm": False, "net": {
                      "class_path": "rsseg.models.SMPNet", "init_args": {
                          "arch": "unet", "backbone": "resnet18",
                          "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}}}},
        "data": {"class_path": DATAMODULES[dataset].__module__ + "." + DATAMODULES[dataset].__name__,
                 "init_args": {"root": str(root), "batch_size": 2, "num_workers": 0, "pin_memory": False,
                               **data_args}},
    }
    path = Path(tmp_path / "config.yaml")
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    main([command, "--config", str(path)])
