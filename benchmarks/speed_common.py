"""Timing helpers shared by the model speed benchmarks (d2ls_speed.py, danet_speed.py)."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from importlib.metadata import version

import torch

from rsseg.bench.report import environment_info


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU; the process's peak RSS on a CPU (a running maximum)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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


def bench_environment(device: str) -> dict:
    """Device, load and versions recorded with every record."""
    return {**environment_info(), "bench_device": device, "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2), "timm": version("timm")}
