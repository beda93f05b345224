"""Peak memory and FLOP counts of a piece of work, on a GPU or a CPU (shared by the bench and benchmarks/)."""

from __future__ import annotations

import os
import resource
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
