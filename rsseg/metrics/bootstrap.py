"""Bootstrap confidence intervals and paired comparisons over evaluation units (docs/metrics.md §6).

An evaluation unit is what a test set is made of and what would change with another test set: an ISPRS
tile, a LoveDA/UAVid/CHN6-CUG image, a referring expression. A resample draws n units with replacement and
recomputes the dataset metric from the SUM of the drawn units' confusion matrices (or I/U pairs), exactly as
the metric is defined on the full set. Averaging per-unit scores instead would bootstrap a different metric
(e.g. a mean of per-image mIoUs), whose interval need not even contain the reported number.

Every metric here is a function of weighted sums of per-unit arrays, so B resamples are one matrix product
``counts (B×n) @ units (n×D)`` followed by vectorised metric formulas. Counts are held in float64, exact
while every sum stays below 2^53 (checked), so the resampled matrices are exact integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rsseg.metrics.wfmeasure import fixed_point_mean, fixed_point_sum

__all__ = [
    "Interval",
    "PairedComparison",
    "bca_parameters",
    "mean_interval",
    "paired_bootstrap",
    "paired_from_intervals",
    "paired_referring_bootstrap",
    "rank_stability",
    "ratio_bootstrap",
    "referring_bootstrap",
    "resample_counts",
    "semantic_bootstrap",
]

SEMANTIC_METRICS = ("OA", "mIoU", "mF1", "Kappa")
Method = Literal["percentile", "bca"]
Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]  # B×D summed unit data → metric → B values
_EXACT = 2.0**53  # float64 holds every integer below this


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval of one metric. ``estimate`` is the metric of the full set; ``samples`` holds the
    B resampled values (NaN where a resample leaves the metric undefined, counted in ``nan_resamples``) for
    :func:`rank_stability` and plots; it is left out of :meth:`as_dict`."""

    estimate: float
    low: float
    high: float
    level: float
    method: str
    n_units: int
    n_resamples: int
    nan_resamples: int
    samples: np.ndarray = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-ready fields (NaN stays a float NaN: the caller decides how to write it)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}


@dataclass(frozen=True)
class PairedComparison:
    """metric(a) − metric(b) over the same resamples of the same units.

    ``flip_rate``: share of the non-NaN resamples whose difference does not have the sign of the full-data
    difference, with 0 as a sign of its own (a tie in a resample flips a full-data win, a non-zero
    difference flips a full-data tie). Two identical methods therefore have flip rate 0: every resample
    reproduces the tie. ``distinguishable``: the interval excludes 0 (False when it is NaN).
    """

    metric: str
    difference: Interval
    flip_rate: float
    distinguishable: bool

    def as_dict(self) -> dict[str, float | int | str | bool]:
        return {"metric": self.metric, **self.difference.as_dict(), "flip_rate": self.flip_rate,
                "distinguishable": self.distinguishable}


def resample_counts(
    n_units: int, n_resamples: int = 2000, seed: int = 0, indices: np.ndarray | None = None
) -> np.ndarray:
    """B×n int64: how many times each unit is drawn in each resample (each row sums to n).

    The draws are ``np.random.default_rng(seed).integers(0, n, (B, n))``, so a seed fixes them (for a given
    numpy); ``indices`` (B×n unit ids) gives them explicitly. Counts instead of indices let one matrix
    product sum the units of all resamples.
    """
    if n_units < 2:
        raise ValueError(f"the bootstrap needs at least 2 evaluation units, got {n_units}")
    if indices is None:
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be positive, got {n_resamples}")
        indices = np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[1] != n_units or indices.dtype.kind not in "iu":
        raise ValueError(f"indices must be B×{n_units} integers, got shape {indices.shape} {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_units):
        raise ValueError(f"indices must lie in [0, {n_units})")
    rows = len(indices)
    flat = (indices + n_units * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_units).reshape(rows, n_units)


def _numpy(x: np.ndarray | Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _counts(counts: np.ndarray | None, n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    """float64 B×n resample counts: given ones checked, else drawn by :func:`resample_counts`."""
    if counts is None:
        counts = resample_counts(n_units, n_resamples, seed)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != n_units or (counts < 0).any():
        raise ValueError(f"counts must be non-negative B×{n_units}, got shape {counts.shape}")
    return counts.astype(np.float64)


def _check_exact(units: np.ndarray, counts: np.ndarray) -> None:
    """Resampled sums are exact integers in float64 only while they stay below 2^53."""
    if counts.sum(1).max() * np.abs(units).max(initial=0) >= _EXACT:
        raise ValueError("resampled sums would exceed 2^53 and lose exactness in float64")


def _class_mean(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row means of B×K per-class values over the kept, non-NaN classes (NaN if none).

    Rows are grouped by their set of present classes (usually one or two sets, never a loop over resamples)
    and each group's compacted values are averaged with numpy's row-wise mean: the same pairwise summation
    as the 1-D mean of :func:`~rsseg.metrics.semantic.metrics_from_confusion_matrix`, so values agree bit
    for bit.
    """
    valid = keep & ~np.isnan(values)
    out = np.full(len(values), np.nan)
    patterns, inverse = np.unique(valid, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for p, pattern in enumerate(patterns):
        if pattern.any():
            rows = inverse == p
            # C order: numpy then sums each row pairwise like a 1-D array (not column by column)
            out[rows] = np.ascontiguousarray(values[rows][:, pattern]).mean(1)
    return out


def _keep_mask(k: int, exclude_from_mean: Sequence[int]) -> np.ndarray:
    keep = np.ones(k, dtype=bool)
    bad = [c for c in exclude_from_mean if not 0 <= int(c) < k]
    if bad:
        raise ValueError(f"exclude_from_mean indices outside [0, {k}): {bad}")
    keep[[int(c) for c in exclude_from_mean]] = False
    return keep


def _confmat_metrics(cm: np.ndarray, metrics: Sequence[str], keep: np.ndarray) -> dict[str, np.ndarray]:
    """OA, mIoU, mF1, Kappa of B float64 K×K matrices with the floating-point operations of
    ``metrics_from_confusion_matrix`` (absent="nan"), so each value equals it exactly."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    gt, pred, total = cm.sum(2), cm.sum(1), cm.sum((1, 2))
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        oa = tp.sum(1) / total  # NaN for an empty matrix
        pe = (gt * pred).sum(1) / (total * total)
        out = {
            "OA": oa,
            "Kappa": np.where(pe < 1.0, (oa - pe) / (1.0 - pe), np.nan),
            "mIoU": _class_mean(np.where(union > 0, tp / union, np.nan), keep),
            "mF1": _class_mean(np.where(union > 0, 2 * tp / (gt + pred), np.nan), keep),
        }
    return {m: out[m] for m in metrics}


def _evaluate(
    units: np.ndarray, statistic: Statistic, counts: np.ndarray, jackknife: bool
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The statistic of the full sum, of each resample (counts @ units) and, for BCa, of each
    leave-one-unit-out sum (total − unit)."""
    _check_exact(units, counts)
    total = units.sum(0)
    estimates = {name: float(v[0]) for name, v in statistic(total[None]).items()}
    samples = statistic(counts @ units)
    return estimates, samples, statistic(total[None] - units) if jackknife else None


def bca_parameters(samples: np.ndarray, estimate: float, jackknife: np.ndarray) -> tuple[float, float]:
    """BCa's bias correction z0 and acceleration a (Efron & Tibshirani 1993, §14.3).

    z0 = Φ⁻¹(share of the non-NaN resamples strictly below the estimate) (±inf when none or all are);
    a = Σd³ / (6 (Σd²)^{3/2}) with d = mean(θ₍ᵢ₎) − θ₍ᵢ₎ over the finite leave-one-unit-out values θ₍ᵢ₎
    (the jackknife; 0 when they do not vary).
    """
    finite = samples[~np.isnan(samples)]
    share = float(np.mean(finite < estimate))
    z0 = NormalDist().inv_cdf(share) if 0.0 < share < 1.0 else math.copysign(math.inf, share - 0.5)
    jack = jackknife[~np.isnan(jackknife)]
    d = jack.mean() - jack if jack.size else jack
    den = 6.0 * float((d**2).sum()) ** 1.5
    return z0, float((d**3).sum() / den) if den > 0 else 0.0


def _bca_bounds(samples: np.ndarray, estimate: float, jackknife: np.ndarray, level: float) -> tuple[float, float]:
    """Quantiles of the resamples at the BCa-adjusted levels; NaN when z0 is infinite (the estimate lies
    outside the resample distribution), except for a constant distribution, whose bounds are that value."""
    finite = samples[~np.isnan(samples)]
    if finite.min() == finite.max():
        return float(finite[0]), float(finite[0])
    z0, a = bca_parameters(samples, estimate, jackknife)
    if not math.isfinite(z0):
        return math.nan, math.nan
    normal = NormalDist()
    alphas = []
    for p in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + normal.inv_cdf(p)
        alphas.append(normal.cdf(z0 + z / (1 - a * z)))
    low, high = np.nanquantile(samples, alphas)
    return float(low), float(high)


def _interval(
    estimate: float, samples: np.ndarray, jackknife: np.ndarray | None, method: Method, level: float, n_units: int
) -> Interval:
    """Percentile: numpy's default (``linear``, Hyndman–Fan type 7) quantiles of the non-NaN resamples at
    (1 ∓ level)/2. BCa: the same quantiles at the adjusted levels."""
    nan = int(np.isnan(samples).sum())
    if nan == samples.size or (method == "bca" and math.isnan(estimate)):
        low = high = math.nan
    elif method == "percentile":
        low, high = (float(q) for q in np.nanquantile(samples, [(1 - level) / 2, (1 + level) / 2]))
    else:
        low, high = _bca_bounds(samples, estimate, jackknife, level)
    return Interval(estimate, low, high, level, method, n_units, len(samples), nan, samples)


def _check_options(method: str, level: float) -> None:
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _bootstrap(
    units: np.ndarray, statistic: Statistic, counts: np.ndarray, method: Method, level: float
) -> dict[str, Interval]:
    _check_options(method, level)
    estimates, samples, jack = _evaluate(units, statistic, counts, method == "bca")
    return {name: _interval(estimates[name], samples[name], None if jack is None else jack[name], method, level,
                            len(units)) for name in samples}


def _paired(
    units_a: np.ndarray, units_b: np.ndarray, statistic: Statistic, metric: str, counts: np.ndarray,
    method: Method, level: float,
) -> PairedComparison:
    """Both methods evaluated on the same resamples; the interval is that of the per-resample difference."""
    _check_options(method, level)
    if units_a.shape != units_b.shape:
        raise ValueError(f"the two methods' unit arrays differ in shape: {units_a.shape} vs {units_b.shape}")
    est_a, samples_a, jack_a = _evaluate(units_a, statistic, counts, method == "bca")
    est_b, samples_b, jack_b = _evaluate(units_b, statistic, counts, method == "bca")
    if metric not in est_a:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(est_a)}")
    estimate = est_a[metric] - est_b[metric]
    diff = samples_a[metric] - samples_b[metric]
    jack = None if jack_a is None else jack_a[metric] - jack_b[metric]
    return _comparison(metric, _interval(estimate, diff, jack, method, level, len(units_a)))


def _comparison(metric: str, difference: Interval) -> PairedComparison:
    finite = difference.samples[~np.isnan(difference.samples)]
    sign = np.sign(difference.estimate)
    flip_rate = float(np.mean(np.sign(finite) != sign)) if finite.size else math.nan
    return PairedComparison(metric, difference, flip_rate, bool(difference.low > 0 or difference.high < 0))


def mean_interval(intervals: Sequence[Interval]) -> Interval:
    """The percentile interval of the mean of several runs' metric (e.g. one per training seed) over the same
    resamples: per resample the runs' values are averaged, so the interval is the test set's variation of
    the seed-averaged metric (the spread between seeds is a separate number, never folded in here)."""
    first = intervals[0]
    if any(len(i.samples) != len(first.samples) or i.n_units != first.n_units for i in intervals):
        raise ValueError("the runs were not resampled alike (other units or resample counts)")
    estimate = float(np.mean([i.estimate for i in intervals]))
    samples = np.mean([i.samples for i in intervals], axis=0)
    return _interval(estimate, samples, None, "percentile", first.level, first.n_units)


def paired_from_intervals(metric: str, a: Interval, b: Interval) -> PairedComparison:
    """:func:`paired_bootstrap`'s percentile comparison from two methods' intervals of one metric computed
    on the same resample counts (their resampled values are paired one to one)."""
    if len(a.samples) != len(b.samples) or a.n_units != b.n_units:
        raise ValueError("the two intervals were not resampled alike (other units or resample counts)")
    difference = _interval(a.estimate - b.estimate, a.samples - b.samples, None, "percentile", a.level, a.n_units)
    return _comparison(metric, difference)


def _semantic_units(unit_confmats: np.ndarray | Tensor) -> np.ndarray:
    """n×K×K non-negative counts → float64 n×K²."""
    cm = _numpy(unit_confmats)
    if cm.ndim != 3 or cm.shape[1] != cm.shape[2]:
        raise ValueError(f"unit_confmats must be n×K×K, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrices must be non-negative counts")
    return cm.reshape(len(cm), -1).astype(np.float64)


def _semantic_statistic(k: int, metrics: Sequence[str], exclude_from_mean: Sequence[int]) -> Statistic:
    unknown = [m for m in metrics if m not in SEMANTIC_METRICS]
    if unknown:
        raise ValueError(f"unknown semantic metrics {unknown}; choose from {SEMANTIC_METRICS}")
    keep = _keep_mask(k, exclude_from_mean)
    return lambda sums: _confmat_metrics(sums.reshape(-1, k, k), metrics, keep)


def semantic_bootstrap(
    unit_confmats: np.ndarray | Tensor,
    metrics: Sequence[str] = SEMANTIC_METRICS,
    exclude_from_mean: Sequence[int] = (),
    n_resamples: int = 2000,
    seed: int = 0,
    method: Method = "percentile",
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> dict[str, Interval]:
    """Intervals of OA, mIoU, mF1, Kappa from per-unit confusion matrices (n×K×K, rows = target).

    Each resample's metrics come from the sum of its units' matrices (never an average of per-unit scores,
    which would be another metric), with the definitions of ``metrics_from_confusion_matrix`` (absent="nan":
    a class absent from a resample's sum is left out of its means; a resample where no kept class occurs is
    NaN). ``estimate`` is the metric of the full sum. ``counts`` (B×n, e.g. from :func:`resample_counts`)
    overrides ``n_resamples`` and ``seed``; pass the same counts to compare methods.
    """
    units = _semantic_units(unit_confmats)
    k = int(round(math.sqrt(units.shape[1])))
    statistic = _semantic_statistic(k, metrics, exclude_from_mean)
    return _bootstrap(units, statistic, _counts(counts, len(units), n_resamples, seed), method, level)


def paired_bootstrap(
    a_confmats: np.ndarray | Tensor,
    b_confmats: np.ndarray | Tensor,
    metric: str = "mIoU",
    counts: np.ndarray | None = None,
    *,
    exclude_from_mean: Sequence[int] = (),
    n_resamples: int = 2000,
    seed: int = 0,
    method: Method = "percentile",
    level: float = 0.95,
) -> PairedComparison:
    """Paired bootstrap of metric(a) − metric(b) for two methods' per-unit confusion matrices of the same
    units in the same order: both are resampled with the same counts, so the unit-to-unit variation they
    share cancels (Koehn 2004; Berg-Kirkpatrick et al. 2012)."""
    units_a, units_b = _semantic_units(a_confmats), _semantic_units(b_confmats)
    k = int(round(math.sqrt(units_a.shape[1])))
    statistic = _semantic_statistic(k, (metric,), exclude_from_mean)
    return _paired(units_a, units_b, statistic, metric, _counts(counts, len(units_a), n_resamples, seed),
                   method, level)


def _ratio_units(numerators: np.ndarray | Tensor, denominators: np.ndarray | Tensor) -> np.ndarray:
    num, den = _numpy(numerators).astype(np.float64), _numpy(denominators).astype(np.float64)
    if num.ndim != 2 or num.shape != den.shape:
        raise ValueError(f"numerators and denominators must both be n×K, got {num.shape} and {den.shape}")
    if (den < 0).any():
        raise ValueError("denominators must be non-negative")
    return np.concatenate([num, den], 1)


def ratio_bootstrap(
    numerators: np.ndarray | Tensor,
    denominators: np.ndarray | Tensor,
    exclude_from_mean: Sequence[int] = (),
    reduce: Literal["mean", "min"] = "mean",
    name: str = "ratio",
    n_resamples: int = 2000,
    seed: int = 0,
    method: Method = "percentile",
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> dict[str, Interval]:
    """Interval of a metric that is, per class, a ratio of per-unit sums, Σnum/Σden (n×K each), reduced by
    the mean (or min) over the classes not excluded and with Σden > 0 (others are NaN and left out).

    This is the form of mWFm (per unit and class: the sum of per-image WF and the number of images
    counted) and of IDGBR's boundary WF (two classes, ``reduce="min"``; IDGBR also drops a class scoring
    exactly 0). Sums are float64 sums of the given values: within rounding, not bit-identical, of the exact
    fixed-point means of the metric classes.
    """
    if reduce not in ("mean", "min"):
        raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    units = _ratio_units(numerators, denominators)
    k = units.shape[1] // 2
    keep = _keep_mask(k, exclude_from_mean)

    def statistic(sums: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(sums[:, k:] > 0, sums[:, :k] / sums[:, k:], np.nan)
        if reduce == "mean":
            return {name: _class_mean(per_class, keep)}
        lowest = np.where(keep & ~np.isnan(per_class), per_class, np.inf).min(1)
        return {name: np.where(np.isinf(lowest), np.nan, lowest)}

    return _bootstrap(units, statistic, _counts(counts, len(units), n_resamples, seed), method, level)


def _referring_units(
    intersections: np.ndarray | Tensor, unions: np.ndarray | Tensor, thresholds: Sequence[float], empty_iou: float
) -> np.ndarray:
    """Per expression (columns): 1, I, U, the two fixed-point limbs of its IoU (as ``ReferringMetrics``
    sums them) and one 0/1 column per threshold (IoU ≥ X in float64)."""
    i, u = _numpy(intersections).astype(np.int64), _numpy(unions).astype(np.int64)
    if i.ndim != 1 or i.shape != u.shape:
        raise ValueError(f"intersections and unions must both be 1-D of one length, got {i.shape}, {u.shape}")
    if (i < 0).any() or (i > u).any():
        raise ValueError("need 0 ≤ intersection ≤ union for every expression")
    if not 0.0 <= empty_iou <= 1.0:
        raise ValueError(f"empty_iou must lie in [0, 1], got {empty_iou}")
    iou = np.where(u > 0, i / np.maximum(u, 1), empty_iou)
    limbs = fixed_point_sum(iou[None]).numpy()  # the sum over one row: each expression's own two limbs
    hits = iou[:, None] >= np.asarray(thresholds, dtype=np.float64)[None, :]
    return np.column_stack([np.ones(len(i)), i, u, limbs, hits]).astype(np.float64)


def _referring_statistic(thresholds: Sequence[float]) -> Statistic:
    """oIoU = ΣI/ΣU (NaN while ΣU = 0), mIoU = exact fixed-point mean as ``ReferringMetrics``, Pr@X."""
    def statistic(sums: np.ndarray) -> dict[str, np.ndarray]:
        n = sums[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "mIoU": np.array(fixed_point_mean(torch.from_numpy(sums[:, 3:5].astype(np.int64)),
                                                  torch.from_numpy(n.astype(np.int64)))),
                "oIoU": np.where(sums[:, 2] > 0, sums[:, 1] / sums[:, 2], np.nan),
            }
            for j, t in enumerate(thresholds):
                out[f"Pr@{t:g}"] = sums[:, 5 + j] / n
        return out

    return statistic


def referring_bootstrap(
    intersections: np.ndarray | Tensor,
    unions: np.ndarray | Tensor,
    thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
    empty_iou: float = 0.0,
    n_resamples: int = 2000,
    seed: int = 0,
    method: Method = "percentile",
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> dict[str, Interval]:
    """Intervals of mIoU, oIoU and Pr@X from per-expression intersections and unions (pixel counts), with
    ``ReferringMetrics``' definitions (IoU = ``empty_iou`` where U = 0): each resample's values equal
    ``ReferringMetrics`` fed the drawn expressions, duplicates included."""
    thresholds = tuple(float(t) for t in thresholds)
    units = _referring_units(intersections, unions, thresholds, empty_iou)
    return _bootstrap(units, _referring_statistic(thresholds), _counts(counts, len(units), n_resamples, seed),
                      method, level)


def paired_referring_bootstrap(
    a_intersections: np.ndarray | Tensor,
    a_unions: np.ndarray | Tensor,
    b_intersections: np.ndarray | Tensor,
    b_unions: np.ndarray | Tensor,
    metric: str = "oIoU",
    counts: np.ndarray | None = None,
    *,
    thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
    empty_iou: float = 0.0,
    n_resamples: int = 2000,
    seed: int = 0,
    method: Method = "percentile",
    level: float = 0.95,
) -> PairedComparison:
    """:func:`paired_bootstrap` for two methods' per-expression I and U on the same expressions."""
    thresholds = tuple(float(t) for t in thresholds)
    units_a = _referring_units(a_intersections, a_unions, thresholds, empty_iou)
    units_b = _referring_units(b_intersections, b_unions, thresholds, empty_iou)
    return _paired(units_a, units_b, _referring_statistic(thresholds), metric,
                   _counts(counts, len(units_a), n_resamples, seed), method, level)


def rank_stability(
    samples: Mapping[str, np.ndarray], estimates: Mapping[str, float], higher_is_better: bool = True
) -> dict[str, dict[str, float]]:
    """How firmly each method holds its full-data rank, from its B resampled values of one metric.

    All methods' samples must come from the same resample counts (pass the same ``counts`` or seed and
    unit order). Rank 1 is best; a method's rank is 1 + the number of methods strictly better, so ties
    share the better rank. Resamples where any method is NaN are skipped. Per method: ``rank`` (on the
    estimates), ``stability`` (share of resamples with that same rank), ``mean_rank``, ``resamples`` used.
    """
    names = list(samples)
    if sorted(names) != sorted(estimates):
        raise ValueError(f"samples and estimates name different methods: {sorted(names)} vs {sorted(estimates)}")
    values = np.stack([np.asarray(samples[m], dtype=np.float64) for m in names])
    full = np.array([estimates[m] for m in names], dtype=np.float64)
    if not higher_is_better:
        values, full = -values, -full
    values = values[:, ~np.isnan(values).any(0)]
    ranks = 1 + (values[None, :, :] > values[:, None, :]).sum(1)  # [m, b]: 1 + #methods better than m in b
    full_rank = 1 + (full[None, :] > full[:, None]).sum(1)
    used = values.shape[1]
    return {
        m: {
            "rank": int(full_rank[i]),
            "stability": float((ranks[i] == full_rank[i]).mean()) if used else math.nan,
            "mean_rank": float(ranks[i].mean()) if used else math.nan,
            "resamples": used,
        }
        for i, m in enumerate(names)
    }
