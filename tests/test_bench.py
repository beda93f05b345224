"""`rsseg bench` end to end on a tiny synthetic Potsdam: data resolution, runs, report files."""

from __future__ import annotations

import csv
import functools
import json

import pytest

from rsseg.bench import sources
from rsseg.bench.plan import load_plan
from rsseg.bench.runner import SYNTHETIC_BANNER, wandb_mode
from rsseg.cli import main
from rsseg.data.synthetic import write_synthetic_potsdam
from tests.conftest import TINY_TILES

TINY_RUN = [
    "--data.init_args.crop_size", "64", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
    "--trainer.max_steps", "2", "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
    "--model.init_args.arch_kwargs", '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}',
]


def test_bench_on_synthetic_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/potsdam here, so the bench must fall back to synthetic data
    monkeypatch.delenv("DATA_ROOT", raising=False)
    monkeypatch.setitem(sources.SYNTHESIZERS, "potsdam", functools.partial(write_synthetic_potsdam, tiles=TINY_TILES))
    code = main(["bench", "potsdam", "--methods", "unet", "--out", "out", "--cache", "cache", "--", *TINY_RUN])
    assert code == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC DATA" in printed
    [run] = list((tmp_path / "out" / "potsdam").iterdir())
    payload = json.loads((run / "results.json").read_text())
    assert payload["meta"]["synthetic"] is True
    methods = [row["method"] for row in payload["rows"]]
    assert methods == ["majority class", "unet"]
    unet = payload["rows"][1]
    for key in ("mIoU", "mF1", "OA", "Kappa", "IoU/building", "F1/car", "params", "train_time_s",
                "inference_img_per_s"):
        assert key in unet, key
    assert unet["params"] > 0 and unet["inference_img_per_s"] > 0
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert [r["method"] for r in rows] == methods
    table = (run / "results.md").read_text()
    assert "Synthetic data" in table and "| unet |" in table
    assert (run / "comparison.png").stat().st_size > 0
    # The synthetic raw data and its preparation are cached and reused by the next run.
    assert (tmp_path / "cache" / "synthetic" / "potsdam" / "2_Ortho_RGB").is_dir()
    again = sources.resolve_prepared_root("potsdam", None, tmp_path / "cache", {"patch_size": 512})
    assert again.synthetic and again.prepared == tmp_path / "cache/prepared/potsdam/synthetic-patch_size512"


def test_majority_row_is_the_constant_predictor(tiny_potsdam, tmp_path):
    from rsseg.bench.report import majority_class_row
    from rsseg.data.potsdam import PotsdamDataModule
    from rsseg.metrics import SegmentationMetrics

    row = majority_class_row("potsdam", tiny_potsdam)
    data = PotsdamDataModule(tiny_potsdam, batch_size=2, num_workers=0, pin_memory=False)
    data.setup("test")
    metrics = SegmentationMetrics(6, exclude_from_mean=data.spec.exclude_from_mean, class_names=data.spec.classes)
    majority = row["predicted_class"]
    for sample in data.test_dataset:
        metrics.update(sample["mask"].new_full(sample["mask"].shape, majority)[None], sample["mask"][None])
    expected = metrics.compute()
    assert row["mIoU"] == pytest.approx(float(expected["mIoU"]))
    assert row["OA"] == pytest.approx(float(expected["OA"]))


def test_plan_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_plan("potsdam", "nope")
    with pytest.raises(ValueError, match="not in this plan"):
        load_plan("potsdam", "smoke", ["unknown-method"])


def test_smoke_profile_layers_method_and_dataset_overrides(tmp_path):
    plan = load_plan("potsdam", "smoke")
    assert "d2ls" in plan.configs
    args = plan.config_args("d2ls")
    assert [a.split("experiments/")[-1] for a in args[1::2]] == [
        "d2ls/potsdam.yaml", "d2ls/smoke.yaml", "smoke/potsdam.yaml"
    ]
    (tmp_path / "bench").mkdir()
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "potsdam.yaml").write_text("{}")
    (tmp_path / "bench" / "potsdam.yaml").write_text(
        "methods: [unet]\nprofiles:\n  smoke: {method_config: smoke.yaml}\n"
    )
    with pytest.raises(ValueError, match="needs .*unet/smoke.yaml"):
        load_plan("potsdam", "smoke", experiments=tmp_path)


def test_wandb_is_offline_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    assert "SYNTHETIC" in SYNTHETIC_BANNER
