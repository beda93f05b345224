"""Weighted F-measure F^w_β (Margolin, Zelnik-Manor & Tal, "How to Evaluate Foreground Maps?", CVPR 2014).

The core, :func:`weighted_fmeasure`, scores one image in float64 on the CPU and reproduces the authors'
MATLAB ``WFb.m`` and pysodmetrics ``WeightedFmeasure.step(normalize=False)`` (≤ 1e-15 in practice). The
paper's equations, as ``WFb.m`` implements them line by line:

* error map            E = |D − G|                       (D: prediction in [0, 1], G: binary ground truth)
* pixel dependency     Et = E on G1, and on G0 the error of the nearest G1 pixel (``bwdist`` index);
                       EA = Et ⋆ A, A = ``fspecial('gaussian', 7, 5)`` with zero padding (``imfilter``);
                       E' = min(E, EA) on G1, E on G0
* pixel importance     B = 1 on G1, B = 2 − exp(α·Δ) on G0, α = ln(0.5)/5, Δ = distance to G1
* weighted errors      E^w = E'·B;  TP^w = |G1| − Σ_{G1} E^w;  FP^w = Σ_{G0} E^w
* weighted R and P     R^w = 1 − mean_{G1} E^w;  P^w = TP^w / (ε + TP^w + FP^w)
* F^w_β                (1 + β²)·P^w·R^w / (β²·P^w + R^w + ε),  ε = 2.22e-16 (MATLAB ``eps``)

β convention: the standard F_β. pysodmetrics' ``beta`` argument plays the role of β² (so
``WeightedFmeasure(beta=b)`` there equals ``beta=sqrt(b)`` here); ``WFb.m`` hard-codes β = 1, and its
commented general line ``(1+β²)RP/(eps+R+β·P)`` (copied by IDGBR) agrees with both only at β = 1.

Why it is fast but still exact (≈ 4× pysodmetrics on 512² and 1024² tiles, see benchmarks/README.md):

* Δ comes from OpenCV's exact Euclidean distance transform (Felzenszwalb–Huttenlocher, float32 output).
  Squared distances are integers, recovered exactly by rounding Δ², and B is read from a table indexed by
  Δ². From Δ ≈ 265 px on, 2 − exp(αΔ) rounds to exactly 2.0 in float64, so distances are capped at
  282 px and the float32 precision of large distances never matters.
* Et is only needed where it reaches EA on a G1 pixel, i.e. on background pixels within the 7×7 window
  of the foreground (Chebyshev distance ≤ 3, hence Δ² ≤ 18). For those pixels the nearest foreground pixel
  is searched directly among the offsets of the known Δ², in the order scipy's EDT (Maurer's algorithm,
  rows first) breaks ties, which also reproduces MATLAB's documented ``bwdist`` example: smallest column
  first, then smallest row. Other background pixels keep E (their EA is unused).
* The 7×7 Gaussian is separable (outer product of the 1-D normalised taps), applied with
  ``cv2.sepFilter2D`` in float64 with ``BORDER_CONSTANT`` (zero padding, as ``imfilter``).
* Full-size work buffers are reused between calls of the same image size (per thread), since fresh
  page-faulted memory costs as much as the arithmetic here.
"""

from __future__ import annotations

import math
import threading
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["WeightedFMeasure", "fixed_point_mean", "fixed_point_sum", "per_class_wfm_update", "weighted_fmeasure"]

EPS = float(np.spacing(1))  # MATLAB eps
ALPHA = math.log(0.5) / 5  # B = 2 - exp(ALPHA * Δ): B = 1.5 at Δ = 5 px

# B as a function of the integer squared distance, up to Δ = 282 px; from Δ ≈ 265 px on it is exactly 2.0.
_D_CAP = 282.0
_B_TABLE = 2.0 - np.exp(ALPHA * np.sqrt(np.arange(int(_D_CAP) ** 2 + 1, dtype=np.float64)))
assert _B_TABLE[-1] == 2.0 and _B_TABLE[266**2] == 2.0
# The same with 0 at Δ = 0 (the foreground), so that Σ E·B0 is the background sum FP^w without a mask.
_B0_TABLE = _B_TABLE.copy()
_B0_TABLE[0] = 0.0

# fspecial('gaussian', 7, 5) = outer(g, g) with g the normalised 1-D taps.
_G = np.exp(-(np.arange(-3, 4, dtype=np.float64) ** 2) / (2 * 5.0**2))
_G = (_G / _G.sum()).reshape(-1, 1)
_K7 = np.ones((7, 7), np.uint8)

# Offsets (dr, dc) to the nearest foreground of a band pixel, grouped by squared distance and in the
# EDT's tie order (smallest column, then smallest row). Band pixels have Δ² ≤ 3² + 3² = 18.
_PAD = 4
_SHELLS: dict[int, tuple[np.ndarray, np.ndarray]] = {}
for _d2 in range(1, 19):
    _r = range(-_PAD, _PAD + 1)
    _offs = sorted((dc, dr) for dr in _r for dc in _r if dr * dr + dc * dc == _d2)
    if _offs:
        _SHELLS[_d2] = (np.array([o[1] for o in _offs]), np.array([o[0] for o in _offs]))  # (dr, dc)

_local = threading.local()


def fixed_point_sum(values: Tensor | np.ndarray) -> Tensor:
    """Σ over the first axis of scores in [0, 1], exact, as two int64 limbs (shape ``values.shape[1:] + (2,)``).

    Scores are held in 62-bit fixed point (rounding ≤ 2^-63, below float64 resolution of the mean) and
    split into 31-bit limbs, so that sums of up to 2^32 scores are exact integers: the result no longer
    depends on how images are split across processes or batches, unlike a float sum.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if not bool(((v >= 0) & (v <= 1)).all()):
        raise ValueError("fixed-point sums take scores in [0, 1]")
    n = torch.round(v * 2.0**62).long()  # exact power-of-2 scaling
    return torch.stack((n >> 31, n & (2**31 - 1)), -1).sum(0)


def fixed_point_mean(state: Tensor, count: Tensor) -> list[float]:
    """Correctly rounded Σ/count per element of a :func:`fixed_point_sum` state; NaN where count is 0."""
    limbs, counts = state.reshape(-1, 2).tolist(), count.reshape(-1).tolist()
    return [((hi << 31) + lo) / (n << 62) if n else math.nan for (hi, lo), n in zip(limbs, counts, strict=True)]


class _Workspace:
    """Reusable full-size buffers for one image shape."""

    def __init__(self, h: int, w: int) -> None:
        self.shape = (h, w)
        self.E = np.empty((h, w), np.float64)
        self.Et = np.empty((h, w), np.float64)
        self.EA = np.empty((h, w), np.float64)
        self.tmp = np.empty((h, w), np.float64)
        self.dist = np.empty((h, w), np.float32)
        self.d2 = np.empty((h, w), np.int32)
        self.not_gt = np.empty((h, w), np.bool_)
        self.band = np.empty((h, w), np.uint8)
        self.gt_pad = np.zeros((h + 2 * _PAD, w + 2 * _PAD), np.bool_)


def _workspace(h: int, w: int) -> _Workspace:
    ws = getattr(_local, "ws", None)
    if ws is None or ws.shape != (h, w):
        ws = _local.ws = _Workspace(h, w)
    return ws


def _squared_distances(gt: np.ndarray, ws: _Workspace) -> np.ndarray:
    """Integer squared distance of every pixel to the nearest foreground pixel, capped at 282² (B = 2 there)."""
    np.logical_not(gt, out=ws.not_gt)
    cv2.distanceTransform(ws.not_gt.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dst=ws.dist)
    # Δ² ≤ 282² is far below 2^24, so float32 Δ·Δ is within 0.01 of the integer: round by +0.5, truncate.
    np.minimum(ws.dist, _D_CAP, out=ws.dist)
    np.multiply(ws.dist, ws.dist, out=ws.dist)
    ws.dist += 0.5
    np.copyto(ws.d2, ws.dist, casting="unsafe")
    return ws.d2


def _nearest_foreground_in_band(gt: np.ndarray, d2: np.ndarray, ws: _Workspace) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the background pixels within Chebyshev distance 3 of the foreground, and of their
    nearest foreground pixel with the EDT tie rule (smallest column, then smallest row)."""
    h, w = gt.shape
    cv2.dilate(gt.view(np.uint8), _K7, dst=ws.band)
    np.logical_and(ws.band, ws.not_gt, out=ws.band)
    band = np.flatnonzero(ws.band)
    if band.size == 0:
        return band, band
    wp = w + 2 * _PAD
    ws.gt_pad[_PAD : _PAD + h, _PAD : _PAD + w] = gt
    gt_pad = ws.gt_pad.ravel()
    d2_band = d2.ravel()[band]
    pixels, nearest = [], []
    for s, (dr, dc) in _SHELLS.items():
        idx = band[d2_band == s]
        if idx.size == 0:
            continue
        row, col = np.divmod(idx, w)
        pidx = (row + _PAD) * wp + (col + _PAD)
        hits = gt_pad[pidx[:, None] + (dr * wp + dc)]  # n × offsets, in tie order
        first = hits.argmax(1)  # first foreground hit wins
        if not hits[np.arange(idx.size), first].all():  # impossible with an exact EDT; never guess
            raise RuntimeError(f"band pixels found no foreground at squared distance {s}")
        pixels.append(idx)
        nearest.append(idx + (dr * w + dc)[first])
    return np.concatenate(pixels), np.concatenate(nearest)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be H×W arrays of the same shape, got {pred.shape} and {gt.shape}")
    if gt.dtype != np.bool_:
        raise ValueError(f"gt must be a boolean array, got {gt.dtype}")
    if not np.issubdtype(pred.dtype, np.floating) and pred.dtype != np.bool_:
        raise ValueError(f"pred must be a float array in [0, 1], got {pred.dtype}")
    if pred.size and not (pred.min() >= 0 and pred.max() <= 1):  # also catches NaN
        raise ValueError("pred must lie in [0, 1] and contain no NaN")


def weighted_fmeasure(pred: np.ndarray, gt: np.ndarray, beta: float = 1.0, *, validate: bool = True) -> float:
    """F^w_β of one image (formulas in the module docstring), in float64 whatever the input float type.

    ``pred``: H×W float in [0, 1] (binary or soft; not min-max rescaled), ``gt``: H×W bool.
    Returns NaN when ``gt`` has no foreground (R^w is a mean over an empty set); :class:`WeightedFMeasure`
    turns that into its ``empty_gt`` policy.
    """
    pred, gt = np.asarray(pred), np.ascontiguousarray(gt)
    if validate:
        _check_pair(pred, gt)
    n_fg = int(np.count_nonzero(gt))
    if n_fg == 0:
        return math.nan
    ws = _workspace(*gt.shape)
    E, Et, EA, tmp = ws.E, ws.Et, ws.EA, ws.tmp
    np.subtract(pred, gt, out=E, dtype=np.float64)
    np.abs(E, out=E)
    d2 = _squared_distances(gt, ws)
    # Pixel dependency: background pixels near the object take the error of their nearest object pixel.
    np.copyto(Et, E)
    band, nearest = _nearest_foreground_in_band(gt, d2, ws)
    Et.ravel()[band] = E.ravel()[nearest]
    cv2.sepFilter2D(Et, cv2.CV_64F, _G, _G, dst=EA, borderType=cv2.BORDER_CONSTANT)
    np.minimum(E, EA, out=EA)  # E' on the foreground
    np.multiply(EA, gt, out=EA)  # Σ_{G1} E^w (B = 1 there); no BLAS dot: its threads stall under load
    sum_fg = float(EA.sum())
    # Pixel importance: FP^w = Σ_{G0} E·B, with B0 = 0 on the foreground.
    np.take(_B0_TABLE, d2, out=tmp, mode="clip")  # "clip": unbuffered; indices are in range
    np.multiply(E, tmp, out=tmp)
    fp_w = float(tmp.sum())
    tp_w = n_fg - sum_fg
    recall = 1.0 - sum_fg / n_fg
    precision = tp_w / (tp_w + fp_w + EPS)
    b2 = beta * beta
    return (1.0 + b2) * recall * precision / (recall + b2 * precision + EPS)


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


class WeightedFMeasure(Metric):
    """Mean over images of Margolin et al.'s weighted F-measure F^w_β (see :func:`weighted_fmeasure`).

    ``update(pred, target)``: ``pred`` B×H×W float in [0, 1] (probabilities or binary masks, used as
    given: no min-max rescaling, unlike pysodmetrics' default ``normalize=True``), ``target`` B×H×W bool.
    Images whose target has no foreground follow ``empty_gt``: ``"zero"`` scores 0 and counts the image
    (pysodmetrics ``step``), ``"skip"`` leaves it out. States are an exact fixed-point sum of the scores
    (:func:`fixed_point_sum`) and an image count, both summed across processes. ``compute()`` returns a
    float (NaN before any counted image).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, beta: float = 1.0, empty_gt: Literal["zero", "skip"] = "zero", **kwargs) -> None:
        super().__init__(**kwargs)
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if empty_gt not in ("zero", "skip"):
            raise ValueError(f"empty_gt must be 'zero' or 'skip', got {empty_gt!r}")
        self.beta = float(beta)
        self.empty_gt = empty_gt
        self.add_state("score_sum", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")  # fixed point
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.ndim != 3 or pred.shape != target.shape:
            raise ValueError(
                f"pred and target must be B×H×W of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if not pred.is_floating_point():
            raise ValueError(f"pred must be a float tensor in [0, 1], got {pred.dtype}")
        if target.dtype != torch.bool:
            raise ValueError(f"target must be a bool tensor, got {target.dtype}")
        p, t = _as_numpy(pred), _as_numpy(target)
        scores = []
        for i in range(p.shape[0]):
            q = weighted_fmeasure(p[i], t[i], self.beta)
            if math.isnan(q):  # empty ground truth
                if self.empty_gt == "skip":
                    continue
                q = 0.0
            scores.append(q)
        if scores:
            self.score_sum += fixed_point_sum(scores).to(self.score_sum.device)
            self.count += len(scores)

    def compute(self) -> float:
        return fixed_point_mean(self.score_sum, self.count)[0]


def per_class_wfm_update(
    labels: Tensor, target: Tensor, num_classes: int, ignore_index: int | None, empty_gt: str = "zero"
) -> tuple[Tensor, Tensor]:
    """Per-class one-vs-rest F^w of label maps (B×H×W): fixed-point sums (C×2) and image counts (C) per class.

    For class c and image i the prediction is ``labels == c`` and the ground truth ``target == c``.
    Ignored target pixels are set to background in both (an ignored pixel is never an error, but it still
    lies at its distance from the objects). An image whose target has no valid pixel is not counted for
    any class; an image without class c in its target scores 0 for c and is counted (``empty_gt="zero"``,
    as pysodmetrics), or is not counted for c (``"skip"``).
    """
    lab, tgt = _as_numpy(labels), _as_numpy(target)
    scores = np.zeros((lab.shape[0], num_classes), np.float64)
    counts = np.zeros(num_classes, np.int64)
    for i in range(lab.shape[0]):
        t = tgt[i]
        valid = t != ignore_index if ignore_index is not None else np.ones(t.shape, bool)
        if not valid.any():
            continue
        p = np.where(valid, lab[i], -1)
        for c in range(num_classes):
            q = weighted_fmeasure(p == c, t == c, validate=False)
            if math.isnan(q):
                if empty_gt == "skip":
                    continue
                q = 0.0
            scores[i, c] = q
            counts[c] += 1
    return fixed_point_sum(scores), torch.from_numpy(counts)
