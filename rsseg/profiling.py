"""Peak memory and FLOP counts of a piece of work, on a GPU or a CPU (shared by the bench and benchmarks/)."""

from __future__ import annotations

import resource
from collections.abc import Callable

import torch


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a fresh peak: the CUDA allocator's, or on Linux the process's RSS high-water mark (clear_refs 5)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:  # not Linux: the peak stays a running maximum over the process
        pass


def peak_memory_mib(device: str | torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU; the process's peak RSS since the last reset on a CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
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
