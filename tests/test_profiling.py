"""FLOP counts checked by hand, and a resettable peak memory that sees an allocation (with and without
the kernel's high-water-mark reset)."""

from __future__ import annotations

import mmap
import time

import torch
from torch import nn

from rsseg import profiling
from rsseg.profiling import count_gflops, peak_memory_mib, reset_peak_memory


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

