"""FLOP counts checked by hand, a resettable peak memory that sees an allocation (with and without the
kernel's high-water-mark reset), and the evaluation memory: what the work adds, not what the process holds."""

from __future__ import annotations

import mmap
import time

import lightning as L
import pytest
import torch
from torch import nn

from rsseg import profiling
from rsseg.callbacks import InferenceProfiler
from rsseg.profiling import EvalMemory, count_gflops, peak_memory_mib, reset_peak_memory, settle_allocator


class QueriesIntoAttention(nn.Module):
    """Feeds a parameter to a submodule (as D2LS's dictionary does), which trips FlopCounterMode's hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.queries = nn.Parameter(torch.randn(1, 4, 8))
        self.attn = nn.MultiheadAttention(8, 1, batch_first=True, bias=False)

    def forward(self, x):
        features = self.conv(x).flatten(2).transpose(1, 2)  # 1 × HW × 8
        return self.attn(self.queries, features, features)[0]


def test_flops_by_hand_inside_inference_mode():
    model = QueriesIntoAttention().eval()
    h = w = 16
    conv = 2 * (3 * 3 * 3) * 8 * h * w  # 2 FLOPs per multiply-add, per output value
    projections = 2 * 8 * 8 * (4 + 2 * h * w + 4)  # q (4 queries), k and v (HW keys), output (4)
    attention = 2 * (4 * h * w * 8) * 2  # scores and the weighted sum
    with torch.inference_mode():  # as in Lightning's test loop
        image = torch.randn(1, 3, h, w)
        assert count_gflops(lambda: model(image.clone())) * 1e9 == conv + projections + attention


def _touched_block(mib: int) -> mmap.mmap:
    """Fresh anonymous memory, every page written: RSS grows by ``mib`` (a malloc could reuse freed pages that
    are still resident in a long-running process, such as the test session). ``close()`` gives it back."""
    block = mmap.mmap(-1, mib * 2**20)
    page = b"\1" * mmap.PAGESIZE
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset:offset + mmap.PAGESIZE] = page
    return block


def test_peak_memory_resets_and_sees_a_large_allocation():
    _touched_block(256).close()  # a past peak the reset must forget
    reset_peak_memory("cpu")
    before = peak_memory_mib("cpu")
    assert before < profiling._status_mib("VmRSS") + 100
    block = _touched_block(64)
    assert peak_memory_mib("cpu") >= before + 60
    block.close()


def test_peak_memory_without_clear_refs_samples_a_freed_allocation(monkeypatch, tmp_path):
    monkeypatch.setattr(profiling, "CLEAR_REFS", str(tmp_path))  # a folder: writing it fails, as in gVisor
    _touched_block(256).close()
    try:
        reset_peak_memory("cpu")
        before = peak_memory_mib("cpu")
        assert before < profiling._status_mib("VmRSS") + 100  # not the kernel's unresettable high-water mark
        block = _touched_block(64)
        time.sleep(0.05)  # the sampler polls every 2 ms
        block.close()  # gone before the peak is read: only the sampler saw it
        assert peak_memory_mib("cpu") >= before + 60
    finally:
        monkeypatch.undo()
        reset_peak_memory("cpu")  # stops the sampler
    assert profiling._sampler is None



@pytest.fixture(params=["clear_refs", "sampler"])
def peak_source(request, monkeypatch):
    """Both ways to a CPU peak: the kernel's reset high-water mark, and the 2 ms sampler (no clear_refs)."""
    if request.param == "sampler":
        monkeypatch.setattr(profiling, "CLEAR_REFS", "/nonexistent/clear_refs")
    yield request.param
    monkeypatch.undo()
    reset_peak_memory("cpu")  # stops a sampler


def _touched_tensor(mib: int) -> torch.Tensor:
    """A tensor whose every page is written, as activations are."""
    return torch.empty(mib * 2**20, dtype=torch.uint8).fill_(1)


def test_eval_memory_is_what_the_work_adds_not_the_process_peak(peak_source):
    _touched_block(300).close()  # an earlier, larger peak of the process: not the work's
    idle = EvalMemory("cpu")
    idle.start()
    time.sleep(0.01)
    assert idle.read() < 50  # nothing allocated: near zero, though the process holds hundreds of MiB
    assert idle.peak_mib > 150 and idle.baseline_mib > 150  # the absolute numbers would fail the line above

    work = EvalMemory("cpu")
    work.start()
    activations = _touched_tensor(200)
    time.sleep(0.01)  # the sampler polls every 2 ms
    assert 190 <= work.read() < 260
    assert work.increase_mib == work.read() == pytest.approx(work.peak_mib - work.baseline_mib)
    del activations


def _heap_blocks(mib: int) -> list[bytes]:
    """``mib`` MiB in 4 KiB objects, written: glibc serves them from its heap, not from fresh mmaps (a bytearray
    each: ``b"\\1" * 4096`` would be one constant shared by the whole list)."""
    return [bytearray(b"\1") * 4096 for _ in range(mib * 256)]


@pytest.mark.skipif(profiling._malloc_trim() is None, reason="malloc_trim is glibc's")
def test_eval_memory_sees_work_that_reuses_heap_freed_before_the_start():
    """Freed heap that glibc keeps resident would sit in the baseline and be reused unseen; the start trims it."""
    freed = _heap_blocks(200)
    keep = _heap_blocks(1)  # above the freed blocks: the heap's top cannot shrink by itself
    del freed
    idle = EvalMemory("cpu")
    idle.start()
    assert idle.read() < 50  # what the start trimmed away is not counted as the work's
    work = EvalMemory("cpu")
    work.start()
    again = _heap_blocks(200)
    assert work.read() >= 150
    del again, keep


@pytest.mark.skipif(profiling._malloc_trim() is None, reason="malloc_trim is glibc's")
def test_settling_gives_freed_heap_back():
    freed = _heap_blocks(200)
    keep = _heap_blocks(1)
    del freed
    before = profiling._status_mib("VmRSS")
    settle_allocator()
    assert profiling._status_mib("VmRSS") < before - 150
    del keep


def test_eval_memory_on_cuda_is_the_peak_allocated_with_the_increase_beside_it(monkeypatch):
    """The field's convention on a GPU: max_memory_allocated after a reset (weights included)."""
    allocated = {"now": 300 * 2**20, "peak": 300 * 2**20}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["peak"])
    memory = EvalMemory("cuda:0")
    memory.start()
    allocated["peak"] = 420 * 2**20  # the evaluation's activations come and go
    assert memory.read() == 420 and memory.baseline_mib == 300 and memory.increase_mib == 120


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_eval_memory_on_a_real_gpu():
    weights = torch.ones(64 * 2**18, device="cuda")  # 64 MiB held before the start
    memory = EvalMemory("cuda")
    memory.start()
    activations = torch.ones(128 * 2**18, device="cuda")
    del activations
    assert memory.read() >= 64 + 128 and 128 <= memory.increase_mib < 140
    del weights


class Scratch(L.LightningModule):
    """A test loop whose every batch needs ``mib`` MiB of scratch memory, as a larger model's activations do."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.mib = mib
        self.scale = nn.Parameter(torch.ones(1))

    def predict_step(self, batch, batch_idx=0):
        scratch = _touched_tensor(self.mib)
        return batch["image"] * self.scale + scratch[:1].float()

    def test_step(self, batch, batch_idx):
        self.predict_step(batch)

    def test_dataloader(self):
        return torch.utils.data.DataLoader([{"image": torch.ones(3, 8, 8)}] * 4, batch_size=2)


def _profiled(mib: int) -> InferenceProfiler:
    profiler = InferenceProfiler("test")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[profiler])
    trainer.test(Scratch(mib), verbose=False)
    return profiler


def test_the_profiler_tells_two_methods_apart():
    small, large = _profiled(8), _profiled(160)
    assert small.eval_memory_mib < 60 and large.eval_memory_mib >= 150
    assert small.images == large.images == 4
