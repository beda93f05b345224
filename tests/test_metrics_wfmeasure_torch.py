"""Batched torch WF-measure (rsseg.metrics.wfmeasure_torch) against the numpy/OpenCV path and pysodmetrics."""

from __future__ import annotations

import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from py_sod_metrics import WeightedFmeasure as SodWFm

from rsseg.metrics import SegmentationMetrics
from rsseg.metrics import wfmeasure as wf
from rsseg.metrics import wfmeasure_torch as wt


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The eager EDT issues many small ops; on a shared 2-core machine two OpenMP threads wait on each
    other at every op (seconds instead of milliseconds). Results do not depend on the thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cv2_d2(gt: np.ndarray) -> np.ndarray:
    """Squared distances from the numpy path (OpenCV's exact EDT, capped at 282 px)."""
    return wf._squared_distances(np.ascontiguousarray(gt), wf._workspace(*gt.shape)).copy()


def lattice(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A sparse lattice: many equidistant nearest foreground pixels (EDT ties)."""
    gt = np.zeros((h, w), bool)
    r0, c0, dr, dc = (int(v) for v in rng.integers((0, 0, 2, 2), (3, 3, 9, 9)))
    gt[r0::dr, c0::dc] = True
    return gt


def discs(rng: np.random.Generator, h: int, w: int, n: int = 4) -> np.ndarray:
    img = np.zeros((h, w), np.uint8)
    for _ in range(n):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(0, 15)), 1, -1)
    return img.astype(bool)


def random_mask(rng: np.random.Generator, h: int, w: int, kind: int) -> np.ndarray:
    if kind == 0:
        return discs(rng, h, w)
    if kind == 1:
        return lattice(rng, h, w)
    if kind == 2:  # a single pixel
        gt = np.zeros((h, w), bool)
        gt[rng.integers(h), rng.integers(w)] = True
        return gt
    if kind == 3:
        return np.zeros((h, w), bool)
    if kind == 4:
        return np.ones((h, w), bool)
    return rng.random((h, w)) < rng.random() * 0.2  # sparse noise


def test_squared_edt_equals_opencv_on_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(37, 91), (64, 64), (91, 37), (1, 50), (50, 1), (1, 1)]:
        masks = np.stack([random_mask(rng, *shape, k % 6) for k in range(18)])
        got = wt.squared_edt(torch.from_numpy(masks))
        assert got.dtype == torch.int32 and got.shape == masks.shape
        for m, d in zip(masks, got.numpy(), strict=True):
            assert np.array_equal(d, cv2_d2(m))
    assert bool((wt.squared_edt(torch.zeros(2, 5, 7, dtype=torch.bool)) == 282**2).all())


def test_squared_edt_cap_on_far_apart_objects():
    """Objects farther than 282 px apart on 20×700: the middle of the strip is beyond the cap."""
    gt = np.zeros((3, 20, 700), bool)
    gt[0, 0, 0] = gt[0, 19, 699] = True
    gt[1, 10, 5] = gt[1, 3, 650] = True
    gt[2, :, 350] = True  # every pixel within 350 px, the ends beyond the cap
    got = wt.squared_edt(torch.from_numpy(gt)).numpy()
    for m, d in zip(gt, got, strict=True):
        assert np.array_equal(d, cv2_d2(m))
    assert (got[0] == 282**2).sum() > 0 and (got[2] == 282**2).sum() > 0
    # a smaller cap clamps the same way
    small = wt.squared_edt(torch.from_numpy(gt), cap=40).numpy()
    assert np.array_equal(small, np.minimum(got, 40**2))


def test_brute_force_pass2_equals_the_early_exit_loop():
    """The compiled kernel's expression (run eagerly here) and the eager loop give the same minima."""
    rng = np.random.default_rng(1)
    g = torch.from_numpy(rng.integers(0, 40, size=(300, 91)).astype(np.int32))
    g[::3, ::7] = 0
    g2 = g * g
    brute = wt._pass2_brute(g2)
    assert torch.equal(brute.clamp(max=282**2), wt._pass2_shifted(g2, 282).clamp(max=282**2))
    assert torch.equal(brute.clamp(max=10**2), wt._pass2_shifted(g2, 10).clamp(max=10**2))


def test_nearest_foreground_in_band_matches_numpy_tie_rule():
    rng = np.random.default_rng(2)
    masks = np.stack([random_mask(rng, 45, 70, k) for k in (0, 1, 1, 2, 5, 0, 1, 5)])
    # (10, 10) has Δ² = 16 to (14, 10) but lies in the band only through (13, 13) at Δ² = 18
    masks[5] = False
    masks[5, 14, 10] = masks[5, 13, 13] = True
    values = rng.random(masks.shape)
    d2 = wt.squared_edt(torch.from_numpy(masks))
    got = wt.nearest_foreground_in_band(torch.from_numpy(masks), d2, torch.from_numpy(values)).numpy()
    for m, v, e in zip(masks, values, got, strict=True):
        ws = wf._workspace(*m.shape)
        band, nearest = wf._nearest_foreground_in_band(m, cv2_d2(m), ws)
        ref = v.copy()
        ref.ravel()[band] = v.ravel()[nearest]
        assert np.array_equal(e, ref)
    assert int(d2[5, 10, 10]) == 16 and got[5, 10, 10] == values[5, 14, 10]
    assert int(d2[5, 14, 6]) == 16 and got[5, 14, 6] == values[5, 14, 6]  # Δ² = 16 outside the band


def test_gaussian_equals_opencv_sepfilter():
    rng = np.random.default_rng(8)
    x = rng.random((3, 23, 41))
    x[1, 5:9] = 0.0
    _, taps = wt._device_tables(torch.device("cpu"))
    got = wt._gaussian(torch.from_numpy(x), taps).numpy()
    for xi, yi in zip(x, got, strict=True):
        ref = cv2.sepFilter2D(xi, cv2.CV_64F, wf._G, wf._G, borderType=cv2.BORDER_CONSTANT)
        assert np.abs(yi - ref).max() <= 1e-15


def random_pair(rng: np.random.Generator, h: int, w: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    gt = random_mask(rng, h, w, [0, 1, 5, 2, 0, 1][i % 6])
    kind = (i // 6) % 4
    if kind == 0:  # soft, uniform
        pred = rng.random((h, w))
    elif kind == 1:  # binary, random
        pred = (rng.random((h, w)) < 0.3).astype(np.float64)
    elif kind == 2:  # soft, correlated with the truth
        pred = np.clip(gt * 0.8 + rng.normal(0, 0.25, gt.shape), 0, 1)
    else:  # shifted binary
        pred = np.roll(gt, int(rng.integers(-3, 4)), axis=1).astype(np.float64)
    return pred, gt


def test_weighted_fmeasure_batch_matches_numpy():
    rng = np.random.default_rng(3)
    for h, w in [(48, 64), (37, 91), (120, 30)]:
        pairs = [random_pair(rng, h, w, i) for i in range(16)]
        pairs[3] = (pairs[3][0], np.zeros((h, w), bool))  # empty ground truth
        pairs[7] = (pairs[7][0], np.ones((h, w), bool))  # full ground truth
        pred = torch.from_numpy(np.stack([p for p, _ in pairs]))
        gt = torch.from_numpy(np.stack([g for _, g in pairs]))
        got = wt.weighted_fmeasure_batch(pred, gt, chunk=5)
        assert got.dtype == torch.float64
        ref = np.array([wf.weighted_fmeasure(p, g) for p, g in pairs])
        assert np.array_equal(np.isnan(got.numpy()), np.isnan(ref)) and math.isnan(ref[3])
        assert np.nanmax(np.abs(got.numpy() - ref)) <= 1e-12
    # beta, float32 and bool predictions are evaluated in float64 as in the numpy path
    p32, g = pred.float(), gt
    ref32 = [wf.weighted_fmeasure(p.numpy(), m.numpy(), beta=0.5) for p, m in zip(p32, g, strict=True)]
    got32 = wt.weighted_fmeasure_batch(p32, g, beta=0.5)
    assert np.nanmax(np.abs(got32.numpy() - np.array(ref32))) <= 1e-12
    got_bool = wt.weighted_fmeasure_batch(pred > 0.5, gt)
    ref_bool = [wf.weighted_fmeasure(p.numpy() > 0.5, m.numpy()) for p, m in zip(pred, gt, strict=True)]
    assert np.nanmax(np.abs(got_bool.numpy() - np.array(ref_bool))) <= 1e-12


def test_weighted_fmeasure_batch_matches_pysodmetrics():
    rng = np.random.default_rng(4)
    pairs = [random_pair(rng, 60, 80, i) for i in (0, 1, 7, 13, 20)]
    got = wt.weighted_fmeasure_batch(
        torch.from_numpy(np.stack([p for p, _ in pairs])), torch.from_numpy(np.stack([g for _, g in pairs]))
    )
    for (p, g), q in zip(pairs, got.tolist(), strict=True):
        m = SodWFm()
        m.step(np.asarray(p, np.float64).copy(), g.copy(), normalize=False)
        assert q == pytest.approx(float(m.get_results()["wfm"]), abs=1e-6)


def test_weighted_fmeasure_batch_rejects_bad_inputs():
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wt.weighted_fmeasure_batch(torch.full((2, 4, 4), 1.5), gt)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wt.weighted_fmeasure_batch(torch.full((2, 4, 4), float("nan")), gt)
    with pytest.raises(ValueError, match="same shape"):
        wt.weighted_fmeasure_batch(torch.zeros(2, 4, 5), gt)
    with pytest.raises(ValueError, match="bool"):
        wt.weighted_fmeasure_batch(torch.zeros(2, 4, 4), gt.long())
    assert wt.weighted_fmeasure_batch(torch.zeros(0, 4, 4), gt[:0]).shape == (0,)


def label_maps(rng: np.random.Generator, b: int, h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocky targets where the last class never occurs, an ignore band, one fully ignored image."""
    coarse = rng.integers(0, k - 1, size=(b, h // 8 + 1, w // 8 + 1))
    t = coarse.repeat(8, 1).repeat(8, 2)[:, :h, :w]
    t[:, :3] = 255
    t[1] = 255  # no valid pixel: not counted
    t[2][t[2] == 0] = 1  # class 0 absent from this image
    p = np.where(rng.random(t.shape) < 0.8, np.where(t == 255, 0, t), rng.integers(0, k, size=t.shape))
    return p, t


@pytest.mark.parametrize("empty_gt", ["zero", "skip"])
def test_per_class_update_matches_numpy(empty_gt):
    rng = np.random.default_rng(5)
    k = 4
    p, t = label_maps(rng, 4, 40, 56, k)
    ref_sum, ref_count = wf.per_class_wfm_update(torch.from_numpy(p), torch.from_numpy(t), k, 255, empty_gt)
    got_sum, got_count = wt.per_class_wfm_update_torch(torch.from_numpy(p), torch.from_numpy(t), k, 255, empty_gt)
    assert torch.equal(got_count, ref_count) and got_count.dtype == torch.int64
    assert got_sum.shape == ref_sum.shape == (k, 2) and got_sum.dtype == torch.int64
    ref, got = wf.fixed_point_mean(ref_sum, ref_count), wf.fixed_point_mean(got_sum, got_count)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.nanmax(np.abs(np.array(got) - np.array(ref))) <= 1e-12
    if empty_gt == "skip":
        assert int(got_count[k - 1]) == 0 and math.isnan(got[k - 1])
    # no ignore index: every image counts
    ref_n = wf.per_class_wfm_update(torch.from_numpy(p), torch.from_numpy(t), k, None, empty_gt)
    got_n = wt.per_class_wfm_update_torch(torch.from_numpy(p), torch.from_numpy(t), k, None, empty_gt, chunk=3)
    assert torch.equal(got_n[1], ref_n[1])
    diff = np.array(wf.fixed_point_mean(*got_n)) - np.array(wf.fixed_point_mean(*ref_n))
    assert np.nanmax(np.abs(diff)) <= 1e-12


@pytest.mark.parametrize("empty_gt", ["zero", "skip"])
def test_segmentation_metrics_same_device_option(empty_gt):
    rng = np.random.default_rng(6)
    k, names = 4, ["road", "tree", "car", "clutter"]
    kwargs = dict(class_names=names, exclude_from_mean=("road",), per_class_wfm=True, wfm_empty_gt=empty_gt)
    cpu = SegmentationMetrics(k, **kwargs)
    same = SegmentationMetrics(k, wfm_device="same", **kwargs)
    for _ in range(2):
        p, t = label_maps(rng, 3, 32, 40, k)
        for m in (cpu, same):
            m.update(torch.from_numpy(p), torch.from_numpy(t))
    ref, got = cpu.compute(), same.compute()
    assert ref.keys() == got.keys()
    for key in ref:
        if key.startswith("WFm/") or key == "mWFm":
            assert math.isnan(got[key]) == math.isnan(ref[key])
            assert got[key] == pytest.approx(ref[key], abs=1e-12, nan_ok=True)
        else:
            assert got[key] == ref[key] or (math.isnan(got[key]) and math.isnan(ref[key]))
    with pytest.raises(ValueError, match="wfm_device"):
        SegmentationMetrics(k, per_class_wfm=True, wfm_device="cuda")


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
def test_compiled_pass2_equals_eager_on_cpu():
    """torch.compile of the brute-force pass 2 (what CUDA runs), built for the CPU: ≈ 10–20 s of compiling."""
    rng = np.random.default_rng(7)
    masks = np.stack([random_mask(rng, 37, 91, k) for k in range(6)])
    fg = torch.from_numpy(masks)
    assert torch.equal(wt.squared_edt(fg, use_compile=True), wt.squared_edt(fg, use_compile=False))
    far = torch.zeros(2, 20, 700, dtype=torch.bool)
    far[0, 0, 0] = far[1, 10, 350] = True
    assert torch.equal(wt.squared_edt(far, use_compile=True), wt.squared_edt(far, use_compile=False))
