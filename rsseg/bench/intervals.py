"""Bootstrap intervals, paired comparisons and rank stability for a bench's rows (docs/metrics.md §6).

Each evaluated method leaves ``per_unit_<split>.npz`` in its run folder (its per-unit confusion matrices, or
per-expression I and U; :class:`rsseg.callbacks.UnitMatrixWriter`); its row names the file (one per training
seed) under ``per_unit``. Every row is resampled with the same resample counts (the same units, in the same order), so
the intervals of different methods and their paired differences come from the same 2,000 test sets.
Reference rows (majority class, all target) have no units and get no interval.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from rsseg.metrics.bootstrap import (
    Interval,
    mean_interval,
    paired_from_intervals,
    rank_stability,
    referring_bootstrap,
    resample_counts,
    semantic_bootstrap,
)

log = logging.getLogger(__name__)

N_RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
METRICS = {"semantic": ("mIoU", "mF1", "OA", "Kappa"), "referring": ("oIoU", "mIoU")}
UNITS = {"potsdam": "tiles", "vaihingen": "tiles", "uavid": "frames", "refsegrs": "expressions",
         "rrsisd": "expressions"}  # the rest are images (LoveDA, CHN6-CUG)


def unit_records(row: dict) -> list[dict[str, np.ndarray]]:
    """The arrays of the row's ``per_unit`` file(s), one per training seed; none for a reference or failed
    row (or a run that kept no per-unit counts)."""
    paths = row.get("per_unit") or []
    paths = [paths] if isinstance(paths, str) else paths
    if not paths or not all(Path(p).is_file() for p in paths):
        return []
    records = []
    for path in paths:
        with np.load(path, allow_pickle=False) as record:
            records.append({key: record[key] for key in record.files})
    return records


def add_intervals(rows: list[dict], meta: dict) -> None:
    """Give every row with units ``<metric>_lo``/``_hi`` and ``meta`` its ``intervals``, ``pairwise`` and
    ``rank_stability``. A row of several seeds gets the interval of its seed-averaged metric (each resample
    averaged over the seeds); rows whose units differ from the first such row's are left without (logged)."""
    task = meta["task"]
    records = {row["method"]: found for row in rows if (found := unit_records(row))}
    if not records:
        return
    names = next(iter(records.values()))[0]["names"]
    same = {m: r for m, r in records.items() if all(np.array_equal(x["names"], names) for x in r)}
    for method in records.keys() - same.keys():
        log.warning("%s: its evaluation units differ from the other methods'; no interval", method)
    if len(names) < 2:
        return
    counts = resample_counts(len(names), N_RESAMPLES, SEED)
    intervals = {m: _seed_mean([_intervals(task, record, counts) for record in r]) for m, r in same.items()}
    for row in rows:
        for metric, interval in intervals.get(row["method"], {}).items():
            row[f"{metric}_lo"], row[f"{metric}_hi"] = interval.low, interval.high
    meta["intervals"] = {
        "unit": UNITS.get(meta["dataset"], "images"), "n_units": len(names), "n_resamples": N_RESAMPLES,
        "seed": SEED, "level": LEVEL, "method": "percentile",
        "resampled": "evaluation units drawn with replacement, each metric recomputed from the drawn units' "
                     + ("summed intersections and unions" if task == "referring" else "summed confusion matrices"),
    }
    metrics = METRICS[task]
    meta["pairwise"] = {metric: [_pair(metric, a, b, intervals) for a, b in itertools.combinations(intervals, 2)]
                        for metric in metrics}
    meta["rank_stability"] = {
        metric: rank_stability({m: i[metric].samples for m, i in intervals.items()},
                               {m: i[metric].estimate for m, i in intervals.items()})
        for metric in metrics if len(intervals) > 1
    }


def _intervals(task: str, record: dict, counts: np.ndarray) -> dict[str, Interval]:
    if task == "referring":
        return referring_bootstrap(record["intersections"], record["unions"],
                                   empty_iou=float(record["empty_iou"]), counts=counts, level=LEVEL)
    return semantic_bootstrap(record["confmats"], METRICS[task], tuple(record["exclude_from_mean"].tolist()),
                              counts=counts, level=LEVEL)


def _seed_mean(per_seed: list[dict[str, Interval]]) -> dict[str, Interval]:
    """One run's intervals as they are; several seeds' as the interval of their mean (same resamples)."""
    if len(per_seed) == 1:
        return per_seed[0]
    return {metric: mean_interval([run[metric] for run in per_seed]) for metric in per_seed[0]}


def _pair(metric: str, a: str, b: str, intervals: dict[str, dict[str, Interval]]) -> dict:
    pair = paired_from_intervals(metric, intervals[a][metric], intervals[b][metric])
    difference = pair.difference
    return {"a": a, "b": b, "difference": difference.estimate, "low": difference.low, "high": difference.high,
            "flip_rate": pair.flip_rate, "distinguishable": pair.distinguishable}
