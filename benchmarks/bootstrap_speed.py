"""Speed of the bootstrap over evaluation units (rsseg/metrics/bootstrap.py); prints one JSON list of records.

Cases: B resamples of 14 units × 6 classes (an ISPRS test set of tiles) and of 2,000 units × 7 classes
(a LoveDA-sized set of images), percentile and BCa, for the semantic metrics (OA, mIoU, mF1, Kappa) and a
paired comparison; and 2,000 referring expressions (oIoU, mIoU, Pr@X). Each record gives the median and
minimum of ``--repeats`` calls, including the draw of the resample counts. Inputs are random confusion
matrices in which the last class occurs in a quarter of the units only, so that resamples differ in their
set of present classes (``resamples_without_rare_class``) and the means take more than one grouping.

Usage: python benchmarks/bootstrap_speed.py [--resamples 2000] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from speed_common import Records, bench_environment

from rsseg.metrics.bootstrap import paired_bootstrap, referring_bootstrap, resample_counts, semantic_bootstrap


def unit_confmats(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n×K×K counts of 512² units, mostly on the diagonal, with the last class in a quarter of the units."""
    cm = rng.integers(0, 2000, size=(n, k, k))
    cm[:, np.arange(k), np.arange(k)] = rng.integers(20_000, 60_000, size=(n, k))
    rare = rng.random(n) < 0.75
    cm[rare, -1, :] = 0
    cm[rare, :, -1] = 0
    return cm


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    records = Records(bench_environment("cpu"))
    b = args.resamples
    for n, k in ((14, 6), (2000, 7)):
        cm = unit_confmats(rng, n, k)
        other = unit_confmats(rng, n, k)
        has_rare = cm[:, -1].sum(1) + cm[:, :, -1].sum(1) > 0
        without_rare = int((resample_counts(n, b, seed=0)[:, has_rare].sum(1) == 0).sum())
        for method in ("percentile", "bca"):
            result = semantic_bootstrap(cm, n_resamples=b, method=method)
            records.add({"measurement": "semantic_bootstrap", "units": n, "classes": k, "resamples": b,
                         "method": method, "metrics": list(result),
                         "resamples_without_rare_class": without_rare,
                         "nan_resamples_mIoU": result["mIoU"].nan_resamples,
                         **timed(lambda cm=cm, method=method: semantic_bootstrap(cm, n_resamples=b, method=method),
                                 args.repeats)})
        records.add({"measurement": "paired_bootstrap", "units": n, "classes": k, "resamples": b,
                     "method": "percentile", "metric": "mIoU",
                     **timed(lambda cm=cm, other=other: paired_bootstrap(cm, other, "mIoU", n_resamples=b),
                             args.repeats)})
    unions = rng.integers(1, 200_000, 2000)
    inter = (unions * rng.random(2000)).astype(np.int64)
    records.add({"measurement": "referring_bootstrap", "units": 2000, "resamples": b, "method": "percentile",
                 **timed(lambda: referring_bootstrap(inter, unions, n_resamples=b), args.repeats)})
    records.finish(args.out)


if __name__ == "__main__":
    main()
