"""`rsseg fit` and `rsseg test` in two CPU processes (DDP, gloo); the test scores exactly what one process scores.

The test split has an odd number of patches, so the two ranks get different numbers of samples (5 and 4)
and Lightning's default DistributedSampler would pad rank 1 with a duplicate: every sample must still be
scored once, and every metric must equal the single-process run. The runs are real subprocesses of the
console script, as Lightning's DDP launcher re-executes the command line for the other rank.

Every process runs one intra-op thread (``OMP_NUM_THREADS=1``): Lightning gives each CPU DDP rank
``cores // ranks`` threads, and a different thread count changes float summation order, which can flip an
argmax (it does for SDCI's random smoke weights) — a difference of numerics, not of sharding.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from tests.test_cli import _tiny_args

REPO = Path(__file__).resolve().parents[1]
RSSEG = str(Path(sys.executable).with_name("rsseg"))
SDCI = ("--config", str(REPO / "experiments/sdci/potsdam.yaml"), "--config", str(REPO / "experiments/sdci/smoke.yaml"))
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


class ScoredSamples(Callback):
    """What a test run scored, written by rank 0 to ``<default_root_dir>/scored.json``: the sample ids of
    every rank's batches and the pixel count of the synchronised test confusion matrix."""

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.ids: list[str] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.ids += list(batch["meta"]["id"])

    def on_test_end(self, trainer, pl_module) -> None:
        ids = [self.ids]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ids = [None] * trainer.world_size
            torch.distributed.all_gather_object(ids, self.ids)
        if trainer.is_global_zero:
            pixels = int(pl_module.confusion_matrices["test"].sum())
            scored = {"ids": [i for rank in ids for i in rank], "pixels": pixels}
            (Path(trainer.default_root_dir) / "scored.json").write_text(json.dumps(scored))


@pytest.fixture(scope="module")
def odd_root(tiny_potsdam_raw, tmp_path_factory):
    """96² patches: the 230 × 211 test tile gives 3 × 3 = 9 test patches."""
    from rsseg.data.datasets.potsdam import prepare_potsdam

    root = tmp_path_factory.mktemp("potsdam_odd") / "root"
    prepare_potsdam(tiny_potsdam_raw, root, patch_size=96, progress=False)
    return root


def _rsseg(*args: str, cwd: Path) -> None:
    _rsseg_side_by_side(list(args), cwd=cwd)


def _rsseg_side_by_side(*commands: list[str], cwd: Path) -> None:
    """Run `rsseg` commands at once (each process is single-threaded; a DDP run's ranks start one after the
    other, so their imports leave a core free); fail with the output of any that fails."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = []
    for command in commands:
        log = tempfile.TemporaryFile("w+", dir=cwd)
        runs.append((log, subprocess.Popen([RSSEG, *command], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           text=True)))
    try:
        for log, run in runs:
            run.wait(timeout=600)
            log.seek(0)
            assert run.returncode == 0, log.read()[-6000:]
    finally:
        for log, run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
            log.close()


def _args(root: Path, out: Path) -> list[str]:
    return [*_tiny_args(root, out), "--model.init_args.net.init_args.arch_kwargs", "{}"]


def _test_metrics(folder: Path) -> dict[str, float]:
    [path] = folder.rglob("metrics.csv")
    [row] = [r for r in csv.DictReader(open(path)) if r.get("test/mIoU")]
    return {k: float(v) for k, v in row.items() if k.startswith("test/") and v != ""}


def _test_in_one_and_two_processes(args, tmp_path: Path) -> dict[int, tuple[dict[str, float], dict]]:
    """``rsseg test`` with ``args`` once in one process and once in two (DDP), side by side; per run its
    logged test metrics and what it scored (:class:`ScoredSamples`)."""
    outs = {devices: tmp_path / f"test{devices}" for devices in (1, 2)}
    _rsseg_side_by_side(*(
        ["test", *args, "--data.init_args.eval_batch_size", "2", "--trainer.default_root_dir", str(out),
         "--trainer.devices", str(devices), *(["--trainer.strategy", "ddp"] if devices > 1 else []),
         "--trainer.logger", CSV_LOGGER, "--trainer.logger.save_dir", str(out),
         f"--trainer.callbacks+={__name__}.ScoredSamples"]
        for devices, out in outs.items()
    ), cwd=tmp_path)
    return {devices: (_test_metrics(out), json.loads((out / "scored.json").read_text()))
            for devices, out in outs.items()}


def _assert_bit_equal(one: dict[str, float], two: dict[str, float], skip: tuple[str, ...] = ()) -> None:
    assert set(one) == set(two)
    for key, value in one.items():
        if key in skip:
            continue
        if math.isnan(value):
            assert math.isnan(two[key]), key
        else:
            assert two[key] == value, (key, value, two[key])


def _odd_test_split(root: Path) -> list[str]:
    """The test split's sample ids, checked to shard unevenly over 2 ranks with a partial last batch of 2."""
    from rsseg.data.datasets.potsdam import PotsdamDataModule

    data = PotsdamDataModule(str(root), num_workers=0, eval_batch_size=2)
    data.setup("test")
    ids = [data.test_dataset.sample_id(i) for i in range(len(data.test_dataset))]
    assert len(ids) == 9  # odd: the ranks get 5 and 4 (batches 2+2+1 and 2+2; one process: 2+2+2+2+1)
    return ids


def test_two_process_test_equals_one_process(odd_root, tmp_path):
    from rsseg.data.core.io import read_image

    ids = _odd_test_split(odd_root)

    # the checkpoint comes from a DDP fit (2 processes) too; the full-depth UNet (encoder_depth 3 would leave
    # smp's last ResNet stage without gradients, which DDP refuses unless find_unused_parameters is set)
    _rsseg("fit", *_args(odd_root, tmp_path / "fit"), "--trainer.max_steps", "3", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.logger", CSV_LOGGER,
           "--trainer.logger.save_dir", str(tmp_path / "fit"), cwd=tmp_path)
    [checkpoint] = (tmp_path / "fit").rglob("last.ckpt")

    runs = _test_in_one_and_two_processes([*_args(odd_root, tmp_path), "--ckpt_path", str(checkpoint)], tmp_path)
    (one, scored_one), (two, scored_two) = runs[1], runs[2]
    # every test patch scored exactly once, its labelled pixels once in the synchronised confusion matrix
    labelled = sum(int((read_image(odd_root / "test" / "masks" / f"{i}.png") != 255).sum()) for i in ids)
    for scored in (scored_one, scored_two):
        assert sorted(scored["ids"]) == sorted(ids) and scored["pixels"] == labelled
    assert {"test/mIoU", "test/OA", "test/Kappa", "test/mF1", "test/mWFm", "test/boundary_WF", "test/IoU/car",
            "test/F1/tree", "test/WFm/building"} <= set(one)
    # Dice is computed per batch, and the ranks' batches hold other patches: the loss may differ
    _assert_bit_equal(one, two, skip=("test/loss",))


def test_sdci_two_process_test_equals_one_process(odd_root, tmp_path):
    """SDCI (training-free; the smoke profile's tiny random CLIP/DINO) shards the test set across ranks."""
    ids = _odd_test_split(odd_root)
    args = [*SDCI, "--data.init_args.root", str(odd_root), "--data.init_args.protocol", "unetformer",
            "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu"]
    runs = _test_in_one_and_two_processes(args, tmp_path)
    (one, scored_one), (two, scored_two) = runs[1], runs[2]
    assert sorted(scored_one["ids"]) == sorted(scored_two["ids"]) == sorted(ids)
    assert scored_one["pixels"] == scored_two["pixels"] > 0
    assert {"test/mIoU", "test/OA", "test/Kappa", "test/boundary_WF", "test/IoU/car"} <= set(one)
    _assert_bit_equal(one, two)


def test_two_process_coarse_maps_equal_one_process(odd_root, tmp_path):
    """CoarseMapWriter under DDP: each rank writes its shard, rank 0 swaps the split in once all are there."""
    from rsseg.data.core.io import read_image

    folders = {}
    for devices in (1, 2):
        out = tmp_path / f"maps{devices}"
        _rsseg("predict", *_args(odd_root, tmp_path / f"predict{devices}"), "--data.init_args.predict_split", "test",
               "--data.init_args.eval_batch_size", "2", "--trainer.devices", str(devices),
               *(["--trainer.strategy", "ddp"] if devices > 1 else []), "--trainer.logger", "false",
               "--trainer.callbacks+=rsseg.data.CoarseMapWriter", "--trainer.callbacks.name", "unet",
               "--trainer.callbacks.output_root", str(out), "--return_predictions", "false", cwd=tmp_path)
        folders[devices] = out / "coarse" / "unet"
    one, two = (sorted(p.name for p in (folders[d] / "test").iterdir()) for d in (1, 2))
    assert len(one) == 9 and one == two
    for name in one:
        assert (read_image(folders[1] / "test" / name) == read_image(folders[2] / "test" / name)).all(), name
    assert not list(folders[2].glob(".test.tmp*"))  # the staging folder was swapped in
