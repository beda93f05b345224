"""The bench's stage clock: stages add up, a failure is marked, and the next run is told the last one's times."""

from __future__ import annotations

import json
import time
from pathlib import Path

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


def test_the_refiners_stages_are_fitted_once_per_arguments_data_and_code(tmp_path, monkeypatch):
    from rsseg.bench import refine
    from rsseg.bench.plan import load_plan
    from rsseg.bench.runs import Tracking

    fitted = []

    def fake_fit_stage(name, args, run_dir, tracking):
        fitted.append(name)
        if name.endswith("label-embedding"):
            path = run_dir / name / "last.ckpt"
            path.parent.mkdir(parents=True)
            path.write_text(f"weights of {len(fitted)}")
            return str(path)
        export = Path(args[args.index("--model.init_args.export") + 1])
        export.mkdir(parents=True)
        (export / "config.json").write_text("{}")
        return ""

    monkeypatch.setattr(refine, "fit_stage", fake_fit_stage)
    plan = load_plan("potsdam", "smoke")
    root = tmp_path / "data"
    root.mkdir()
    (root / "manifest.json").write_text('{"patches": 1}')

    def shared(run: str, stage_args=()):
        stages = refine.RefinerStages(plan, root, tmp_path / run, Tracking("g"), stage_args=list(stage_args),
                                      cache=tmp_path / "cache")
        args = stages.shared_args("unetformer")
        return args[args.index("--model.init_args.label_embedding") + 1], args[-1]

    embedding, vae = shared("run1")
    assert fitted == ["idgbr-label-embedding", "idgbr-vae"]
    assert Path(embedding).read_text() == "weights of 1" and (Path(vae) / "config.json").is_file()
    assert str(tmp_path / "cache" / "refiner_stages") in embedding and str(tmp_path / "run1") not in vae
    assert shared("run2") == (embedding, vae) and len(fitted) == 2  # reused: nothing fitted again
    other = shared("run3", ["--trainer.max_steps", "7"])  # other arguments: fitted again, kept apart
    assert len(fitted) == 4 and other[0] != embedding and Path(embedding).read_text() == "weights of 1"
    (root / "manifest.json").write_text('{"patches": 2}')  # other data
    shared("run4")
    assert len(fitted) == 6
