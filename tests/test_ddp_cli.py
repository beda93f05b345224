"""`rsseg fit` and `rsseg test` in two CPU processes (DDP, gloo); the test scores exactly what one process scores.

The test split has an odd number of patches, so the two ranks get different numbers of samples (5 and 4)
and Lightning's default DistributedSampler would pad rank 1 with a duplicate: every sample must still be
counted once, and every metric must equal the single-process run.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import _tiny_args

RSSEG = str(Path(sys.executable).with_name("rsseg"))


@pytest.fixture(scope="module")
def odd_root(tiny_potsdam_raw, tmp_path_factory):
    """96² patches: the 230 × 211 test tile gives 3 × 3 = 9 test patches."""
    from rsseg.data.potsdam import prepare_potsdam

    root = tmp_path_factory.mktemp("potsdam_odd") / "root"
    prepare_potsdam(tiny_potsdam_raw, root, patch_size=96, progress=False)
    return root


def _rsseg(*args: str, cwd: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([RSSEG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _args(root: Path, out: Path) -> list[str]:
    return [*_tiny_args(root, out), "--model.init_args.arch_kwargs", "{}"]


def _test_metrics(folder: Path) -> dict[str, float]:
    [path] = folder.rglob("metrics.csv")
    [row] = [r for r in csv.DictReader(open(path)) if r.get("test/mIoU")]
    return {k: float(v) for k, v in row.items() if k.startswith("test/") and v != ""}


def test_two_process_test_equals_one_process(odd_root, tmp_path):
    from rsseg.data.potsdam import PotsdamDataModule

    data = PotsdamDataModule(str(odd_root), num_workers=0)
    data.setup("test")
    assert len(data.test_dataset) == 9  # odd: ranks get 5 and 4

    # the checkpoint comes from a DDP fit (2 processes) too; the full-depth UNet (encoder_depth 3 would leave
    # smp's last ResNet stage without gradients, which DDP refuses unless find_unused_parameters is set)
    _rsseg("fit", *_args(odd_root, tmp_path / "fit"), "--trainer.max_steps", "3", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
           "--trainer.logger.save_dir", str(tmp_path / "fit"), cwd=tmp_path)
    [checkpoint] = (tmp_path / "fit").rglob("last.ckpt")

    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"test{devices}"
        _rsseg("test", *_args(odd_root, out), "--data.init_args.eval_batch_size", "2",
               "--ckpt_path", str(checkpoint), "--trainer.devices", str(devices),
               *(["--trainer.strategy", "ddp"] if devices > 1 else []),
               "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out),
               cwd=tmp_path)
        runs[devices] = _test_metrics(out)
    one, two = runs[1], runs[2]
    assert set(one) == set(two) and {"test/mIoU", "test/OA", "test/Kappa", "test/mWFm", "test/boundary_WF",
                                     "test/IoU/car", "test/WFm/building"} <= set(one)
    for key, value in one.items():
        if key == "test/loss":  # Dice is computed per batch, and the ranks' batches hold other patches
            continue
        if math.isnan(value):
            assert math.isnan(two[key]), key
        else:
            assert two[key] == value, key
