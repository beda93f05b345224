"""Data-parallel training throughput: images/s for 1…N devices and per-device batch sizes, as JSON.

Each (devices, batch) configuration runs in a fresh process (a fresh process group): this script starts
itself with ``--one-config``, and Lightning's DDP launcher re-runs that command for the other ranks. Batches
are random tensors in the batch-dict contract, held in memory, so data loading is not measured. Rank 0 times
the ``--steps`` optimiser steps after ``--warmup`` ones (barriers on both ends) and reports images/s =
world size × per-device batch × steps / seconds, and the scaling efficiency against 1 device at the same
per-device batch. On CPUs each process gets ``cores // devices`` threads, so processes do not oversubscribe
the machine (and a 2-core machine cannot show a speed-up: it shows the cost of DDP's communication).

Usage: python benchmarks/scaling.py [--method unet|d2ls] [--accelerator cpu|gpu] [--devices 1,2]
       [--batch 2,4] [--strategy ddp|fsdp] [--size 256] [--steps 10] [--warmup 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from lightning import Callback, Trainer
from speed_common import Records, bench_environment
from torch.utils.data import Dataset

NUM_CLASSES = 6
RECORD_PREFIX = "SCALING_RECORD "


def build_task(method: str):
    """The smoke profile's small offline models of the same classes as the paper configs."""
    if method == "unet":
        from rsseg.tasks import SMPSegmentationTask

        return SMPSegmentationTask(arch="unet", encoder="resnet18", encoder_weights=None, num_classes=NUM_CLASSES,
                                   scheduler="none", loss="ce+dice")
    if method == "d2ls":
        from rsseg.tasks import D2LSTask

        return D2LSTask(num_classes=NUM_CLASSES, backbone="convnext_atto", pretrained=False, embed_dim=128,
                        scheduler="none")
    raise SystemExit(f"unknown method {method!r}; choose unet or d2ls")


class RandomBatches(Dataset):
    def __init__(self, length: int, size: int) -> None:
        self.length, self.size = length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"image": torch.randn(3, self.size, self.size, generator=g),
                "mask": torch.randint(0, NUM_CLASSES, (self.size, self.size), generator=g)}


class StepTimer(Callback):
    """Wall time of the steps after ``warmup``, synchronised across ranks on both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, None, None

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        trainer.strategy.barrier()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self.seconds = time.perf_counter() - self.start


def run_one(args) -> None:
    """One configuration, in every rank; rank 0 prints the record."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.devices) if args.accelerator == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    task = build_task(args.method)
    total_steps = args.warmup + args.steps
    data = RandomBatches(total_steps * args.batch * args.devices, args.size)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    timer = StepTimer(args.warmup)
    trainer = Trainer(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy if args.devices > 1
                      else "auto", max_steps=total_steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, precision=args.precision,
                      num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    if trainer.global_rank == 0:
        images = trainer.world_size * args.batch * args.steps
        record = {"method": args.method, "devices": trainer.world_size, "strategy": args.strategy,
                  "per_device_batch": args.batch, "size": args.size, "precision": args.precision,
                  "steps": args.steps, "warmup": args.warmup, "threads_per_process": threads,
                  "seconds": round(timer.seconds, 3), "img_per_s": round(images / timer.seconds, 3),
                  "img_per_s_per_device": round(images / timer.seconds / trainer.world_size, 3)}
        print(RECORD_PREFIX + json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="unet")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts")
    parser.add_argument("--batch", default="2,4", help="comma-separated per-device batch sizes")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--one-config", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_config:
        args.devices, args.batch = int(args.devices), int(args.batch)
        run_one(args)
        return

    records = Records(bench_environment("cuda" if args.accelerator == "gpu" else "cpu"))
    single: dict[int, float] = {}
    for batch in map(int, args.batch.split(",")):
        for devices in map(int, args.devices.split(",")):
            command = [sys.executable, os.path.abspath(__file__), "--one-config", "--devices", str(devices),
                       "--batch", str(batch), *(f"--{k}={getattr(args, k)}" for k in
                                                ("method", "accelerator", "strategy", "precision", "size",
                                                 "steps", "warmup"))]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith(RECORD_PREFIX)]
            if done.returncode != 0 or not lines:
                records.add({"method": args.method, "devices": devices, "per_device_batch": batch,
                             "failed": done.stderr.strip().splitlines()[-1:] or ["no record"]})
                continue
            record = json.loads(lines[-1].removeprefix(RECORD_PREFIX))
            if devices == 1:
                single[batch] = record["img_per_s"]
            if batch in single:
                record["scaling_efficiency"] = round(record["img_per_s"] / (single[batch] * devices), 3)
            records.add(record)
    records.finish(args.out)


if __name__ == "__main__":
    main()
