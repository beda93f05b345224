"""Data-parallel training throughput: images/s for 1…N devices and per-device batch sizes, as JSON.

Each (method, devices, batch) configuration runs in a fresh process, hence a fresh process group: this script
starts itself with ``--_one-config``, and Lightning's DDP launcher re-runs that command for the other ranks.
Batches are random tensors in the batch-dict contract (``image`` float B×3×H×W, ``mask`` int64 B×H×W) from a
small in-memory pool (Lightning adds the ``DistributedSampler``), so data loading is not measured. Every rank
runs ``--warmup`` optimiser steps, then a barrier starts the clock, ``--steps`` steps run and a second barrier
stops it; rank 0 reports

* images/s = world size × per-device batch × steps / seconds, and per device;
* the median and 90th-percentile step time on rank 0 (each step includes DDP's gradient all-reduce);
* the scaling efficiency: images/s / (devices × images/s on 1 device at the same per-device batch);
* the peak memory of the timed steps, the largest over the ranks (CUDA allocator on a GPU, process peak RSS on
  a CPU).

One device runs without a process group (Lightning's single-device strategy), the baseline the efficiency is
measured against. On CPUs each process gets ``cores // devices`` threads (``OMP_NUM_THREADS`` and
``torch.set_num_threads``), so the processes do not oversubscribe the machine; they share its cores, so CPU
"devices" add no compute: CPU records show the cost of the extra processes and the all-reduce, not a speed-up.

Usage: python benchmarks/scaling.py [--method unet,d2ls] [--accelerator cpu|gpu] [--devices 1,2]
       [--batch 2,4] [--strategy ddp|fsdp] [--precision 32-true] [--size 256] [--steps 5] [--warmup 2]
       [--out benchmarks/results/scaling_<device>.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

import torch
from speed_common import Records, bench_environment
from torch.utils.data import DataLoader, Dataset

NUM_CLASSES = 6
POOL = 8  # distinct random samples held in memory
RECORD_PREFIX = "SCALING_RECORD "
METHODS = ("unet", "d2ls")


def build_task(method: str):
    """The smoke profile's small offline models (``experiments/<method>/smoke.yaml``) of the paper configs'
    classes: smp UNet-ResNet18 with random weights; D2LS with ConvNeXt-atto (random init), C' = 128, L = 3,
    no stochastic depth. The schedule is constant (it does not change the step's cost)."""
    if method == "unet":
        from rsseg.models import SMPNet
        from rsseg.tasks import SMPSegmentationTask

        net = functools.partial(SMPNet, arch="unet", backbone="resnet18", pretrained=False)
        return SMPSegmentationTask(net=net, num_classes=NUM_CLASSES,
                                   loss="ce+dice", label_smoothing=0.05, lr=2e-3, scheduler="none")
    if method == "d2ls":
        from rsseg.models import D2LS
        from rsseg.tasks import D2LSTask

        net = functools.partial(D2LS, backbone="convnext_atto", pretrained=False, drop_path_rate=0.0, embed_dim=128)
        return D2LSTask(net=net, num_classes=NUM_CLASSES, lr=1e-3, scheduler="none")
    raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")


class RandomBatches(Dataset):
    """``length`` samples cycling through ``POOL`` random ones made up front (no work per item but a copy)."""

    def __init__(self, length: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.length = length
        self.images = torch.randn(POOL, 3, size, size, generator=g)
        self.masks = torch.randint(0, NUM_CLASSES, (POOL, size, size), generator=g)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index % POOL], "mask": self.masks[index % POOL]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_timer(warmup: int, steps: int):
    from lightning import Callback

    from rsseg.profiling import peak_memory_mib, reset_peak_memory

    class StepTimer(Callback):
        """Barrier-synchronised wall time of the steps after ``warmup``; step ends on this rank; peak memory."""

        def __init__(self) -> None:
            self.batches, self.start, self.seconds, self.ends, self.peak_mib = 0, None, None, [], None
            self.threads = None

        def _sync(self, trainer) -> None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize(trainer.strategy.root_device)
            trainer.strategy.barrier()

        def on_train_start(self, trainer, pl_module) -> None:
            self.threads = torch.get_num_threads()  # after Lightning's launcher has had its say

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.batches += 1
            device = trainer.strategy.root_device
            if self.batches == warmup:
                self._sync(trainer)
                reset_peak_memory(device)
                self.start = time.perf_counter()
                self.ends = [self.start]
            elif self.batches > warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.ends.append(time.perf_counter())
                if self.batches == warmup + steps:
                    self._sync(trainer)
                    self.seconds = time.perf_counter() - self.start
                    peak = torch.tensor([peak_memory_mib(device)], device=device)
                    self.peak_mib = float(trainer.strategy.all_gather(peak).max())  # collective: every rank

    return StepTimer()


def run_one(args) -> None:
    """One configuration, in every rank (Lightning re-runs this command); rank 0 prints the record."""
    from lightning import Trainer

    cores = usable_cores()
    if args.accelerator == "cpu":
        threads = max(1, cores // args.devices)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # Lightning's launcher keeps an explicit setting
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    task = build_task(args.method)
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be ≥ 1")
    total_steps = args.warmup + args.steps
    data = RandomBatches(total_steps * args.batch * args.devices, args.size)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0,
                        pin_memory=args.accelerator == "gpu")
    timer = make_timer(args.warmup, args.steps)
    strategy = args.strategy if args.devices > 1 else "auto"
    trainer = Trainer(accelerator=args.accelerator, devices=args.devices, strategy=strategy, precision=args.precision,
                      max_steps=total_steps, callbacks=[timer], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, benchmark=args.accelerator == "gpu")
    trainer.fit(task, train_dataloaders=loader)
    if trainer.global_rank != 0:
        return
    if timer.seconds is None:
        raise SystemExit(f"only {timer.batches} of {total_steps} steps ran")
    world = trainer.world_size
    images = world * args.batch * args.steps
    steps = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
    root = trainer.strategy.root_device
    record = {
        "benchmark": "scaling", "method": args.method, "task": type(task).__name__, "dataset": "random (in memory)",
        "accelerator": args.accelerator,
        "device_name": torch.cuda.get_device_name(root) if root.type == "cuda" else cpu_model(),
        "strategy": type(trainer.strategy).__name__, "devices": world, "num_nodes": trainer.num_nodes,
        "per_device_batch": args.batch, "global_batch": world * args.batch, "image_size": args.size,
        "precision": args.precision, "params_M": round(sum(p.numel() for p in task.parameters()) / 1e6, 3),
        "threads_per_process": timer.threads, "usable_cores": cores, "warmup": args.warmup, "steps": args.steps,
        "seconds": round(timer.seconds, 3), "img_per_s": round(images / timer.seconds, 3),
        "img_per_s_per_device": round(images / timer.seconds / world, 3),
        "step_s_median": round(statistics.median(steps), 4),
        "step_s_p90": round(sorted(steps)[max(0, round(0.9 * len(steps)) - 1)], 4),
        "peak_mib_max_rank": round(timer.peak_mib, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if root.type == "cuda" else "process peak RSS",
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    print(RECORD_PREFIX + json.dumps(record), flush=True)


def run_config(args, method: str, devices: int, batch: int) -> dict:
    """Run one configuration as a subprocess (its own process group and session); its record or a failure."""
    command = [sys.executable, os.path.abspath(__file__), "--_one-config", f"--method={method}",
               f"--devices={devices}", f"--batch={batch}",
               *(f"--{k}={getattr(args, k)}" for k in ("accelerator", "strategy", "precision", "size", "steps",
                                                        "warmup"))]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MASTER_PORT", "LOCAL_RANK")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher's other ranks are in the same session
        stdout, stderr = process.communicate()
        stderr += f"\ntimed out after {args.timeout} s"
    except BaseException:  # Ctrl-C, SIGTERM: the configuration's own session does not get the signal
        os.killpg(process.pid, signal.SIGKILL)
        raise
    lines = [line for line in stdout.splitlines() if line.startswith(RECORD_PREFIX)]
    if process.returncode == 0 and lines:
        return json.loads(lines[-1].removeprefix(RECORD_PREFIX))
    errors = [line for line in stderr.splitlines() if "Error" in line or "timed out" in line]
    return {"benchmark": "scaling", "method": method, "devices": devices, "per_device_batch": batch,
            "strategy": args.strategy, "failed": (errors or stderr.strip().splitlines() or ["no record"])[-3:],
            "returncode": process.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="unet", help=f"comma-separated, from {METHODS}")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu",
                        choices=("cpu", "gpu"))
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts (processes per node)")
    parser.add_argument("--batch", default="2,4", help="comma-separated per-device batch sizes")
    parser.add_argument("--strategy", default="ddp", help="ddp, fsdp or any Lightning strategy name (devices > 1)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--size", type=int, default=None, help="square crop (default 256 on CPU, 512 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5 on CPU, 30 on GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on CPU, 10 on GPU)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    parser.add_argument("--out", help="also write the JSON list of records to this file")
    parser.add_argument("--_one-config", dest="one_config", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.accelerator == "gpu"
    args.size = args.size or (512 if gpu else 256)
    args.steps = args.steps or (30 if gpu else 5)
    args.warmup = args.warmup or (10 if gpu else 2)
    if args.one_config:
        args.devices, args.batch = int(args.devices), int(args.batch)
        run_one(args)
        return

    if args.strategy.startswith("fsdp") and not gpu:
        parser.error("Lightning's FSDPStrategy needs GPUs (--accelerator gpu)")
    methods = args.method.split(",")
    for method in methods:
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; choose from {METHODS}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop the running config
    records = Records(bench_environment("cuda" if gpu else "cpu"))
    for method in methods:
        for batch in map(int, args.batch.split(",")):
            single = None
            for devices in map(int, args.devices.split(",")):
                record = run_config(args, method, devices, batch)
                if "failed" not in record:
                    if devices == 1:
                        single = record["img_per_s"]
                    if single:
                        record["scaling_efficiency"] = round(record["img_per_s"] / (single * devices), 3)
                records.add(record)
    records.finish(args.out)


if __name__ == "__main__":
    main()
