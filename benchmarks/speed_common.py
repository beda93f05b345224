"""Timing helpers shared by the model speed benchmarks (d2ls_speed.py, danet_speed.py)."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time

import torch

from rsseg.manifest import device_info, git_revision, package_versions
from rsseg.profiling import peak_memory_mib, reset_peak_memory


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed(fn, device: str, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` over ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def train_and_infer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_step, infer, device: str,
                    batch_size: int, warmup: int, iters: int) -> dict:
    """Median training step and inference latency of ``model`` with their images/s and peak memory."""
    reset_peak_memory(device)
    model.train()
    train_s = statistics.median(timed(train_step, device, warmup, iters))
    train_peak = peak_memory_mib(device)
    optimizer.zero_grad(set_to_none=True)  # free the gradients before measuring inference memory
    reset_peak_memory(device)
    model.eval()
    infer_s = statistics.median(timed(infer, device, warmup, iters))
    return {
        "train_step_s": round(train_s, 4), "train_img_per_s": round(batch_size / train_s, 3),
        "train_peak_mib": round(train_peak, 1),
        "inference_latency_s": round(infer_s, 4), "inference_img_per_s": round(batch_size / infer_s, 3),
        "inference_peak_mib": round(peak_memory_mib(device), 1), "iters": iters,
        "load_avg_1min_after": round(os.getloadavg()[0], 2),  # > the thread count: the timing was disturbed
    }


def bench_environment(device: str) -> dict:
    """Device, load and versions recorded with every record."""
    return {**device_info(), "versions": package_versions(), "git": git_revision(), "bench_device": device,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


class Records(list):
    """One benchmark run's records: each printed as a JSON line when added (progress on long runs), with the
    environment appended; at the end all of them are written to ``out`` (if given) and printed."""

    def __init__(self, env: dict) -> None:
        super().__init__()
        self.env = env

    def add(self, record: dict) -> None:
        self.append({**record, **self.env})
        print(json.dumps(self[-1]), flush=True)

    def finish(self, out: str | None) -> None:
        if out:
            with open(out, "w") as f:
                json.dump(self, f, indent=1)
        print(json.dumps(self, indent=1))
