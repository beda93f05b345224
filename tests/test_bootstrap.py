"""Bootstrap intervals and paired comparisons over evaluation units: hand-computed resamples, bit-equality with
the metric definitions (semantic and referring), BCa's parameters, paired differences, rank stability."""

from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest
import torch

from rsseg.metrics import ReferringMetrics
from rsseg.metrics.bootstrap import (
    bca_parameters,
    mean_interval,
    paired_bootstrap,
    paired_from_intervals,
    paired_referring_bootstrap,
    rank_stability,
    ratio_bootstrap,
    referring_bootstrap,
    resample_counts,
    semantic_bootstrap,
)
from rsseg.metrics.semantic import metrics_from_confusion_matrix

# Three units, 2×2 matrices (rows = target, columns = prediction).
UNITS = np.array([[[3, 1], [0, 4]], [[2, 0], [2, 0]], [[0, 0], [1, 3]]])
# Four resamples given by their unit ids, and each one's summed matrix written out by hand.
INDICES = np.array([[0, 1, 2], [0, 0, 1], [1, 1, 1], [2, 2, 0]])
SUMS = [[[5, 1], [3, 7]], [[8, 2], [2, 8]], [[6, 0], [6, 0]], [[3, 1], [2, 10]]]
# OA = trace/total and mIoU = mean of TP/(row + column − TP) of each summed matrix above.
OA = [12 / 16, 16 / 20, 6 / 12, 13 / 16]
MIOU = [(5 / 9 + 7 / 11) / 2, (8 / 12 + 8 / 12) / 2, (6 / 12 + 0 / 6) / 2, (3 / 6 + 10 / 13) / 2]


def names(k: int) -> list[str]:
    return [f"c{i}" for i in range(k)]


def random_units(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n×K×K counts with class 2 absent everywhere and class 4 in a few units only."""
    cm = rng.integers(0, 10**7, size=(n, k, k))
    cm[:, 2, :] = cm[:, :, 2] = 0
    cm[:, 4, :] = cm[:, :, 4] = 0
    rare = rng.random(n) < 0.2
    cm[rare, 4, 4] = rng.integers(1, 100, rare.sum())
    return cm


def test_counts_from_indices():
    counts = resample_counts(3, indices=INDICES)
    assert counts.tolist() == [[1, 1, 1], [2, 1, 0], [0, 3, 0], [1, 0, 2]]
    assert np.array_equal(np.einsum("bn,nij->bij", counts, UNITS), SUMS)


def test_hand_computed_resamples_and_percentile_interval():
    got = semantic_bootstrap(UNITS, counts=resample_counts(3, indices=INDICES))
    assert got["OA"].samples.tolist() == OA
    assert got["mIoU"].samples.tolist() == MIOU
    assert got["OA"].estimate == 12 / 16  # the full sum is the first resample's matrix
    assert got["mIoU"].estimate == MIOU[0]
    for name, values in (("OA", OA), ("mIoU", MIOU)):
        # numpy's default 'linear' method at (1 ∓ level)/2; (1 − 0.95)/2 is 0.025 + 2.2e-17 in float64
        low, high = np.quantile(values, [(1 - 0.95) / 2, (1 + 0.95) / 2])
        assert (got[name].low, got[name].high) == (low, high)
        assert got[name].as_dict() == {"estimate": got[name].estimate, "low": low, "high": high, "level": 0.95,
                                       "method": "percentile", "n_units": 3, "n_resamples": 4, "nan_resamples": 0}
    json.dumps(got["OA"].as_dict())


@pytest.mark.parametrize("seed", range(4))
def test_estimate_equals_metrics_from_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    k = 12  # 10 classes averaged: numpy's pairwise summation path, not only the short sequential one
    cm = random_units(rng, 9, k)
    got = semantic_bootstrap(cm, exclude_from_mean=(0,), n_resamples=5)
    ref = metrics_from_confusion_matrix(cm.sum(0), names(k), exclude_from_mean=(0,))
    assert {m: got[m].estimate for m in got} == {m: ref[m] for m in got}


def test_resampled_metrics_equal_a_loop_over_metrics_from_confusion_matrix():
    rng = np.random.default_rng(5)
    k = 10
    cm = random_units(rng, 14, k)
    counts = resample_counts(14, 50, seed=1)
    got = semantic_bootstrap(cm, exclude_from_mean=(1,), counts=counts)
    for b in range(50):
        ref = metrics_from_confusion_matrix(np.einsum("n,nij->ij", counts[b], cm), names(k), exclude_from_mean=(1,))
        for m in ("OA", "mIoU", "mF1", "Kappa"):
            assert got[m].samples[b] == ref[m], (m, b)


def test_nan_resamples_are_counted_not_fatal():
    cm = np.zeros((4, 3, 3), dtype=np.int64)
    cm[:, 0, 0] = 5
    cm[2, 1, 1] = 3  # class 1 only in unit 2; class 0 excluded, class 2 absent
    counts = resample_counts(4, 200, seed=3)
    got = semantic_bootstrap(cm, metrics=("mIoU",), exclude_from_mean=(0,), counts=counts)["mIoU"]
    missing = counts[:, 2] == 0
    assert got.nan_resamples == missing.sum() > 0
    assert np.isnan(got.samples[missing]).all() and (got.samples[~missing] == 1.0).all()
    assert got.estimate == got.low == got.high == 1.0


def units_from_iu(i: list[int], u: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """4×5 masks with the given intersections and unions: I pixels in both, U − I in the target only."""
    pred = torch.zeros(len(i), 20, dtype=torch.bool)
    gt = torch.zeros(len(i), 20, dtype=torch.bool)
    for s, (ii, uu) in enumerate(zip(i, u, strict=True)):
        pred[s, :ii] = gt[s, :uu] = True
    return pred.view(-1, 4, 5), gt.view(-1, 4, 5)


def test_referring_hand_computed_and_equal_to_referring_metrics():
    i, u = [10, 1, 0, 0, 7], [10, 2, 0, 5, 10]  # IoU 1, 0.5, 0 (empty: LAVT's 0), 0, 0.7
    indices = np.array([[1, 1, 4, 0, 2], [3, 3, 3, 3, 0]])
    got = referring_bootstrap(i, u, counts=resample_counts(5, indices=indices))
    assert got["oIoU"].samples[0] == (1 + 1 + 7 + 10 + 0) / (2 + 2 + 10 + 10 + 0)
    assert got["mIoU"].samples[0] == pytest.approx((0.5 + 0.5 + 0.7 + 1 + 0) / 5, abs=1e-15)
    assert got["Pr@0.5"].samples[0] == 4 / 5
    assert got["Pr@0.7"].samples[0] == 2 / 5  # 7/10 ≥ 0.7 in float64
    assert got["oIoU"].samples[1] == 10 / 30 and got["Pr@0.5"].samples[1] == 1 / 5
    pred, gt = units_from_iu(i, u)
    for b, row in enumerate(indices):
        m = ReferringMetrics()
        m.update(pred[row], gt[row])
        assert {name: got[name].samples[b] for name in got} == m.compute()
    m = ReferringMetrics()
    m.update(pred, gt)
    assert {name: got[name].estimate for name in got} == m.compute()


def test_referring_empty_iou_option():
    got = referring_bootstrap([0, 3], [0, 4], thresholds=(0.75,), empty_iou=1.0, n_resamples=3)
    assert got["mIoU"].estimate == (1 + 0.75) / 2 and got["Pr@0.75"].estimate == 1.0


def test_paired_identical_methods():
    cm = random_units(np.random.default_rng(2), 14, 6)
    for method in ("percentile", "bca"):
        got = paired_bootstrap(cm, cm.copy(), "mIoU", n_resamples=300, method=method)
        assert (got.difference.samples == 0).all() and got.difference.estimate == 0
        assert got.flip_rate == 0.0  # every resample reproduces the full-data tie
        assert (got.difference.low, got.difference.high) == (0.0, 0.0) and not got.distinguishable
    i, u = np.array([3, 5, 0, 8]), np.array([4, 9, 2, 8])
    got = paired_referring_bootstrap(i, u, i, u, "mIoU", n_resamples=300)
    assert (got.difference.samples == 0).all() and got.flip_rate == 0.0 and not got.distinguishable


def test_paired_clearly_different_methods():
    a = random_units(np.random.default_rng(3), 14, 6)
    b = a.copy()
    b[:, 0, 0] -= b[:, 0, 0] // 2  # method b: half of each unit's class-0 hits become class-1 errors
    b[:, 0, 1] += a[:, 0, 0] // 2
    counts = resample_counts(14, 300, seed=4)
    for metric in ("OA", "mIoU", "mF1", "Kappa"):
        got = paired_bootstrap(a, b, metric, counts)
        assert got.difference.estimate > 0 and (got.difference.samples > 0).all(), metric
        assert got.flip_rate == 0.0 and got.distinguishable and got.difference.low > 0
        assert got.as_dict()["distinguishable"] is True
    flipped = paired_bootstrap(b, a, "OA", counts)
    assert flipped.distinguishable and flipped.difference.high < 0 and flipped.flip_rate == 0.0
    ia, u = np.arange(10, 30), np.full(20, 40)
    got = paired_referring_bootstrap(ia, u, ia - 5, u, "oIoU", n_resamples=300)
    assert got.distinguishable and got.flip_rate == 0.0


def test_flip_rate_counts_resamples_against_the_full_data_sign():
    # a vs b per unit: unit 0 favours a by 2 pixels, unit 1 favours b by 1, unit 2 is a tie; a wins overall
    a = np.array([[[4, 0], [0, 0]], [[1, 3], [0, 0]], [[2, 2], [0, 0]]])
    b = np.array([[[2, 2], [0, 0]], [[2, 2], [0, 0]], [[2, 2], [0, 0]]])
    indices = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [0, 1, 1], [0, 1, 2]])
    got = paired_bootstrap(a, b, "OA", resample_counts(3, indices=indices))
    assert got.difference.estimate == 7 / 12 - 6 / 12
    assert got.difference.samples.tolist() == [1.0 - 0.5, 3 / 12 - 0.5, 0.0, 0.0, 7 / 12 - 6 / 12]
    assert got.flip_rate == 3 / 5  # the reversal and the two ties do not reproduce a's win


def test_bca_parameters_hand_computed():
    samples = np.array([0.1, 0.2, 0.3, 0.4, 0.5, np.nan])
    z0, a = bca_parameters(samples, 0.35, np.array([1.0, 2.0, 3.0, 6.0, np.nan]))
    assert z0 == NormalDist().inv_cdf(3 / 5)  # 3 of the 5 non-NaN resamples lie below 0.35
    assert z0 == pytest.approx(0.2533471031357997, abs=1e-15)
    # jackknife mean 3, d = 3 − θ₍ᵢ₎ = (2, 1, 0, −3): Σd³ = −18, Σd² = 14
    assert a == pytest.approx(-18 / (6 * 14**1.5), rel=1e-15)


def test_bca_interval_on_the_hand_computed_case():
    got = semantic_bootstrap(UNITS, metrics=("OA",), method="bca", counts=resample_counts(3, indices=INDICES))["OA"]
    # leave-one-unit-out sums: without unit 0 [[2,0],[3,3]], without 1 [[3,1],[1,7]], without 2 [[5,1],[2,4]]
    jack = np.array([5 / 8, 10 / 12, 9 / 12])
    d = jack.mean() - jack
    a = (d**3).sum() / (6 * (d**2).sum() ** 1.5)
    z0 = NormalDist().inv_cdf(1 / 4)  # only OA = 0.5 lies below the estimate 0.75
    normal = NormalDist()
    alphas = [normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in (normal.inv_cdf(0.025), normal.inv_cdf(0.975))]
    low, high = np.quantile(OA, alphas)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got.method == "bca" and got.estimate == 0.75


def test_bca_close_to_percentile_on_a_symmetric_case():
    rng = np.random.default_rng(0)
    hits = rng.binomial(100, 0.8, 400)  # equal-size units: OA is the mean of symmetric per-unit accuracies
    cm = np.zeros((400, 2, 2), dtype=np.int64)
    cm[:, 0, 0], cm[:, 0, 1] = hits, 100 - hits
    counts = resample_counts(400, 2000, seed=1)
    perc = semantic_bootstrap(cm, metrics=("OA",), counts=counts)["OA"]
    bca = semantic_bootstrap(cm, metrics=("OA",), counts=counts, method="bca")["OA"]
    width = perc.high - perc.low
    assert abs(bca.low - perc.low) < 0.05 * width and abs(bca.high - perc.high) < 0.05 * width
    assert bca.low < bca.estimate < bca.high


def test_ratio_bootstrap():
    num = np.array([[0.5, 1.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.5, 0.0]])
    den = np.array([[1, 2, 0], [2, 0, 0], [1, 1, 0]])  # class 2 never counted: NaN, left out
    counts = resample_counts(3, indices=np.array([[0, 0, 2], [1, 1, 1]]))
    got = ratio_bootstrap(num, den, counts=counts, name="mWFm")["mWFm"]
    assert got.estimate == (1.75 / 4 + 2.0 / 3) / 2
    assert got.samples.tolist() == [(1.25 / 3 + 3.5 / 5) / 2, 3.0 / 6]  # resample 1: class 1 absent
    low = ratio_bootstrap(num, den, reduce="min", counts=counts)["ratio"]
    assert low.estimate == 1.75 / 4 and low.samples.tolist() == [1.25 / 3, 0.5]
    excluded = ratio_bootstrap(num, den, exclude_from_mean=(0,), counts=counts)["ratio"]
    assert excluded.estimate == 2.0 / 3 and np.isnan(excluded.samples[1]) and excluded.nan_resamples == 1


def test_rank_stability():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, (3, 500))
    samples = {"a": 0.9 + noise[0], "b": 0.5 + noise[1], "c": 0.1 + noise[2]}
    got = rank_stability(samples, {"a": 0.9, "b": 0.5, "c": 0.1})
    assert got["a"] == {"rank": 1, "stability": 1.0, "mean_rank": 1.0, "resamples": 500}
    assert got["c"]["rank"] == 3 and got["c"]["stability"] == 1.0
    swap = {"x": np.array([1.0, 0.0, 1.0, 0.0, np.nan]), "y": np.array([0.0, 1.0, 0.0, 1.0, 0.5])}
    got = rank_stability(swap, {"x": 0.6, "y": 0.4})
    assert got["x"] == {"rank": 1, "stability": 0.5, "mean_rank": 1.5, "resamples": 4}
    lower = rank_stability(swap, {"x": 0.6, "y": 0.4}, higher_is_better=False)
    assert lower["y"]["rank"] == 1 and lower["y"]["stability"] == 0.5
    ties = rank_stability({"x": np.array([1.0, 1.0]), "y": np.array([1.0, 0.0])}, {"x": 0.5, "y": 0.5})
    assert ties["x"]["rank"] == ties["y"]["rank"] == 1  # tied methods share the better rank
    assert ties["x"]["stability"] == 1.0 and ties["y"]["stability"] == 0.5 and ties["y"]["mean_rank"] == 1.5


def test_seeded_reproducibility():
    assert np.array_equal(resample_counts(14, 100, seed=7), resample_counts(14, 100, seed=7))
    assert not np.array_equal(resample_counts(14, 100, seed=7), resample_counts(14, 100, seed=8))
    assert (resample_counts(14, 100, seed=7).sum(1) == 14).all()
    cm = random_units(np.random.default_rng(1), 14, 6)
    first, second = semantic_bootstrap(cm, seed=3, n_resamples=200), semantic_bootstrap(cm, seed=3, n_resamples=200)
    for m in first:
        assert first[m] == second[m] and np.array_equal(first[m].samples, second[m].samples, equal_nan=True)


def test_input_checks():
    with pytest.raises(ValueError, match="at least 2"):
        resample_counts(1)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        resample_counts(3, indices=np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="unknown semantic"):
        semantic_bootstrap(UNITS, metrics=("WFm",))
    with pytest.raises(ValueError, match="method"):
        semantic_bootstrap(UNITS, method="basic")
    with pytest.raises(ValueError, match="2\\^53"):
        semantic_bootstrap(np.full((3, 2, 2), 2**52), n_resamples=2)
    with pytest.raises(ValueError, match="intersection"):
        referring_bootstrap([3, 1], [2, 1])
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap(UNITS, UNITS[:2])


def test_seed_means_and_pairs_from_intervals_on_the_same_resamples():
    """mean_interval averages the runs' resampled values one resample at a time; paired_from_intervals is
    paired_bootstrap's percentile comparison (the same per-resample differences)."""
    rng = np.random.default_rng(3)
    a, b = rng.integers(1, 50, (8, 3, 3)), rng.integers(1, 50, (8, 3, 3))
    counts = resample_counts(8, 300, seed=1)
    ia, ib = semantic_bootstrap(a, counts=counts)["mIoU"], semantic_bootstrap(b, counts=counts)["mIoU"]
    mean = mean_interval([ia, ib])
    np.testing.assert_array_equal(mean.samples, (ia.samples + ib.samples) / 2)
    assert mean.estimate == (ia.estimate + ib.estimate) / 2
    assert (mean.low, mean.high) == tuple(np.nanquantile(mean.samples, [0.025, 0.975]))
    assert mean_interval([ia]).samples.tolist() == ia.samples.tolist()
    direct = paired_bootstrap(a, b, "mIoU", counts)
    from_intervals = paired_from_intervals("mIoU", ia, ib)
    assert (from_intervals.difference.low, from_intervals.difference.high, from_intervals.flip_rate) == (
        direct.difference.low, direct.difference.high, direct.flip_rate)
    with pytest.raises(ValueError, match="resampled alike"):
        paired_from_intervals("mIoU", ia, semantic_bootstrap(b, n_resamples=10)["mIoU"])
