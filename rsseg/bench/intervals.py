"""Bootstrap intervals, paired comparisons and rank stability for a bench's rows (docs/metrics.md §6).

Each evaluated method leaves ``per_unit_<split>.npz`` in its run folder (its per-unit confusion matrices, or
per-expression I and U; :class:`rsseg.callbacks.UnitMatrixWriter`); its row names the file under
``per_unit``. Every row is resampled with the same resample counts (the same units, in the same order), so
the intervals of different methods and their paired differences come from the same 2,000 test sets.
Reference rows (majority class, all target) have no units and get no interval.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from rsseg.metrics.bootstrap import (
    paired_bootstrap,
    paired_referring_bootstrap,
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


def unit_record(row: dict) -> dict[str, np.ndarray] | None:
    """The arrays of the row's ``per_unit`` file, or None (no file: a reference or failed row)."""
    path = row.get("per_unit")
    if not path or not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as record:
        return {key: record[key] for key in record.files}


def add_intervals(rows: list[dict], meta: dict) -> None:
    """Give every row with units ``<metric>_lo``/``_hi`` and ``meta`` its ``intervals``, ``pairwise`` and
    ``rank_stability``; rows whose units differ from the first such row's are left without (and logged)."""
    task = meta["task"]
    records = {row["method"]: record for row in rows if (record := unit_record(row)) is not None}
    if not records:
        return
    first = next(iter(records.values()))
    names = first["names"]
    same = {m: r for m, r in records.items() if np.array_equal(r["names"], names)}
    for method in records.keys() - same.keys():
        log.warning("%s: its evaluation units differ from the other methods'; no interval", method)
    if len(names) < 2:
        return
    counts = resample_counts(len(names), N_RESAMPLES, SEED)
    intervals = {m: _intervals(task, r, counts) for m, r in same.items()}
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
    meta["pairwise"] = {metric: _pairwise(task, same, metric, counts) for metric in metrics}
    meta["rank_stability"] = {
        metric: rank_stability({m: i[metric].samples for m, i in intervals.items()},
                               {m: i[metric].estimate for m, i in intervals.items()})
        for metric in metrics if len(intervals) > 1
    }


def _intervals(task: str, record: dict, counts: np.ndarray) -> dict:
    if task == "referring":
        return referring_bootstrap(record["intersections"], record["unions"],
                                   empty_iou=float(record["empty_iou"]), counts=counts, level=LEVEL)
    return semantic_bootstrap(record["confmats"], METRICS[task], tuple(record["exclude_from_mean"].tolist()),
                              counts=counts, level=LEVEL)


def _pairwise(task: str, records: dict[str, dict], metric: str, counts: np.ndarray) -> list[dict]:
    comparisons = []
    for a, b in itertools.combinations(records, 2):
        ra, rb = records[a], records[b]
        if task == "referring":
            pair = paired_referring_bootstrap(ra["intersections"], ra["unions"], rb["intersections"], rb["unions"],
                                              metric, counts, empty_iou=float(ra["empty_iou"]), level=LEVEL)
        else:
            pair = paired_bootstrap(ra["confmats"], rb["confmats"], metric, counts,
                                    exclude_from_mean=tuple(ra["exclude_from_mean"].tolist()), level=LEVEL)
        difference = pair.difference
        comparisons.append({"a": a, "b": b, "difference": difference.estimate, "low": difference.low,
                            "high": difference.high, "flip_rate": pair.flip_rate,
                            "distinguishable": pair.distinguishable})
    return comparisons
