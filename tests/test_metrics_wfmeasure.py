"""Weighted F-measure against pysodmetrics (``WeightedFmeasure.step(normalize=False)``) and scipy's EDT."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from py_sod_metrics import WeightedFmeasure as SodWFm

from rsseg.metrics import SegmentationMetrics, WeightedFMeasure
from rsseg.metrics import wfmeasure as wf


def sod(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    m = SodWFm(beta=beta2)
    m.step(np.asarray(pred, np.float64), gt, normalize=False)
    return float(m.get_results()["wfm"])


def random_gt(rng: np.random.Generator, h: int, w: int, kind: int) -> np.ndarray:
    if kind == 0:  # noise of random density
        gt = rng.random((h, w)) < rng.random() * 0.6
    elif kind == 1:  # sparse lattice: many equidistant nearest foreground pixels (EDT ties)
        gt = np.zeros((h, w), bool)
        r0, c0, dr, dc = (int(v) for v in rng.integers((0, 0, 2, 2), (3, 3, 8, 8)))
        gt[r0::dr, c0::dc] = True
    elif kind == 2:  # discs, some touching the border
        img = np.zeros((h, w), np.uint8)
        for _ in range(4):
            cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 20)), 1, -1)
        gt = img.astype(bool)
    else:  # almost everything foreground
        gt = rng.random((h, w)) < 0.97
    if not gt.any():
        gt[rng.integers(h), rng.integers(w)] = True
    return gt


def random_pred(rng: np.random.Generator, gt: np.ndarray, kind: int) -> np.ndarray:
    if kind == 0:  # soft, uniform
        return rng.random(gt.shape)
    if kind == 1:  # binary, random
        return (rng.random(gt.shape) < 0.3).astype(np.float64)
    if kind == 2:  # soft, correlated with the truth
        return np.clip(gt * 0.8 + rng.normal(0, 0.25, gt.shape), 0, 1)
    return np.roll(gt, int(rng.integers(-3, 4)), axis=1).astype(np.float64)  # shifted binary


@pytest.fixture(params=[1, 2], ids=["cv2-1-thread", "cv2-2-threads"])
def cv2_threads(request):
    """OpenCV takes different distance-transform code paths single- and multi-threaded (IPP or not)."""
    old = cv2.getNumThreads()
    cv2.setNumThreads(request.param)
    yield request.param
    cv2.setNumThreads(old)


def test_matches_pysodmetrics_on_random_inputs(cv2_threads):
    rng = np.random.default_rng(cv2_threads)
    worst = 0.0
    for i in range(160):
        h, w = (int(v) for v in rng.integers(1, 90, size=2))
        gt = random_gt(rng, h, w, i % 4)
        pred = random_pred(rng, gt, (i // 4) % 4)
        worst = max(worst, abs(wf.weighted_fmeasure(pred, gt) - sod(pred, gt)))
    assert worst <= 1e-12


def test_matches_pysodmetrics_on_larger_tiles():
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(256, 256), (300, 190), (129, 400)]):
        gt = random_gt(rng, h, w, (i + 1) % 4)
        for k in range(4):
            pred = random_pred(rng, gt, k)
            assert wf.weighted_fmeasure(pred, gt) == pytest.approx(sod(pred, gt), abs=1e-12)
    # far from a lone corner object: distances beyond the 282 px cap, where B is exactly 2
    gt = np.zeros((300, 420), bool)
    gt[0, 0] = True
    pred = rng.random(gt.shape)
    assert wf.weighted_fmeasure(pred, gt) == pytest.approx(sod(pred, gt), abs=1e-12)


def test_squared_distances_and_nearest_foreground_equal_scipy(cv2_threads):
    """The two exactness claims: integer Δ² from OpenCV == scipy's EDT, and scipy's tie rule in the band."""
    rng = np.random.default_rng(10 + cv2_threads)
    for i in range(40):
        h, w = (int(v) for v in rng.integers(1, 260, size=2))
        gt = random_gt(rng, h, w, i % 4)
        ws = wf._workspace(h, w)
        d2 = wf._squared_distances(gt, ws)
        ft = ndi.distance_transform_edt(~gt, return_distances=False, return_indices=True)
        rows, cols = np.indices(gt.shape)
        ref_d2 = (ft[0] - rows) ** 2 + (ft[1] - cols) ** 2
        assert np.array_equal(d2, np.minimum(ref_d2, 282**2))
        band, nearest = wf._nearest_foreground_in_band(gt, d2, ws)
        assert np.array_equal(nearest, (ft[0] * w + ft[1]).ravel()[band])
        near_fg = cv2.dilate(gt.view(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~gt
        assert np.array_equal(np.sort(band), np.flatnonzero(near_fg))


def test_tie_rule_changes_the_score():
    """A crafted tie: background pixel (4, 5) is at squared distance 5 from A = (6, 4) and B = (3, 7). The
    EDT rule (smallest column, then row) gives it A's error; a rows-first rule would give it B's. The
    transposed image swaps the roles, and pysodmetrics agrees in both orientations."""
    gt = np.zeros((11, 11), bool)
    gt[6, 4] = gt[3, 7] = True
    pred = np.zeros((11, 11))
    pred[3, 7] = 1.0  # B found, A missed: their errors differ (0 vs 1)
    a = wf.weighted_fmeasure(pred, gt)
    b = wf.weighted_fmeasure(pred.T, gt.T)
    assert a == pytest.approx(sod(pred, gt), abs=1e-14)
    assert b == pytest.approx(sod(pred.T.copy(), gt.T.copy()), abs=1e-14)
    assert a != pytest.approx(b, abs=1e-6)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("perfect", 1.0),
        ("full_gt_full_pred", 1.0),
        ("full_gt_empty_pred", 0.32667),  # 16×16 (docs/metrics.md §1.4): zero-padding artefact, kept on purpose
        ("single_pixel_off_by_one", 0.0),
    ],
)
def test_reference_degenerate_values(case, expected):
    gt = np.zeros((16, 16), bool)
    pred = np.zeros((16, 16))
    if case == "perfect":
        gt[5:12, 8:14] = True
        pred = gt.astype(np.float64)
    elif case == "full_gt_full_pred":
        gt[:] = True
        pred[:] = 1.0
    elif case == "full_gt_empty_pred":
        gt[:] = True
    else:
        gt[10, 10] = True
        pred[10, 11] = 1.0
    got = wf.weighted_fmeasure(pred, gt)
    assert got == pytest.approx(expected, abs=1e-5)
    assert got == pytest.approx(sod(pred, gt), abs=1e-14)


def test_beta_is_standard_fbeta_and_pysod_beta_is_beta_squared():
    rng = np.random.default_rng(3)
    gt = random_gt(rng, 40, 50, 2)
    pred = random_pred(rng, gt, 2)
    for beta in (0.3, 0.5, 2.0):
        assert wf.weighted_fmeasure(pred, gt, beta=beta) == pytest.approx(sod(pred, gt, beta**2), abs=1e-12)
    assert wf.weighted_fmeasure(pred, gt, beta=0.5) != pytest.approx(wf.weighted_fmeasure(pred, gt), abs=1e-4)


def test_float32_and_bool_predictions_are_evaluated_in_float64():
    rng = np.random.default_rng(4)
    gt = random_gt(rng, 30, 30, 2)
    pred32 = rng.random((30, 30)).astype(np.float32)
    assert wf.weighted_fmeasure(pred32, gt) == pytest.approx(sod(pred32.astype(np.float64), gt), abs=1e-14)
    mask = rng.random((30, 30)) < 0.5
    assert wf.weighted_fmeasure(mask, gt) == pytest.approx(sod(mask.astype(np.float64), gt), abs=1e-14)


def test_empty_ground_truth():
    pred = np.random.default_rng(0).random((16, 16))
    empty = np.zeros((16, 16), bool)
    assert math.isnan(wf.weighted_fmeasure(pred, empty))
    assert sod(pred, empty) == 0.0
    gt = np.zeros((2, 16, 16), bool)
    gt[1, 4:9, 4:9] = True
    preds = torch.from_numpy(np.stack([pred, gt[1].astype(np.float64)]))
    zero, skip = WeightedFMeasure(), WeightedFMeasure(empty_gt="skip")
    for m in (zero, skip):
        m.update(preds, torch.from_numpy(gt))
    assert zero.compute() == pytest.approx(0.5)  # (0 + 1) / 2, as pysodmetrics
    assert skip.compute() == pytest.approx(1.0)
    assert int(zero.count) == 2 and int(skip.count) == 1


def test_metric_is_the_mean_over_images_like_pysodmetrics():
    rng = np.random.default_rng(5)
    ref = SodWFm()
    m = WeightedFMeasure()
    for b in (3, 1, 2):
        gts = np.stack([random_gt(rng, 20, 26, int(rng.integers(0, 4))) for _ in range(b)])
        gts[0, :] = False if b == 2 else gts[0]  # one empty ground truth
        preds = np.stack([random_pred(rng, g, int(rng.integers(0, 4))) for g in gts])
        m.update(torch.from_numpy(preds).float(), torch.from_numpy(gts))
        for p, g in zip(preds.astype(np.float32).astype(np.float64), gts, strict=True):
            ref.step(p, g, normalize=False)
    assert m.compute() == pytest.approx(ref.get_results()["wfm"], abs=1e-12)
    assert m.score_sum.dtype == torch.int64 and m.count.dtype == torch.int64


def test_fixed_point_sums_are_exact_and_order_independent():
    from fractions import Fraction

    rng = np.random.default_rng(8)
    x = rng.random(1000) ** 3
    x[:3] = (0.0, 1.0, 2.0**-70)
    whole = wf.fixed_point_sum(x)
    parts = wf.fixed_point_sum(x[:17]) + wf.fixed_point_sum(x[17:400]) + wf.fixed_point_sum(x[400:][::-1].copy())
    assert torch.equal(whole, parts)
    exact = float(sum(Fraction(v) for v in x) / len(x))  # correctly rounded mean
    assert wf.fixed_point_mean(whole, torch.tensor(len(x)))[0] == pytest.approx(exact, rel=1e-15)
    assert math.isnan(wf.fixed_point_mean(whole, torch.tensor(0))[0])


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.full((1, 4, 4), float("nan")), torch.zeros(1, 4, 4, dtype=torch.bool), "NaN"),
        (torch.full((1, 4, 4), 1.5), torch.zeros(1, 4, 4, dtype=torch.bool), r"\[0, 1\]"),
        (torch.full((1, 4, 4), -0.1), torch.ones(1, 4, 4, dtype=torch.bool), r"\[0, 1\]"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.bool), "same shape"),
        (torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool), "B×H×W"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "bool"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.bool), "float"),
    ],
)
def test_invalid_inputs_raise(pred, target, match):
    m = WeightedFMeasure()
    with pytest.raises(ValueError, match=match):
        m.update(pred, target)
    assert int(m.count) == 0


def test_per_class_wfm_option_matches_one_vs_rest_pysodmetrics():
    rng = np.random.default_rng(6)
    k, names = 3, ["road", "tree", "car"]
    m = SegmentationMetrics(k, class_names=names, exclude_from_mean=("car",), per_class_wfm=True)
    skip = SegmentationMetrics(k, per_class_wfm=True, wfm_empty_gt="skip")
    threaded = SegmentationMetrics(k, class_names=names, exclude_from_mean=("car",), per_class_wfm=True,
                                   wfm_workers=2)
    sums, counts, skip_sums, skip_counts = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
    for _ in range(2):
        t = rng.integers(0, 2, size=(2, 24, 20))  # class 2 never in the target
        t[:, :5, :5] = 255
        p = np.where(rng.random(t.shape) < 0.7, np.where(t == 255, 0, t), rng.integers(0, k, size=t.shape))
        for mm in (m, skip, threaded):
            mm.update(torch.from_numpy(p), torch.from_numpy(t))
        for i in range(t.shape[0]):
            valid = t[i] != 255
            for c in range(k):
                g = (t[i] == c) & valid
                q = sod(((p[i] == c) & valid).astype(np.float64), g)  # 0 when g is empty
                sums[c] += q
                counts[c] += 1
                if g.any():
                    skip_sums[c] += q
                    skip_counts[c] += 1
    got = m.compute()
    for c, name in enumerate(names):
        assert got[f"WFm/{name}"] == pytest.approx(sums[c] / counts[c], abs=1e-12)
    assert got["mWFm"] == pytest.approx((sums[0] / counts[0] + sums[1] / counts[1]) / 2, abs=1e-12)
    assert threaded.compute() == got  # background threads give the same (exact fixed-point) sums
    threaded.reset()
    assert not threaded._pending and int(threaded.wfm_count.sum()) == 0
    got_skip = skip.compute()
    assert math.isnan(got_skip["WFm/class2"])
    assert got_skip["mWFm"] == pytest.approx(np.mean(skip_sums[:2] / skip_counts[:2]), abs=1e-12)
