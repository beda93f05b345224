"""Peak memory and FLOP counts of a piece of work, on a GPU or a CPU (shared by the bench and benchmarks/).

``reset_peak_memory``/``peak_memory_mib`` give the process's peak (what benchmarks/ report); :class:`EvalMemory`
gives what one piece of work adds, the number that can compare methods run in the same process (the bench's
``eval_memory_mib``)."""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import resource
import sys
import threading
from collections.abc import Callable

import torch

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"
_SAMPLE_SECONDS = 0.002


class _RssSampler(threading.Thread):
    """Polls the process's RSS: the CPU peak where the kernel's high-water mark cannot be reset (no
    clear_refs, as in gVisor sandboxes and some containers). A spike shorter than the poll can be missed."""

    def __init__(self) -> None:
        super().__init__(name="rsseg-rss-sampler", daemon=True)
        self.peak_mib = _status_mib("VmRSS")
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(_SAMPLE_SECONDS):
            self.peak_mib = max(self.peak_mib, _status_mib("VmRSS"))

    def stop(self) -> None:
        self._stop_event.set()


_sampler: _RssSampler | None = None


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (0 where there is none)."""
    try:
        with open(STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return 0.0


def _reset_high_water_mark() -> bool:
    """Linux's peak-RSS reset (clear_refs 5); True only when VmHWM really fell to the current RSS."""
    try:
        with open(CLEAR_REFS, "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_mib("VmHWM") <= _status_mib("VmRSS") + 1


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a fresh peak: the CUDA allocator's; on a CPU the process's RSS high-water mark, or, where the
    kernel cannot reset that, an RSS sampler started now."""
    global _sampler
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if _sampler is not None:
        _sampler.stop()
        _sampler = None
    if not _reset_high_water_mark() and os.path.exists(STATUS):
        _sampler = _RssSampler()


def peak_memory_mib(device: str | torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU; the process's peak RSS since the last reset on a CPU
    (without /proc, as on macOS: the running maximum over the process)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if _sampler is not None:
        return max(_sampler.peak_mib, _status_mib("VmRSS"))
    high_water = _status_mib("VmHWM")
    if high_water:
        return high_water
    return _lifetime_peak_mib()


def _lifetime_peak_mib() -> float:
    """The process's largest RSS so far (getrusage: KiB on Linux, bytes on macOS); cannot be reset."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, None elsewhere (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def settle_allocator() -> None:
    """Give freed memory back to the OS before a baseline: collect garbage, then (glibc) release the free
    pages malloc keeps in its arenas. Otherwise the baseline RSS holds freed memory that the work can reuse
    without growing the RSS, and the increase understates what the work needs."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class EvalMemory:
    """What a piece of work (an evaluation loop) adds to memory, measured between :meth:`start` and
    :meth:`read` in this process.

    CUDA: ``peak_mib`` is ``torch.cuda.max_memory_allocated`` since the start (weights and inputs included, the
    usual convention, and :meth:`read`'s value); ``increase_mib`` subtracts what was allocated at the start.
    CPU: the process's peak RSS minus its RSS at the start, taken after :func:`settle_allocator` (the peak
    itself would be the whole process: Python, torch, the data, earlier runs). Caveats: memory freed before the
    start and still resident (an allocator cache that trimming cannot release) is reused without showing; the
    RSS also counts what else the process does meanwhile (the batches the loop holds, libraries paged in on
    first use); worker processes are not counted; where the kernel's high-water mark cannot be reset the peak
    is sampled every 2 ms and a shorter spike can be missed; without /proc (macOS) the increase is that of the
    lifetime peak, 0 while the work stays under an earlier peak."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.baseline_mib = 0.0
        self.peak_mib = 0.0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def start(self) -> None:
        """Settle the allocator, reset the peak and take the baseline."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            reset_peak_memory(self.device)
            self.baseline_mib = torch.cuda.memory_allocated(self.device) / 2**20
            return
        settle_allocator()
        reset_peak_memory(self.device)
        self.baseline_mib = _status_mib("VmRSS") or _lifetime_peak_mib()

    def read(self) -> float:
        """The value to compare methods by: the CUDA peak allocated; on a CPU the peak RSS increase."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.peak_mib = peak_memory_mib(self.device)
        return self.peak_mib if self.cuda else self.increase_mib

    @property
    def increase_mib(self) -> float:
        """The peak over the baseline (after :meth:`read`)."""
        return max(0.0, self.peak_mib - self.baseline_mib)


def count_gflops(work: Callable[[], object]) -> float:
    """GFLOPs (2 per multiply-add, the convention of torch's FlopCounterMode, whose per-op formulas this
    uses) that ``work()`` runs. FlopCounterMode itself also tracks modules through autograd hooks, which
    fails on models that feed parameters to submodules under no_grad/inference mode (D2LS's dictionary);
    counting the dispatched ops alone needs no hooks. Ops under inference mode skip Python dispatch modes, so
    ``work`` runs outside it (pass it tensors made outside inference mode, e.g. clones made here)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    registry = FlopCounterMode(display=False).flop_registry

    class OpFlops(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = registry.get(func._overloadpacket)
            if formula is not None:
                OpFlops.total += formula(*args, **kwargs, out_val=out)
            return out

    with torch.inference_mode(False), torch.no_grad(), OpFlops():
        work()
    return OpFlops.total / 1e9
