"""FLOP counts checked by hand, and peak memory that sees an allocation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

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


def test_peak_memory_sees_a_large_allocation():
    reset_peak_memory("cpu")
    before = peak_memory_mib("cpu")
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert peak_memory_mib("cpu") >= before + 60
    del block
