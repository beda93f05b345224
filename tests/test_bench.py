"""`rsseg bench` end to end on tiny synthetic Potsdam and RefSegRS: data resolution, runs, report files."""

from __future__ import annotations

import csv
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from rsseg.bench import sources
from rsseg.bench.plan import PlanError, load_plan
from rsseg.bench.report import MEMORY_NOTE, REFERRING_HEADLINE, headline_metrics, metric_columns, write_report
from rsseg.bench.runner import SYNTHETIC_BANNER, run_bench
from rsseg.bench.runs import Tracking
from rsseg.cli import main
from rsseg.data.synthetic import write_synthetic_potsdam, write_synthetic_refsegrs
from rsseg.manifest import data_checksum, git_revision
from rsseg.tracking import wandb_mode
from tests.conftest import TINY_TILES
from tests.wandb_offline import offline_runs

TINY_RUN = [
    "--data.init_args.crop_size", "64", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
    "--trainer.max_steps", "2", "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
    "--model.init_args.net.init_args.arch_kwargs", '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}',
]

# The refiner wraps the datamodule, so its arguments address the inner one.
TINY_REFINER = ("--trainer.max_steps 2 --data.init_args.data.init_args.num_workers 0 "
                "--model.init_args.inference_steps 2 --trainer.accelerator cpu")


def test_bench_on_synthetic_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/potsdam here, so the bench must fall back to synthetic data
    monkeypatch.delenv("DATA_ROOT", raising=False)
    monkeypatch.setitem(sources.SYNTHESIZERS, "potsdam", functools.partial(write_synthetic_potsdam, tiles=TINY_TILES))
    monkeypatch.setenv("WANDB_MODE", "offline")  # real (offline) W&B runs, as users get them
    code = main(["bench", "potsdam", "--methods", "unet", "--out", "out", "--cache", "cache",
                 "--refiner-args", TINY_REFINER, "--refiner-stage-args", "--trainer.max_steps 4", "--", *TINY_RUN])
    assert code == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC DATA" in printed
    [run] = list((tmp_path / "out" / "potsdam").iterdir())
    payload = json.loads((run / "results.json").read_text())
    assert payload["meta"]["synthetic"] is True
    methods = [row["method"] for row in payload["rows"]]
    assert methods == ["majority class", "unet", "idgbr(unet)"]
    unet, refined = payload["rows"][1:]
    for row in (unet, refined):
        for key in ("mIoU", "mF1", "OA", "Kappa", "mWFm", "boundary_WF", "IoU/building", "F1/car", "params",
                    "train_time_s", "inference_img_per_s"):
            assert key in row, key
        assert row["params"] > 0 and row["inference_img_per_s"] > 0
    assert refined["refines"] == "unet"
    # the refiner trained and was scored on unet's maps of every patch (unetformer protocol: with val)
    coarse = json.loads((run / "coarse" / "unet" / "coarse.json").read_text())
    prepared = tmp_path / "cache/prepared/potsdam/synthetic-patch_size512"
    for split in ("train", "val", "test"):
        assert coarse["splits"][split]["checkpoint"] == str(Path(unet["checkpoint"]).resolve())
        written = sorted(p.stem for p in (run / "coarse" / "unet" / split).iterdir())
        assert written == sorted(p.stem for p in (prepared / split / "images").iterdir())
    assert refined["test_images"] == unet["test_images"] == len(written)
    for row in (unet, refined):
        assert row["gflops"] > 0 and row["eval_memory_mib"] >= 0
        assert row["seed"] == 42 and row["protocol"] == "unetformer"
    assert refined["gflops"] > unet["gflops"]  # the refiner's sampling runs a UNet several times per image

    # the reproducibility manifest, and every run (the summary too) in the dataset's W&B group
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest == payload["meta"]["manifest"]
    assert manifest["git"]["commit"] == git_revision()["commit"]
    assert manifest["data_checksum"] == data_checksum(prepared)
    unet_configs = manifest["methods"]["unet"]["configs"]  # the method's config, then the profile's overrides
    assert ["/".join(Path(c).parts[-2:]) for c in unet_configs] == [
        "unet/potsdam.yaml", "unet/smoke.yaml", "smoke/potsdam.yaml"]
    refined_manifest = manifest["methods"]["idgbr(unet)"]
    assert [Path(c).name for c in refined_manifest["configs"]] == ["potsdam.yaml", "smoke.yaml"]
    assert refined_manifest["stage_configs"] and refined_manifest["checkpoint"].endswith(".ckpt")
    assert manifest["methods"]["idgbr(unet)"]["protocol"] == "unetformer"
    runs = {r.name: r for r in offline_runs(run)}
    assert set(runs) == {"unet", "idgbr-label-embedding", "idgbr-vae", "idgbr(unet)", "bench-potsdam-summary"}
    for name, logged in runs.items():
        assert logged.group == "potsdam" and f"bench-{run.name}" in logged.tags, name
    assert {"unet", "unetformer"} <= set(runs["unet"].tags) and "idgbr" in runs["idgbr(unet)"].tags
    summary = runs["bench-potsdam-summary"]
    assert summary.job_type == "bench-summary" and summary.config["manifest"] == manifest
    comparison = summary.table("comparison")
    assert [r[0] for r in comparison["data"]] == methods
    for key in ("mIoU", "boundary_WF", "gflops"):
        column = comparison["columns"].index(key)
        assert [r[column] for r in comparison["data"]] == [r.get(key) for r in payload["rows"]], key
    assert summary.summary["unet/mIoU"] == unet["mIoU"]
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert [r["method"] for r in rows] == methods
    table = (run / "results.md").read_text()
    assert "Synthetic data" in table and "| unet |" in table and "| idgbr(unet) † |" in table
    assert "† IDGBR from a random tiny diffusion UNet" in table  # the smoke refiner is flagged
    assert "| mWFm | boundary_WF |" in table
    for picture in ("bar_mIoU.png", "bar_boundary_WF.png", "per_class_iou.png", "speed_accuracy.png",
                    "qualitative.png"):
        assert (run / picture).stat().st_size > 0, picture
    # The synthetic raw data and its preparation are cached and reused by the next run.
    assert (tmp_path / "cache" / "synthetic" / "potsdam" / "2_Ortho_RGB").is_dir()
    again = sources.resolve_prepared_root("potsdam", None, tmp_path / "cache", {"patch_size": 512})
    assert again.synthetic and again.prepared == tmp_path / "cache/prepared/potsdam/synthetic-patch_size512"


def test_majority_row_is_the_constant_predictor(tiny_potsdam, tmp_path):
    from rsseg.bench.report import majority_class_row
    from rsseg.data.datasets.potsdam import PotsdamDataModule
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


# Two optimizer steps (4 train objects, batch 2), one val batch, no sanity check: the smoke models on 2 CPU cores.
TINY_REFERRING_RUN = [
    "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--trainer.max_steps", "2",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.num_sanity_val_steps", "0",
    "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
]


@pytest.fixture(scope="module")
def tiny_refsegrs(tmp_path_factory):
    """A synthetic RefSegRS at 128², the smoke profile's image size, so its masks are scored unresized."""
    root = tmp_path_factory.mktemp("refsegrs")
    write_synthetic_refsegrs(root, counts=(4, 2, 2), size=128)
    return root


def target_shares(root) -> list[float]:
    """Per test expression, the share of its mask's pixels that are target, read from the files."""
    shares = []
    for line in (root / "output_phrase_test.txt").read_text().splitlines():
        if line.strip():
            mask = tifffile.imread(root / "masks" / f"{line.split()[0]}.tif")
            shares.append(float((mask > 50).mean()))
    return shares


def test_bench_refsegrs_compares_lavt_and_danet_with_constant_masks(tiny_refsegrs, tmp_path):
    started = time.perf_counter()
    run = run_bench("refsegrs", data_root=str(tiny_refsegrs), profile="smoke", out=str(tmp_path / "out"),
                    cache=str(tmp_path / "cache"), lightning_args=TINY_REFERRING_RUN)
    wall = time.perf_counter() - started
    payload = json.loads((run / "results.json").read_text())
    assert payload["meta"]["task"] == "referring"
    assert payload["meta"]["data_root"] == str(tiny_refsegrs) and payload["meta"]["raw_root"] is None
    assert not (tmp_path / "cache").exists()  # read as released: nothing prepared or synthesised
    rows = {row["method"]: row for row in payload["rows"]}
    assert list(rows) == ["all target", "all background", "lavt", "danet"]
    for row in rows.values():
        for key in ("oIoU", "mIoU", "Pr@0.5"):
            assert 0.0 <= row[key] <= 1.0, (row["method"], key)
    assert rows["lavt"]["params"] > 0 and rows["danet"]["params"] > rows["lavt"]["params"]

    background, target = rows["all background"], rows["all target"]
    assert background["oIoU"] == 0.0 and background["mIoU"] == 0.0 and background["Pr@0.5"] == 0.0
    # Predicting everything: IoU = |target| / |image| per expression, and oIoU pools the pixels.
    shares = target_shares(tiny_refsegrs)
    assert len(shares) == rows["lavt"]["test_images"]
    assert target["oIoU"] == pytest.approx(np.mean(shares))  # every mask has the same 128² size
    assert target["mIoU"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert target["Pr@0.5"] == pytest.approx(np.mean([s >= 0.5 for s in shares]))

    stages = payload["meta"]["stages"]  # where the time went: every stage, together the run's wall time
    names = [row["stage"] for row in stages["rows"]]
    assert names[:2] == ["data", "reference rows"] and names[-2:] == ["plots", "W&B summary"]
    for method in ("lavt", "danet"):
        assert {f"{method}: build", f"{method}: fit", f"{method}: test"} <= set(names)
    covered = sum(row["wall_s"] for row in stages["rows"])
    assert 0.95 * wall <= covered <= stages["wall_s"] <= wall  # the stages account for the run's wall time
    assert all(row["status"] == "done" and row["cpu_s"] >= 0 for row in stages["rows"])
    table = (run / "results.md").read_text()
    assert "## Where the time went" in table and "| lavt: fit |" in table
    assert "| method | oIoU | mIoU | Pr@0.5 | Pr@0.6 | Pr@0.7 | Pr@0.8 | Pr@0.9 | params (M) |" in table
    assert "mF1" not in table and "| all background | 0.00 | 0.00 |" in table
    assert [r["method"] for r in csv.DictReader(open(run / "results.csv"))] == list(rows)
    for picture in ("bar_oIoU.png", "bar_Pr0.9.png", "speed_accuracy.png", "qualitative.png"):
        assert (run / picture).stat().st_size > 0, picture
    assert not (run / "per_class_iou.png").exists()  # referring rows have no classes


def test_datasets_without_preparer_are_read_as_released(tmp_path):
    root = tmp_path / "loveda"
    root.mkdir()
    (root / "Train").mkdir()
    for dataset in ("refsegrs", "loveda", "chn6cug"):
        source = sources.resolve_prepared_root(dataset, str(root), tmp_path / "cache", {})
        assert source == sources.DataSource(prepared=root, raw=None, synthetic=False)
    with pytest.raises(PlanError, match="read as released"):
        sources.resolve_prepared_root("refsegrs", str(root), tmp_path / "cache", {"patch_size": 512})


SEMANTIC_ROWS = [{"method": "unet", "mIoU": 0.5, "mF1": 0.6, "OA": 0.7, "Kappa": 0.4,
                  "IoU/building": 0.8, "IoU/car": 0.2, "F1/building": 0.9, "params": 1_000_000}]
REFERRING_ROWS = [{"method": "danet", "oIoU": 0.55, "mIoU": 0.5, **{f"Pr@{t}": 0.1 for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
                   "native/oIoU": 0.54, "params": 2_000_000}]


def test_report_columns_follow_the_task(tmp_path):
    assert metric_columns("semantic", SEMANTIC_ROWS) == ["mIoU", "mF1", "OA", "Kappa", "IoU/building", "IoU/car"]
    assert headline_metrics("semantic", [*SEMANTIC_ROWS, {"method": "x", "boundary_WF": 0.1}]) == [
        "mIoU", "mF1", "OA", "Kappa", "boundary_WF"]
    assert metric_columns("referring", REFERRING_ROWS) == list(REFERRING_HEADLINE) == [
        "oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert headline_metrics("referring", REFERRING_ROWS) == list(REFERRING_HEADLINE)
    with pytest.raises(ValueError, match="unknown bench task 'detection'"):
        metric_columns("detection", SEMANTIC_ROWS)

    meta = {"dataset": "x", "profile": "smoke", "device": "cpu"}
    for task, rows, header, note in (
        ("semantic", SEMANTIC_ROWS, "| method | mIoU | mF1 | OA | Kappa | building | car | params (M) |",
         "mIoU/mF1 leave out the dataset's excluded classes"),
        ("referring", REFERRING_ROWS, "| method | oIoU | mIoU | Pr@0.5 | Pr@0.6 | Pr@0.7 | Pr@0.8 | Pr@0.9 |",
         "oIoU = total intersection / total union"),
    ):
        run = tmp_path / task
        run.mkdir()
        write_report(run, rows, {**meta, "task": task})
        table = (run / "results.md").read_text()
        assert header in table and note in table, table
        assert "| img/s | eval MiB |" in table and MEMORY_NOTE in table  # what the memory column is, per device
        columns = ["method", *metric_columns(task, rows)]
        assert next(csv.reader(open(run / "results.csv")))[: len(columns)] == columns
    assert "| danet | 55.00 | 50.00 | 10.00 |" in (tmp_path / "referring" / "results.md").read_text()
    assert "native/oIoU" in next(csv.reader(open(tmp_path / "referring" / "results.csv")))


def test_every_dataset_has_a_bench_plan():
    from rsseg.data.registry import DATAMODULES

    for dataset in DATAMODULES:
        for profile in ("smoke", "paper"):
            assert load_plan(dataset, profile).configs, (dataset, profile)


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen", "chn6cug", "loveda", "uavid"])
@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_every_bench_run_parses(dataset, profile, tmp_path, capsys):
    """Each method, refiner, label-embedding and VAE run of a plan parses as LightningCLI gets it."""
    from rsseg.bench.refine import RefinerStages

    plan = load_plan(dataset, profile)
    root = str(tmp_path / "data")
    runs = [[*plan.config_args(m), "--data.init_args.root", root] for m in plan.configs]
    if plan.refiner:
        stages = RefinerStages(plan, tmp_path / "data", tmp_path / "run", Tracking("group"))
        runs += [[*plan.refiner_args(), "--data.init_args.data.init_args.root", root, "--data.init_args.coarse",
                  str(tmp_path / "run/coarse/unet")], plan.label_embedding_args()]
        if plan.refiner_vae is not None:
            runs.append(stages.vae_args("le.ckpt", "official", tmp_path / "vae"))
    for args in runs:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--print_config"])
        assert exit_info.value.code == 0, args
    printed = capsys.readouterr().out
    expected = {"D2LSTask", "SMPSegmentationTask", *(["IDGBRTask"] if plan.refiner else []),
                *(["SDCITask"] if "sdci" in plan.configs else [])}
    assert all(f"rsseg.tasks.{name}" in printed for name in expected), expected


def test_majority_row_counts_training_masks_without_a_manifest(tmp_path):
    """CHN6-CUG is read as released: the majority class comes from its training masks."""
    from rsseg.bench.report import majority_class_row
    from rsseg.data.core.io import read_image
    from rsseg.data.datasets.chn6cug import ROAD_THRESHOLD, binarise_mask, find_pairs
    from rsseg.data.synthetic.chn6cug import write_synthetic_chn6cug

    write_synthetic_chn6cug(tmp_path, counts=(4, 2), size=64)
    train = [binarise_mask(read_image(m), ROAD_THRESHOLD) for _, m in find_pairs(tmp_path, "train").values()]
    road_share = np.mean([t.mean() for t in train])
    test = np.stack([binarise_mask(read_image(m), ROAD_THRESHOLD) for _, m in find_pairs(tmp_path, "val").values()])
    row = majority_class_row("chn6cug", tmp_path)
    majority = int(road_share > 0.5)  # tiny tiles: mostly road
    assert row["predicted_class"] == majority
    assert row["OA"] == pytest.approx(float((test == majority).mean()))


def test_bench_scores_val_where_test_labels_are_private(tmp_path, monkeypatch):
    """LoveDA: the reference row and SDCI (training-free: evaluated only, its random weights flagged) on Val;
    D2LS, given an argument only SDCI has, fails and is reported as failed while SDCI still runs; the bench then
    exits 1."""
    from rsseg.data.synthetic import write_synthetic_loveda

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATA_ROOT", raising=False)
    monkeypatch.setitem(sources.SYNTHESIZERS, "loveda",
                        functools.partial(write_synthetic_loveda, per_split=(2, 2, 2), size=128))
    code = main(["bench", "loveda", "--methods", "d2ls,sdci", "--out", "out", "--cache", "cache", "--",
                 "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu",
                 "--model.init_args.inference_window", "64", "--model.init_args.prompt_setting", "gen"])
    assert code == 1
    [run] = list((tmp_path / "out" / "loveda").iterdir())
    payload = json.loads((run / "results.json").read_text())
    assert payload["meta"]["evaluated_split"] == "val"
    majority, d2ls, sdci = payload["rows"]
    assert d2ls == {"method": "d2ls", "failed": d2ls["failed"]} and "rejected its configuration" in d2ls["failed"]
    assert sdci["method"] == "sdci" and sdci["train_time_s"] is None and "random CLIP/DINO weights" in sdci["note"]
    assert sdci["test_images"] == 2 and 0 <= sdci["mIoU"] <= 1  # the Val images: one Urban, one Rural
    assert "IoU/background" in majority
    table = (run / "results.md").read_text()
    assert "| d2ls (failed) † |" in table and "† failed: LightningCLI rejected" in table
    assert "| sdci †† |" in table and "†† SDCI with random CLIP/DINO weights" in table
    assert "Scored on the val split" in table


def test_trainer_flags_reach_the_refiner_and_ranks_share_the_run_folder(tmp_path, monkeypatch):
    from rsseg.bench.runner import RUN_DIR_ENV, shared_run_dir, trainer_flags

    args = ["--data.init_args.crop_size", "64", "--trainer.devices", "2", "--trainer.strategy=ddp",
            "--model.init_args.lr", "1e-3", "--trainer.fast_dev_run", "--trainer.max_steps", "5"]
    assert trainer_flags(args) == ["--trainer.devices", "2", "--trainer.strategy=ddp", "--trainer.fast_dev_run",
                                   "--trainer.max_steps", "5"]
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    first = shared_run_dir(tmp_path)
    assert first.is_dir() and first.parent == tmp_path
    assert shared_run_dir(tmp_path) == first  # what a DDP rank started from this process gets
