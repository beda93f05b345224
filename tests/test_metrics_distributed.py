"""All metrics in two CPU processes (gloo) on uneven shards give exactly the single-process result."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rsseg.metrics import BoundaryWFMeasure, ReferringMetrics, SegmentationMetrics, WeightedFMeasure

K = 4
# Batch sizes in order; rank 0 takes the first three batches, rank 1 the rest (uneven in batches and images).
BATCHES = (3, 1, 2, 2, 1)
SHARDS = {0: (0, 1, 2), 1: (3, 4)}


def make_metrics() -> dict:
    return {
        "semantic": SegmentationMetrics(K, exclude_from_mean=(3,), per_class_wfm=True),
        "wfm": WeightedFMeasure(),
        "boundary": BoundaryWFMeasure(),
        "referring": ReferringMetrics(),
    }


def batch(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    b = BATCHES[i]
    coarse = torch.randint(0, K, (b, 1, 5, 6), generator=g).float()
    target = torch.nn.functional.interpolate(coarse, size=(20, 24), mode="nearest")[:, 0].long()
    target[torch.rand(target.shape, generator=g) < 0.05] = 255
    noise = torch.randint(0, K, target.shape, generator=g)
    labels = torch.where(torch.rand(target.shape, generator=g) < 0.8, target.clamp(max=K - 1), noise)
    logits = torch.nn.functional.one_hot(labels, K).permute(0, 3, 1, 2).float() + 0.1 * torch.rand(
        b, K, 20, 24, generator=g
    )
    fg = target == 1
    if i == 1:
        fg[:] = False  # an empty ground truth (WF "zero" policy) on one rank
    soft = (fg.float() * 0.7 + 0.3 * torch.rand(fg.shape, generator=g)).clamp(0, 1)
    return {"logits": logits, "target": target, "fg": fg, "soft": soft, "mask": labels == 1}


def update(metrics: dict, i: int) -> None:
    d = batch(i)
    metrics["semantic"].update(d["logits"], d["target"])
    metrics["wfm"].update(d["soft"], d["fg"])
    metrics["boundary"].update(d["logits"].argmax(1), d["target"])
    metrics["referring"].update(d["mask"], d["fg"])


def compute(metrics: dict) -> dict:
    return {name: m.compute() for name, m in metrics.items()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        metrics = make_metrics()
        for i in SHARDS[rank]:
            update(metrics, i)
        torch.save(compute(metrics), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return (math.isnan(a) and math.isnan(b)) or a == b  # bit-exact, not approximately


def test_two_processes_on_uneven_shards_equal_single_process(tmp_path):
    single = make_metrics()
    for i in range(len(BATCHES)):
        update(single, i)
    expected = compute(single)
    # a sanity check that the shards differ: rank 0 alone gives another answer
    partial = make_metrics()
    for i in SHARDS[0]:
        update(partial, i)
    assert not same(compute(partial), expected)

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert same(got, expected), (rank, got, expected)
