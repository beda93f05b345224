"""The papers' numbers beside measured ones: the recorded table, the bench's rows and report, ``rsseg test``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rsseg import paper_numbers
from rsseg.bench.report import write_report
from rsseg.cli import main
from rsseg.data.core.prepare import SYNTHETIC_MARKER, is_synthetic_root, read_manifest
from rsseg.data.registry import DATAMODULES
from rsseg.paper_numbers import PaperEntry, load_paper_numbers, paper_columns, with_paper_columns

REPO = Path(__file__).resolve().parents[1]
REFERRING = {"oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"}
SEMANTIC = {"mIoU", "mF1", "OA", "Kappa", "mWFm", "boundary_WF"}


def _bench_methods() -> set[str]:
    """Every row name a bench plan can produce (its methods and idgbr(<refined method>))."""
    names = set()
    for plan_file in (REPO / "experiments/bench").glob("*.yaml"):
        plan = yaml.safe_load(plan_file.read_text())
        names |= set(plan["methods"]) | {f"{plan['refiner']}({m})" for m in plan.get("refine", [])}
    return names | {"segformer", "idgbr(segformer)"}  # segformer has configs, though no default bench runs it


def test_recorded_numbers_name_real_methods_datasets_and_metrics():
    """Every entry of experiments/paper_numbers.yaml must be a row the bench can produce, on a dataset rsseg
    has, with metric keys the rows really carry (a typo would never be compared with anything)."""
    table = load_paper_numbers(REPO / "experiments/paper_numbers.yaml")
    assert len(table) >= 20
    methods = _bench_methods()
    for (method, dataset), entry in table.items():
        assert method in methods, method
        assert dataset in DATAMODULES, dataset
        if dataset in ("refsegrs", "rrsisd"):
            assert set(entry.metrics) <= REFERRING, (method, dataset)
            continue
        data = DATAMODULES[dataset]
        classes = set(data.make_spec(data, entry.protocol or data.default_protocol).classes)
        per_class = {f"{kind}/{name}" for kind in ("IoU", "F1") for name in classes}
        assert set(entry.metrics) <= SEMANTIC | per_class, (method, dataset, set(entry.metrics) - SEMANTIC - per_class)


def test_spot_checks_against_the_papers():
    """A few numbers read off the tables by hand (DANet Tables 1-2, D2LS Table 6, SDCI Table 1)."""
    table = load_paper_numbers(REPO / "experiments/paper_numbers.yaml")
    assert table["danet", "refsegrs"].metrics["oIoU"] == 79.53
    assert table["lavt", "rrsisd"].metrics["Pr@0.9"] == 24.25
    assert table["d2ls", "vaihingen"].metrics == {"mF1": 91.9}
    assert table["sdci", "potsdam"].metrics["mIoU"] == 36.47


ENTRY = PaperEntry("d2ls", "potsdam", "D2LS Table 6", "", {"mF1": 94.7, "OA": 90.0}, "unetformer")


def test_paper_columns_are_fractions_and_differences_measured_minus_paper():
    columns = paper_columns(ENTRY, {"mF1": 0.9, "OA": float("nan")})
    assert columns == pytest.approx({"paper/mF1": 0.947, "paper/OA": 0.9, "diff/mF1": 0.9 - 0.947})
    assert "diff/OA" not in columns  # nothing measured, no difference


def test_rows_get_paper_columns_only_for_their_protocol_and_when_they_ran():
    table = {("d2ls", "potsdam"): ENTRY}
    row = {"method": "d2ls", "mF1": 0.95, "protocol": "unetformer"}
    assert with_paper_columns(row, "potsdam", table)["diff/mF1"] == pytest.approx(0.95 - 0.947)
    assert with_paper_columns({**row, "protocol": "mmseg"}, "potsdam", table) == {**row, "protocol": "mmseg"}
    assert with_paper_columns({**row, "failed": "config"}, "potsdam", table) == {**row, "failed": "config"}
    assert with_paper_columns(row, "vaihingen", table) == row


def test_report_shows_measured_paper_and_difference(tmp_path):
    row = with_paper_columns({"method": "d2ls", "mIoU": 0.8, "mF1": 0.95, "OA": 0.91, "Kappa": 0.88}, "potsdam",
                             {("d2ls", "potsdam"): ENTRY})
    write_report(tmp_path, [row], {"task": "semantic", "dataset": "potsdam", "profile": "paper", "device": "cpu"})
    md = (tmp_path / "results.md").read_text()
    assert "| d2ls | mF1 | 95.00 | 94.70 | +0.30 | D2LS Table 6 |" in md
    assert "| d2ls | OA | 91.00 | 90.00 | +1.00 | D2LS Table 6 |" in md
    saved = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert saved["paper/mF1"] == pytest.approx(0.947) and saved["diff/mF1"] == pytest.approx(0.003)
    assert "paper/mF1" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_synthetic_twins_are_recognised(tmp_path, tiny_potsdam):
    from rsseg.data.datasets.potsdam import prepare_potsdam
    from rsseg.data.synthetic import write_synthetic

    assert not is_synthetic_root(tiny_potsdam)  # written without the marker: reads as real data
    raw = tmp_path / "raw"
    write_synthetic("potsdam", raw, tiles={"2_11": (130, 120), "2_10": (120, 130), "2_13": (120, 120)})
    assert (raw / SYNTHETIC_MARKER).is_file() and is_synthetic_root(raw)
    prepare_potsdam(raw, tmp_path / "prepared", patch_size=128, progress=False)
    assert read_manifest(tmp_path / "prepared")["synthetic_source"] is True
    assert is_synthetic_root(tmp_path / "prepared")


def test_malformed_entries_are_named(tmp_path):
    bad = tmp_path / "numbers.yaml"
    bad.write_text("d2ls:\n  potsdam:\n    source: x\n    metrics: {mF1: 947}\n")
    with pytest.raises(ValueError, match=r"d2ls/potsdam: metrics must be numbers in %"):
        load_paper_numbers(bad)
    bad.write_text("d2ls:\n  potsdam:\n    source: x\n    metric: {mF1: 94.7}\n")
    with pytest.raises(ValueError, match="d2ls/potsdam"):
        load_paper_numbers(bad)


def test_rsseg_test_prints_and_logs_the_paper_column(tiny_potsdam, tmp_path, monkeypatch, capsys):
    """On real data (no synthetic marker) ``rsseg test`` prints each paper metric beside the measured one; the
    same run on a synthetic twin prints nothing of the kind."""
    unet = [arg for name in ("unet/potsdam", "unet/smoke", "smoke/potsdam")
            for arg in ("--config", str(REPO / f"experiments/{name}.yaml"))]
    tiny = '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}'
    args = [*unet, "--model.init_args.net.init_args.arch_kwargs", tiny,
            "--data.init_args.root", str(tiny_potsdam), "--data.init_args.crop_size", "64",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"]
    main(["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    entry = PaperEntry("unet", "potsdam", "Made-up Table 9", "", {"mIoU": 50.0, "OA": 60.0}, "unetformer")
    monkeypatch.setattr(paper_numbers, "load_paper_numbers", lambda path=None: {("unet", "potsdam"): entry})
    capsys.readouterr()
    main(["test", *args, "--ckpt_path", str(checkpoint)])
    lines = [line for line in capsys.readouterr().out.splitlines() if "Made-up Table 9" in line]
    assert [line.split("|")[1:3] for line in lines] == [[" unet ", " mIoU "], [" unet ", " OA "]]
    measured, paper = float(lines[0].split("|")[3]), float(lines[0].split("|")[4])
    assert paper == 50.0 and float(lines[0].split("|")[5]) == pytest.approx(measured - paper, abs=0.011)
    (tiny_potsdam / SYNTHETIC_MARKER).write_text("{}")
    try:
        main(["test", *args, "--ckpt_path", str(checkpoint)])
    finally:
        (tiny_potsdam / SYNTHETIC_MARKER).unlink()
    assert "Made-up Table 9" not in capsys.readouterr().out
