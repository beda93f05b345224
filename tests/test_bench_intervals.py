"""The bench's intervals, paired differences and rank stability, from the per-unit files its runs leave."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from rsseg.bench.intervals import N_RESAMPLES, SEED, add_intervals
from rsseg.bench.report import write_report
from rsseg.callbacks import write_unit_record
from rsseg.metrics.bootstrap import paired_bootstrap, resample_counts, semantic_bootstrap


def _confmats(seed: int, n: int = 6, k: int = 3, skill: float = 0.8) -> np.ndarray:
    """n units of k classes, each a confusion matrix whose diagonal holds about ``skill`` of the pixels."""
    rng = np.random.default_rng(seed)
    mats = rng.integers(0, 30, (n, k, k))
    mats[:, np.arange(k), np.arange(k)] += rng.integers(int(300 * skill), int(400 * skill), (n, k))
    return mats


def _row(tmp_path, method: str, confmats: np.ndarray, names=None) -> dict:
    names = names or [f"tile{i}" for i in range(len(confmats))]
    path = tmp_path / f"{method}.npz"
    write_unit_record(path, {"names": np.array(names, dtype=str), "confmats": confmats,
                             "class_names": np.array(["a", "b", "c"]), "ignore_index": np.array(255),
                             "exclude_from_mean": np.array([2], dtype=np.int64)})
    estimates = semantic_bootstrap(confmats, exclude_from_mean=(2,), n_resamples=2)
    return {"method": method, "per_unit": str(path), **{m: i.estimate for m, i in estimates.items()}, "params": 1}


META = {"task": "semantic", "dataset": "potsdam", "profile": "paper", "device": "cpu"}


def test_rows_get_the_intervals_of_the_same_resamples_and_pairwise_differences(tmp_path):
    good, weak = _confmats(0), _confmats(1, skill=0.3)
    rows = [{"method": "majority class", "mIoU": 0.1, "params": 0},
            _row(tmp_path, "good", good), _row(tmp_path, "weak", weak), _row(tmp_path, "twin", good.copy())]
    meta = dict(META)
    add_intervals(rows, meta)
    counts = resample_counts(6, N_RESAMPLES, SEED)
    expected = semantic_bootstrap(good, exclude_from_mean=(2,), counts=counts)
    assert (rows[1]["mIoU_lo"], rows[1]["mIoU_hi"]) == (expected["mIoU"].low, expected["mIoU"].high)
    assert rows[1]["Kappa_lo"] == expected["Kappa"].low
    assert "mIoU_lo" not in rows[0]  # a reference row has no units
    assert meta["intervals"]["n_units"] == 6 and meta["intervals"]["unit"] == "tiles"
    pairs = {(p["a"], p["b"]): p for p in meta["pairwise"]["mIoU"]}
    assert set(pairs) == {("good", "weak"), ("good", "twin"), ("weak", "twin")}
    paired = paired_bootstrap(good, weak, "mIoU", counts, exclude_from_mean=(2,))
    assert pairs["good", "weak"]["difference"] == pytest.approx(rows[1]["mIoU"] - rows[2]["mIoU"])
    assert (pairs["good", "weak"]["low"], pairs["good", "weak"]["high"]) == (paired.difference.low,
                                                                             paired.difference.high)
    assert pairs["good", "weak"]["distinguishable"] and pairs["good", "weak"]["flip_rate"] == 0
    twin = pairs["good", "twin"]  # the same predictions: a difference of exactly 0, never distinguishable
    assert (twin["difference"], twin["low"], twin["high"], twin["flip_rate"], twin["distinguishable"]) == (
        0, 0, 0, 0, False)
    assert meta["rank_stability"]["mIoU"]["weak"]["rank"] == 3 and meta["rank_stability"]["mIoU"]["weak"][
        "stability"] == 1.0

    write_report(tmp_path, rows, meta)
    md = (tmp_path / "results.md").read_text()
    low, high = 100 * rows[1]["mIoU_lo"], 100 * rows[1]["mIoU_hi"]
    assert f"| good | {100 * rows[1]['mIoU']:.2f} [{low:.1f}, {high:.1f}]" in md
    assert "| good − twin | +0.00 | [+0.00, +0.00] | 0.000 | not distinguishable on this test set |" in md
    assert "over the 6 evaluation tiles" in md


def test_a_method_with_other_units_gets_no_interval(tmp_path, caplog):
    rows = [_row(tmp_path, "a", _confmats(0)), _row(tmp_path, "b", _confmats(1), names=[f"x{i}" for i in range(6)])]
    meta = dict(META)
    with caplog.at_level(logging.WARNING):
        add_intervals(rows, meta)
    assert "mIoU_lo" in rows[0] and "mIoU_lo" not in rows[1]
    assert "b: its evaluation units differ" in caplog.text
    assert meta["pairwise"]["mIoU"] == []


def test_no_units_no_intervals(tmp_path):
    rows, meta = [{"method": "unet", "mIoU": 0.5, "per_unit": ""}], dict(META)
    add_intervals(rows, meta)
    assert "intervals" not in meta and "mIoU_lo" not in rows[0]


def test_seeds_give_mean_std_and_the_interval_of_the_seed_mean(tmp_path):
    """Two seeds of one method: the row's metric is their mean, ``_seed_std`` their sample std, and its
    interval that of the per-resample seed mean (mean_interval), shown as value ± std [low, high]."""
    from rsseg.bench.runner import seed_row
    from rsseg.metrics.bootstrap import mean_interval

    runs = [{**_row(tmp_path, f"s{seed}", _confmats(seed)), "method": "unet", "seed": seed, "checkpoint": f"c{seed}",
             "train_time_s": 1.0 + seed, "params": 7} for seed in (0, 1)]
    row = seed_row(runs)
    assert row["mIoU"] == pytest.approx((runs[0]["mIoU"] + runs[1]["mIoU"]) / 2)
    assert row["mIoU_seed_std"] == pytest.approx(abs(runs[0]["mIoU"] - runs[1]["mIoU"]) / 2 ** 0.5)
    assert row["seed"] == [0, 1] and row["per_unit"] == [runs[0]["per_unit"], runs[1]["per_unit"]]
    assert [r["seed"] for r in row["seed_runs"]] == [0, 1] and row["params"] == 7
    assert seed_row([runs[0], {"method": "unet", "failed": "boom"}]) == {"method": "unet", "failed": "boom"}

    meta = dict(META)
    add_intervals([row], meta)
    counts = resample_counts(6, N_RESAMPLES, SEED)
    expected = mean_interval([semantic_bootstrap(_confmats(s), exclude_from_mean=(2,), counts=counts)["mIoU"]
                              for s in (0, 1)])
    assert (row["mIoU_lo"], row["mIoU_hi"]) == (expected.low, expected.high)
    write_report(tmp_path, [row], meta)
    md = (tmp_path / "results.md").read_text()
    assert (f"| unet | {100 * row['mIoU']:.2f} ± {100 * row['mIoU_seed_std']:.2f} "
            f"[{100 * expected.low:.1f}, {100 * expected.high:.1f}]") in md
    assert "over each method's 2 training seeds" in md


def test_the_command_line_passes_seeds_to_the_bench(monkeypatch):
    from rsseg import cli
    from rsseg.bench import runner

    seen = []
    monkeypatch.setattr(runner, "run_bench", lambda *a, **k: seen.append(k["seeds"]))
    assert cli.main(["bench", "refsegrs", "--seeds", "3,1"]) == 0
    assert cli.main(["bench", "refsegrs", "--seed-count", "2"]) == 0
    assert cli.main(["bench", "refsegrs"]) == 0
    assert seen == [[3, 1], [0, 1], None]
    for bad in (["--seeds", "1,1"], ["--seeds", "a"], ["--seed-count", "0"], ["--seeds", "1", "--seed-count", "2"]):
        with pytest.raises(SystemExit):
            cli.main(["bench", "refsegrs", *bad])
