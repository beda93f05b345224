"""``make bench`` (smoke profile) wall time per dataset from a fresh clone, against the 15-minute budget.

Clones this checkout's committed HEAD into a temporary folder, runs ``make install`` there, then for each
dataset, one at a time and from an empty data cache (``.cache/rsseg`` removed), ``make bench DATASET=<d>``.
Each record holds the command's wall time, the bench's own stage table (``results.json`` → ``meta.stages``)
and whether it kept the budget. Run it with nothing else on the machine: the times are what a new user waits.
``make install`` reuses pip's download cache, as a second install on the same machine would.

Usage: python benchmarks/smoke_budget.py [--datasets potsdam,vaihingen] [--budget-min 15] [--keep DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed_common import Records, bench_environment

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("potsdam", "vaihingen", "chn6cug", "loveda", "uavid", "refsegrs", "rrsisd")


def timed_make(clone: Path, target: list[str], log: Path) -> tuple[int, float]:
    """Exit status and wall seconds of ``make <target>`` in ``clone``, its output in ``log``."""
    started = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.run(["make", *target], cwd=clone, stdout=out, stderr=subprocess.STDOUT).returncode
    return status, time.perf_counter() - started


def stage_table(clone: Path, dataset: str) -> dict | None:
    """The newest bench run's ``meta.stages`` for ``dataset`` (None when the run wrote none)."""
    runs = sorted((clone / "results" / "bench").glob(f"{dataset}/*/results.json"))
    return json.loads(runs[-1].read_text())["meta"].get("stages") if runs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--budget-min", type=float, default=15.0)
    parser.add_argument("--keep", help="clone here and keep it (default: a temporary folder, removed)")
    parser.add_argument("--out")
    args = parser.parse_args()
    records = Records(bench_environment("cpu"))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rsseg-budget-"))
    clone = work / "rsseg"
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        status, seconds = timed_make(clone, ["install"], work / "install.log")
        records.add({"benchmark": "smoke_budget", "step": "make install", "rc": status, "wall_s": round(seconds, 1)})
        if status:
            sys.exit(f"make install failed; see {work / 'install.log'}")
        for dataset in args.datasets.split(","):
            shutil.rmtree(clone / ".cache" / "rsseg", ignore_errors=True)
            status, seconds = timed_make(clone, ["bench", f"DATASET={dataset}"], work / f"bench_{dataset}.log")
            stages = stage_table(clone, dataset)
            records.add({"benchmark": "smoke_budget", "step": "make bench", "dataset": dataset, "profile": "smoke",
                         "rc": status, "wall_s": round(seconds, 1), "budget_s": args.budget_min * 60,
                         "within_budget": status == 0 and seconds <= args.budget_min * 60, "stages": stages})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    records.finish(args.out)


if __name__ == "__main__":
    main()
