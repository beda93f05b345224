"""The bench's stage clock: stages add up, a failure is marked, and the next run is told the last one's times."""

from __future__ import annotations

import json
import time

import pytest

from rsseg.bench.stages import StageClock, duration, previous_stage_times, stage, stage_lines


def test_stages_are_timed_repeated_names_add_up_and_failures_are_marked(capsys):
    clock = StageClock(previous={"fit": 125.0})
    with clock.running():
        with stage("fit"):
            time.sleep(0.05)
        with stage("tables"):
            time.sleep(0.02)
        with stage("tables"):
            time.sleep(0.02)
        with pytest.raises(ValueError), stage("test"):
            raise ValueError("broken")
    with stage("outside"):  # no bench running: nothing is measured
        pass
    rows = {row["stage"]: row for row in clock.summary()["rows"]}
    assert list(rows) == ["fit", "tables", "test"]
    assert rows["fit"]["wall_s"] >= 0.05 and rows["tables"]["wall_s"] >= 0.04
    assert rows["test"]["status"] == "failed" and rows["fit"]["status"] == "done"
    printed = capsys.readouterr().out
    assert "--> fit: started (last run: 2 min 05 s)" in printed and "--> tables: started\n" in printed
    summary = clock.summary()
    assert summary["wall_s"] >= sum(r["wall_s"] for r in summary["rows"])
    table = "\n".join(stage_lines(summary))
    assert "| test (failed) |" in table and "| **total** |" in table


def test_the_estimates_come_from_the_newest_complete_run_of_the_profile(tmp_path):
    def run(name, profile, complete, fit):
        folder = tmp_path / name
        folder.mkdir()
        stages = {"rows": [{"stage": "unet: fit", "wall_s": fit, "cpu_s": 1.0, "status": "done"}], "wall_s": fit,
                  "cpu_s": 1.0}
        (folder / "results.json").write_text(json.dumps({"meta": {"profile": profile, "complete": complete,
                                                                  "stages": stages}}))

    assert previous_stage_times(tmp_path, "smoke") == {}
    run("20261201-100000", "smoke", True, 100.0)
    run("20261202-100000", "smoke", True, 90.0)
    run("20261203-100000", "paper", True, 5000.0)  # another profile
    run("20261204-100000", "smoke", False, 10.0)  # interrupted
    assert previous_stage_times(tmp_path, "smoke") == {"unet: fit": 90.0}
    assert previous_stage_times(tmp_path, "paper") == {"unet: fit": 5000.0}


def test_durations_read_naturally():
    assert [duration(s) for s in (3.14, 42.4, 65, 3599.6)] == ["3.1 s", "42 s", "1 min 05 s", "60 min 00 s"]
