"""BoundaryWFMeasure against an independent re-derivation of IDGBR's "WF (3px)" (scipy + pysodmetrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from py_sod_metrics import WeightedFmeasure as SodWFm

from rsseg.metrics import BoundaryWFMeasure
from rsseg.metrics.boundary import boundary_band


def reference_band(label: np.ndarray, k: int = 3) -> np.ndarray:
    """Sobel (reflect-101 = scipy 'mirror') magnitude > 0, dilated by k×k ones, minus label-255 pixels."""
    x = label.astype(np.float64)
    edge = (ndi.sobel(x, axis=0, mode="mirror") != 0) | (ndi.sobel(x, axis=1, mode="mirror") != 0)
    band = ndi.binary_dilation(edge, structure=np.ones((k, k), bool)) if edge.any() else edge
    return band & (label != 255)


def reference_wf3(preds: list[np.ndarray], targets: list[np.ndarray], k: int = 3) -> dict[str, float]:
    """IDGBR evaluate.py/boundary.py/wfmeasure.py pipeline, written from docs/metrics.md §3."""
    sums, counts = np.zeros(2), np.zeros(2)
    for p, t in zip(preds, targets, strict=True):
        pb, gb = reference_band(p, k), reference_band(t, k)
        for v in np.unique(gb):
            m = SodWFm()
            m.step((pb == v).astype(np.float64), gb == v, normalize=False)
            sums[int(v)] += m.get_results()["wfm"]
            counts[int(v)] += 1
    per = [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]
    valid = [s for s in per if s > 0]
    return {"WF_min": min(valid), "WF_mean": float(np.mean(valid)), "WF_non_band": per[0], "WF_band": per[1]}


def blocky_labels(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    """Piecewise-constant label map: upsampled random blocks plus a few single pixels."""
    small = rng.integers(0, k, size=(h // 8 + 1, w // 8 + 1))
    lab = np.kron(small, np.ones((8, 8), np.int64))[:h, :w]
    lab[rng.random((h, w)) < 0.01] = rng.integers(0, k)
    return lab


def test_band_matches_reference_and_known_shapes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lab = blocky_labels(rng, 37, 45, 5)
        lab[rng.random(lab.shape) < 0.02] = 255
        assert np.array_equal(boundary_band(lab), reference_band(lab))
    # straight vertical boundary: edge on both sides (2 px), dilated by 3 → 4 px wide band
    lab = np.zeros((10, 12), np.int64)
    lab[:, 6:] = 1
    assert np.array_equal(np.flatnonzero(boundary_band(lab)[0]), [4, 5, 6, 7])
    # checkerboard: Sobel cancels everywhere → no band at all (docs/metrics.md §3 caveat, reproduced)
    assert not boundary_band(np.indices((8, 8)).sum(0) % 2).any()
    # ignore label inside the band is outside the band
    lab[:, :3] = 255
    assert not boundary_band(lab)[:, :3].any() and boundary_band(lab)[:, 3].all()
    assert np.array_equal(boundary_band(lab, band=5)[0], reference_band(lab, 5)[0])


def test_matches_reference_pipeline_on_random_maps():
    rng = np.random.default_rng(1)
    preds, targets = [], []
    m = BoundaryWFMeasure()
    for b in (2, 3):
        t = np.stack([blocky_labels(rng, 48, 40, 4) for _ in range(b)])
        p = np.where(rng.random(t.shape) < 0.9, t, rng.integers(0, 4, size=t.shape))
        p = np.roll(p, 1, axis=2)
        if b == 2:
            t[1] = 3  # a ground truth with a single class: only the non-band value is scored
        m.update(torch.from_numpy(p), torch.from_numpy(t))
        preds += list(p)
        targets += list(t)
    got, ref = m.compute(), reference_wf3(preds, targets)
    for key, v in ref.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key
    assert got["WF"] == got["WF_min"] == min(got["WF_band"], got["WF_non_band"])
    mean = BoundaryWFMeasure(aggregate="mean")
    mean.update(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(targets)))
    assert mean.compute()["WF"] == pytest.approx(ref["WF_mean"], abs=1e-12)
    assert mean.compute()["WF"] > got["WF"]


def test_perfect_prediction_and_logits():
    rng = np.random.default_rng(2)
    t = torch.from_numpy(np.stack([blocky_labels(rng, 32, 32, 3) for _ in range(2)]))
    m = BoundaryWFMeasure()
    logits = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).float()
    m.update(logits, t)
    got = m.compute()
    assert got["WF"] == pytest.approx(1.0) and got["WF_band"] == pytest.approx(1.0)
    # right boundaries, wrong classes on both sides: still perfect (documented property)
    m2 = BoundaryWFMeasure()
    m2.update((t + 1) % 3, t)
    assert m2.compute()["WF"] == pytest.approx(1.0)


def test_empty_and_invalid():
    m = BoundaryWFMeasure()
    with pytest.warns(UserWarning):
        assert math.isnan(m.compute()["WF"])
    with pytest.raises(ValueError, match="integer labels"):
        m.update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        m.update(torch.full((1, 4, 4), 300), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="disagree"):
        m.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        m.update(torch.full((1, 3, 4, 4), float("nan")), torch.zeros(1, 4, 4, dtype=torch.long))
    assert int(m.count.sum()) == 0
