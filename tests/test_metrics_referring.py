"""ReferringMetrics on hand-computed LAVT cases and against torchmetrics' binary Jaccard index."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import BinaryJaccardIndex

from rsseg.metrics import ReferringMetrics


def lavt_cases() -> tuple[torch.Tensor, torch.Tensor]:
    """Five 4×5 samples with known I and U."""
    p = torch.zeros(5, 4, 5, dtype=torch.bool)
    g = torch.zeros(5, 4, 5, dtype=torch.bool)
    p[0, :2] = g[0, :2] = True  # perfect: I = U = 10
    p[1, 0, 0] = g[1, 0, 0] = True
    g[1, 0, 1] = True  # I = 1, U = 2 → 0.5 (counts for Pr@0.5: ≥, not >)
    # sample 2: both empty → U = 0 → IoU 0 (LAVT), nothing added to ΣI, ΣU
    p[3, 3] = True  # empty ground truth, 5 predicted pixels → IoU 0, U = 5
    g[4].view(-1)[:10] = True
    p[4].view(-1)[:7] = True  # I = 7, U = 10 → 0.7 exactly (counts for Pr@0.7)
    return p, g


def test_hand_computed_lavt_cases():
    p, g = lavt_cases()
    m = ReferringMetrics()
    m.update(p, g)
    got = m.compute()
    assert got["mIoU"] == pytest.approx((1 + 0.5 + 0 + 0 + 0.7) / 5)
    assert got["oIoU"] == pytest.approx((10 + 1 + 0 + 0 + 7) / (10 + 2 + 0 + 5 + 10))
    assert got["Pr@0.5"] == pytest.approx(3 / 5)
    assert got["Pr@0.6"] == pytest.approx(2 / 5)
    assert got["Pr@0.7"] == pytest.approx(2 / 5)
    assert got["Pr@0.8"] == pytest.approx(1 / 5)
    assert got["Pr@0.9"] == pytest.approx(1 / 5)
    assert list(got) == ["mIoU", "oIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]


def test_empty_iou_option_and_logits():
    p, g = lavt_cases()
    m = ReferringMetrics(empty_iou=1.0)
    logits = torch.stack([(~p).float(), p.float()], 1) * 3.0  # argmax over 2 channels = p
    m.update(logits, g.long())
    got = m.compute()
    assert got["mIoU"] == pytest.approx((1 + 0.5 + 1 + 0 + 0.7) / 5)
    assert got["Pr@0.9"] == pytest.approx(2 / 5)


def test_random_samples_against_torchmetrics():
    torch.manual_seed(0)
    m = ReferringMetrics(thresholds=(0.25, 0.3))
    per_sample, all_p, all_g = [], [], []
    for b in (3, 5, 1):
        p = torch.rand(b, 16, 12) < torch.rand(b, 1, 1)
        g = torch.rand(b, 16, 12) < torch.rand(b, 1, 1)
        m.update(p, g)
        for i in range(b):
            per_sample.append(BinaryJaccardIndex(zero_division=0)(p[i].long(), g[i].long()).item())
        all_p.append(p.flatten())
        all_g.append(g.flatten())
    got = m.compute()
    assert got["mIoU"] == pytest.approx(sum(per_sample) / len(per_sample), abs=1e-6)
    o = BinaryJaccardIndex()(torch.cat(all_p).long(), torch.cat(all_g).long()).item()
    assert got["oIoU"] == pytest.approx(o, abs=1e-6)
    assert got["Pr@0.25"] == pytest.approx(sum(s >= 0.25 for s in per_sample) / len(per_sample))
    assert set(got) == {"mIoU", "oIoU", "Pr@0.25", "Pr@0.3"}


def test_empty_metric_is_nan():
    m = ReferringMetrics()
    with pytest.warns(UserWarning):
        assert math.isnan(m.compute()["mIoU"])


@pytest.mark.parametrize(
    "preds, target, match",
    [
        (torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), "binary mask"),
        (torch.full((2, 4, 4), 2), torch.zeros(2, 4, 4, dtype=torch.bool), "only 0 and 1"),
        (torch.zeros(2, 4, 4, dtype=torch.bool), torch.full((2, 4, 4), 3), "only 0 and 1"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), "B×2×H×W"),
        (torch.full((1, 2, 4, 4), float("nan")), torch.zeros(1, 4, 4, dtype=torch.bool), "NaN"),
        (torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool), "does not match"),
        (torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool), "B×H×W"),
    ],
)
def test_invalid_inputs_raise(preds, target, match):
    m = ReferringMetrics()
    with pytest.raises(ValueError, match=match):
        m.update(preds, target)
    assert int(m.n) == 0
