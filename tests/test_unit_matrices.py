"""Per-unit evaluation counts: units named by the batch contract, summing exactly to the dataset-level
metrics (single process and two gloo processes), kept by the tasks and saved with the run."""

from __future__ import annotations

import functools
import socket
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from rsseg.callbacks import UnitMatrixWriter
from rsseg.data.core.prepared import StitchedTileDataset
from rsseg.data.datasets.potsdam import PotsdamDataModule, PotsdamDataset
from rsseg.data.datasets.refsegrs import RefSegRSDataModule
from rsseg.data.synthetic.refsegrs import write_synthetic_refsegrs
from rsseg.metrics import PerUnitConfusion, PerUnitIoU, ReferringMetrics, SegmentationMetrics, unit_names
from rsseg.metrics.semantic import confusion_matrix
from rsseg.metrics.units import PerUnitCounts, per_sample_confusion
from rsseg.models.danet import DANet
from rsseg.tasks import SMPSegmentationTask
from rsseg.tasks.danet import DANetTask

SMALL_NET = {"class_path": "rsseg.models.SMPNet",
             "init_args": {"arch": "unet", "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": 4}
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522}  # MiniLM's vocabulary: the datamodule tokenises with it
TINY_DANET = dict(pretrained=False, backbone_kwargs=TINY_SWIN, text_encoder=MINILM, text_pretrained=False,
                  text_config=TINY_BERT, drop_path_rate=0.0, decoder_channels=32, num_agents=4, key_dim=16,
                  agent_heads=2, agent_ffn_dim=64)


def smp_task(**kwargs) -> SMPSegmentationTask:
    torch.manual_seed(0)
    return SMPSegmentationTask(net=SMALL_NET, num_classes=6, test_per_class_wfm=False, test_boundary_wfm=False,
                               **kwargs)


def quiet_trainer(tmp_path: Path, **kwargs) -> Trainer:
    return Trainer(**{"logger": False, "accelerator": "cpu", "enable_progress_bar": False,
                      "enable_model_summary": False, "default_root_dir": tmp_path, **kwargs})


class Seen(Callback):
    """Every test batch's unit names, predictions and masks."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches.append((unit_names(batch["meta"], len(batch["mask"])), outputs["pred"], batch["mask"]))


# --- units -------------------------------------------------------------------------------------------------


def test_unit_is_the_tile_else_the_id_and_referring_samples_add_the_sentence():
    assert unit_names({"id": ["2_13_00000_00128", "2_13_00128_00000"], "tile": ["2_13", "2_13"]}, 2) == ["2_13"] * 2
    assert unit_names({"id": ["1366", "4000"], "height": torch.tensor([512, 512])}, 2) == ["1366", "4000"]
    referring = {"id": ["7", "7", "9"], "sentence_index": torch.tensor([0, 1, 0]), "ref_id": torch.tensor([7, 7, 9])}
    assert unit_names(referring, 3) == ["7#0", "7#1", "9#0"]
    with pytest.raises(ValueError, match="meta\\['tile'\\] or meta\\['id'\\]"):
        unit_names({"height": [1]}, 1)
    with pytest.raises(ValueError, match="meta\\['id'\\] has 1 entries for a batch of 2"):
        unit_names({"id": ["a"]}, 2)


def test_per_sample_matrices_are_the_metric_matrices_of_each_sample():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 9, 7), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    labels = torch.randint(0, 4, (3, 9, 7), generator=g)
    per_sample = per_sample_confusion(labels, target, 4)
    for b in range(3):
        assert torch.equal(per_sample[b], confusion_matrix(labels[b:b + 1], target[b:b + 1], 4, 255))
    labels[0, 0, :3], target[1, 0, :3] = torch.tensor([-1, 4, 9]), torch.tensor([-3, 5, 4])  # unvalidated values
    per_sample = per_sample_confusion(labels, target, 4)
    for b in range(3):
        unchecked = confusion_matrix(labels[b:b + 1], target[b:b + 1], 4, 255, validate=False)
        assert torch.equal(per_sample[b], unchecked)


def test_counts_of_one_unit_add_up_and_the_buffer_grows_past_its_first_size():
    counts = PerUnitCounts((2,))
    for start in range(0, 200, 50):
        names = [f"u{i % 70}" for i in range(start, start + 50)]  # 70 units, repeats inside and across batches
        counts.add(names, torch.ones(50, 2, dtype=torch.long))
    names, totals = counts.compute()
    assert names == sorted(f"u{i}" for i in range(70))
    expected = {f"u{i}": sum(1 for j in range(200) if j % 70 == i) for i in range(70)}
    assert totals[:, 0].tolist() == [expected[n] for n in names] and totals.dtype == np.int64


# --- the semantic task ----------------------------------------------------------------------------------------


def test_patches_of_a_tile_add_up_to_that_tile(tiny_potsdam, tmp_path):
    task, seen = smp_task(), Seen()
    data = PotsdamDataModule(tiny_potsdam, batch_size=3, num_workers=0, pin_memory=False)
    quiet_trainer(tmp_path, callbacks=[seen]).test(task, datamodule=data, verbose=False)
    names, confmats = task.unit_matrices["test"]
    tiles = StitchedTileDataset(PotsdamDataset(tiny_potsdam, "test"))
    assert names == tiles.names == ["2_13"]
    assert sum(len(units) for units, _, _ in seen.batches) == len(tiles.tiles["2_13"]) > 1
    by_tile: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(6, 6, dtype=torch.long))
    for units, pred, mask in seen.batches:
        for i, unit in enumerate(units):
            by_tile[unit] += confusion_matrix(pred[i:i + 1], mask[i:i + 1], 6, 255)
    np.testing.assert_array_equal(confmats[0], by_tile["2_13"].numpy())
    assert confmats[0].sum() == int((tiles[0]["mask"] != 255).sum())  # every labelled pixel of the tile


def test_unit_matrices_sum_to_the_dataset_matrix_bit_for_bit(tiny_potsdam, tmp_path):
    """Two tiles' patches in batches of 3, so batches straddle tiles; the whole-tile run names the same tile."""
    task = smp_task()
    patches = DataLoader(PotsdamDataset(tiny_potsdam, "train"), batch_size=3)
    quiet_trainer(tmp_path).test(task, dataloaders=patches, verbose=False)
    names, confmats = task.unit_matrices["test"]
    assert len(names) > 1 and names == sorted({p["tile"] for p in patches.dataset.patches})
    assert confmats.dtype == np.int64
    assert torch.equal(torch.from_numpy(confmats.sum(0)), task.confusion_matrices["test"])

    task = smp_task(inference_window=64, inference_overlap=16)
    whole = PotsdamDataModule(tiny_potsdam, batch_size=1, num_workers=0, pin_memory=False, eval_whole_tiles=True)
    quiet_trainer(tmp_path).test(task, datamodule=whole, verbose=False)
    names, confmats = task.unit_matrices["test"]
    assert names == ["2_13"]
    assert torch.equal(torch.from_numpy(confmats.sum(0)), task.confusion_matrices["test"])


def test_the_npz_is_saved_with_the_run_and_reloads_aligned(tiny_potsdam, tmp_path):
    task = smp_task()
    data = PotsdamDataModule(tiny_potsdam, batch_size=3, num_workers=0, pin_memory=False)
    logger = CSVLogger(tmp_path / "logs")
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[UnitMatrixWriter()])
    trainer.test(task, datamodule=data, verbose=False)
    trainer.validate(task, datamodule=data, verbose=False)
    folder = Path(logger.log_dir)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(("per_unit", ".per_unit"))) == [
        "per_unit_test.npz", "per_unit_val.npz"]  # and no temporary file left behind
    for prefix in ("test", "val"):
        with np.load(folder / f"per_unit_{prefix}.npz") as saved:  # no pickle needed
            names, confmats = task.unit_matrices[prefix]
            assert saved["names"].tolist() == names
            np.testing.assert_array_equal(saved["confmats"], confmats)
            assert saved["class_names"].tolist() == list(data.spec.classes)
            assert int(saved["ignore_index"]) == 255
            assert saved["exclude_from_mean"].tolist() == list(data.spec.exclude_from_mean)

    bare = quiet_trainer(tmp_path / "bare", callbacks=[UnitMatrixWriter()])  # no logger: default_root_dir
    bare.test(smp_task(), datamodule=data, verbose=False)
    with np.load(tmp_path / "bare" / "per_unit_test.npz") as saved:
        assert saved["names"].tolist() == ["2_13"] and saved["confmats"].shape == (1, 6, 6)


# --- the referring task ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_refsegrs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refsegrs")
    write_synthetic_refsegrs(root, counts=(4, 2, 3), size=128)
    return root


def test_referring_units_are_expressions_whose_i_and_u_sum_to_the_metric(tiny_refsegrs, tmp_path):
    torch.manual_seed(0)
    task = DANetTask(net=functools.partial(DANet, **TINY_DANET))
    data = RefSegRSDataModule(tiny_refsegrs, tokenizer=MINILM, image_size=64, native_masks=True, batch_size=2,
                              num_workers=0, pin_memory=False)
    seen = Seen()
    [result] = quiet_trainer(tmp_path, callbacks=[seen, UnitMatrixWriter()]).test(task, datamodule=data,
                                                                                 verbose=False)
    reference = ReferringMetrics()
    for _, pred, mask in seen.batches:
        reference.update(pred, mask)
    names, counts = task.unit_matrices["test"]
    expected = sorted(unit for units, _, _ in seen.batches for unit in units)
    assert names == expected and len(set(names)) == len(names) == int(reference.n) > 2
    assert counts.sum(0).tolist() == [int(reference.cum_i), int(reference.cum_u)]
    assert result["test/oIoU"] == pytest.approx(counts[:, 0].sum() / counts[:, 1].sum(), rel=1e-6)
    native_names, native = task.unit_matrices["test_native"]
    assert native_names == names
    assert result["test/native/oIoU"] == pytest.approx(native[:, 0].sum() / native[:, 1].sum(), rel=1e-6)
    with np.load(tmp_path / "per_unit_test_native.npz") as saved:
        assert saved["names"].tolist() == names
        np.testing.assert_array_equal(np.stack([saved["intersections"], saved["unions"]], 1), native)
        assert float(saved["empty_iou"]) == 0.0


# --- two processes --------------------------------------------------------------------------------------------

K = 4
# Unit names of each batch's samples; rank 0 takes the first two batches, rank 1 the rest, so the patches of
# tiles A and B are scored on both ranks.
BATCHES = (("A", "A", "B"), ("C",), ("A", "D"), ("B", "E", "A"))
SHARDS = {0: (0, 1), 1: (2, 3)}


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(200 + i)
    n = len(BATCHES[i])
    target = torch.randint(0, K, (n, 12, 10), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    labels = torch.where(torch.rand(target.shape, generator=g) < 0.7, target.clamp(max=K - 1),
                         torch.randint(0, K, target.shape, generator=g))
    return labels, target


def score(indices) -> dict:
    """Per-unit and dataset-level counts of the batches ``indices`` (synced under DDP)."""
    units, semantic = PerUnitConfusion(K), SegmentationMetrics(K)
    expressions, referring = PerUnitIoU(), ReferringMetrics()
    for i in indices:
        labels, target = batch(i)
        units.update(labels, target, BATCHES[i])
        semantic.update(labels, target)
        fg, pred = target == 1, labels == 1
        expressions.update(pred, fg, [f"{u}#0" for u in BATCHES[i]])
        referring.update(pred, fg)
    with semantic.sync_context(), referring.sync_context():
        totals = {"confmat": semantic.confmat.clone(), "iu": [int(referring.cum_i), int(referring.cum_u)]}
    return {"confusion": units.compute(), "iou": expressions.compute(), **totals}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(score(SHARDS[rank]), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_a_tile_split_across_ranks_equal_one_process(tmp_path):
    single = score(range(len(BATCHES)))
    names, confmats = single["confusion"]
    assert names == ["A", "B", "C", "D", "E"]
    assert torch.equal(torch.from_numpy(confmats.sum(0)), single["confmat"])
    assert single["iou"][1].sum(0).tolist() == single["iu"]
    assert not np.array_equal(score(SHARDS[0])["confusion"][1][0], confmats[0])  # rank 0 alone misses some of A

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key in ("confusion", "iou"):
            assert got[key][0] == single[key][0], (rank, key)
            np.testing.assert_array_equal(got[key][1], single[key][1])
        assert torch.equal(got["confmat"], single["confmat"]) and got["iu"] == single["iu"]
