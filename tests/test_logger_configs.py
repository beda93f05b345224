"""Logging of every config: ``--trainer.logger false`` works with each, and ``--print_config`` shows the logger
the run really uses (W&B by default, CSV files where ``wandb`` is missing)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from rsseg.bench.plan import load_plan
from rsseg.cli import DATASETS
from rsseg.lightning_cli import build_cli
from rsseg.tracking import RssegWandbLogger, wandb_project

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


def _complete(path: Path) -> str | None:
    """None for a config LightningCLI runs on its own (a model and a datamodule by class_path), else why not."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        return "not a mapping"
    missing = [key for key in ("model", "data") if not (isinstance(config.get(key), dict)
                                                         and config[key].get("class_path"))]
    if not missing:
        return None
    if not {"model", "data", "trainer"} & set(config):
        return "not a LightningCLI config (a bench plan, prompts or paper numbers)"
    return (f"an override of another config (no {' or '.join(missing)} class_path): covered where it is layered "
            "on a complete one")


CONFIGS = sorted(EXPERIMENTS.rglob("*.yaml"))
COMPLETE = [p for p in CONFIGS if _complete(p) is None]


def _config_param(path: Path):
    return pytest.param(path, id=str(path.relative_to(EXPERIMENTS)))


def _print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_the_configs_are_found_and_most_are_complete():
    assert len(COMPLETE) >= 30 and EXPERIMENTS / "unet/potsdam.yaml" in COMPLETE
    assert EXPERIMENTS / "smoke/potsdam.yaml" not in COMPLETE


@pytest.mark.parametrize("config", [_config_param(p) for p in COMPLETE])
def test_print_config_without_a_logger(config, capsys):
    printed = _print_config(["--config", str(config), "--trainer.logger", "false"], capsys)
    assert printed["trainer"]["logger"] is False


@pytest.mark.parametrize("config", [_config_param(p) for p in COMPLETE])
def test_print_config_shows_the_default_wandb_logger(config, capsys):
    logger = _print_config(["--config", str(config)], capsys)["trainer"]["logger"]
    assert logger["class_path"] == "rsseg.tracking.RssegWandbLogger"
    assert logger["init_args"]["project"] == wandb_project()
    assert logger["init_args"]["mode"] == "disabled"  # tests/conftest.py: WANDB_MODE=disabled


def test_print_config_shows_csv_files_where_wandb_is_not_installed(monkeypatch, capsys):
    monkeypatch.setattr("rsseg.tracking.wandb_installed", lambda: False)
    logger = _print_config(["--config", str(EXPERIMENTS / "unet/potsdam.yaml")], capsys)["trainer"]["logger"]
    assert logger == {"class_path": "rsseg.tracking.RssegCSVLogger"}


def test_a_configs_own_logger_is_printed_without_the_defaults_arguments(capsys, tmp_path):
    """jsonargparse carries a default's arguments over to another logger class where it takes them: the W&B
    default must leave e.g. CSVLogger's ``name`` alone."""
    unet = ["--config", str(EXPERIMENTS / "unet/potsdam.yaml")]
    logger = _print_config([*unet, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                            "--trainer.logger.save_dir", str(tmp_path)], capsys)["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert logger["init_args"]["name"] == "lightning_logs" and logger["init_args"]["save_dir"] == str(tmp_path)
    [logger] = _print_config([*unet, "--trainer.logger", '[{"class_path": "lightning.pytorch.loggers.'
                              f'TensorBoardLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}]'],
                             capsys)["trainer"]["logger"]
    assert logger["init_args"]["name"] == "lightning_logs"
    logger = _print_config([*unet, "--trainer.logger.group", "mine"], capsys)["trainer"]["logger"]
    assert logger["class_path"] == "rsseg.tracking.RssegWandbLogger" and logger["init_args"]["group"] == "mine"


# The default logger really is the logger of the run.

def _tiny_unet(root: Path, out: Path) -> list[str]:
    return ["--config", str(EXPERIMENTS / "unet/potsdam.yaml"), "--config", str(EXPERIMENTS / "unet/smoke.yaml"),
            "--config", str(EXPERIMENTS / "smoke/potsdam.yaml"), "--data.init_args.root", str(root),
            "--trainer.default_root_dir", str(out), *TINY_RUN]


def test_the_printed_default_logger_is_the_runs_logger(tiny_potsdam, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    cli = build_cli(_tiny_unet(tiny_potsdam, tmp_path), run=False)
    assert cli.config.trainer.logger.class_path == "rsseg.tracking.RssegWandbLogger"
    assert cli.config.trainer.logger.init_args.mode == "offline"
    [logger] = cli.trainer.loggers
    assert type(logger) is RssegWandbLogger and logger._experiment is None  # no W&B run started yet
    init = logger._wandb_init
    assert (init["name"], init["group"], init["job_type"], init["mode"]) == ("unet", "potsdam", "fit", "offline")
    assert init["project"] == wandb_project() and set(init["tags"]) == {"unet", "unetformer"}
    assert logger.save_dir == init["dir"] == str(tmp_path)


def test_without_wandb_the_run_logs_to_csv_files_and_says_so(tiny_potsdam, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("rsseg.tracking.wandb_installed", lambda: False)
    monkeypatch.setattr("rsseg.tracking._told_no_wandb", False)
    with caplog.at_level("INFO", logger="rsseg.tracking"):
        build_cli(["fit", *_tiny_unet(tiny_potsdam, tmp_path)])
    [logger_folder] = (tmp_path / "unet").iterdir()
    assert (logger_folder / "metrics.csv").is_file() and list(logger_folder.rglob("*.ckpt"))
    assert "rsseg[wandb]" in caplog.text and not list(tmp_path.rglob("wandb"))


# --trainer.logger false on the smoke runs: every dataset's smoke profile and every method's smoke override,
# layered as `rsseg bench --profile smoke` layers them, fitted one step on tiny synthetic data.

TINY_RUN = [
    "--trainer.max_steps", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--trainer.check_val_every_n_epoch", "1",
    "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
]
CROP = ["--data.init_args.crop_size", "64"]


def _smoke_runs() -> list:
    """The config files of smoke runs, layered as the bench's smoke plans layer them (the method's config, its
    smoke override, the dataset's smoke profile), covering each dataset, then each method override, once."""
    runs, covered = [], set()

    def add(dataset: str, method: str) -> None:
        name = load_plan(dataset, "smoke").configs[next(iter(load_plan(dataset, "smoke").configs))].stem
        files = [EXPERIMENTS / method / f"{name}.yaml", EXPERIMENTS / method / "smoke.yaml",
                 EXPERIMENTS / "smoke" / f"{name}.yaml"]
        runs.append(pytest.param(dataset, files, id=f"{method}-{dataset}"))
        covered.add(method)

    plans = {dataset: list(load_plan(dataset, "smoke").configs) for dataset in DATASETS}
    for dataset, methods in plans.items():
        add(dataset, next((m for m in methods if m not in covered), methods[0]))
    overrides = sorted(p.parent.name for p in EXPERIMENTS.glob("*/smoke.yaml"))
    for method in overrides:  # methods no plan runs (SegFormer) on their first dataset with a smoke profile
        dataset = next((d for d in DATASETS if method in plans[d]), None) or next(
            (d for d in DATASETS if (EXPERIMENTS / method / f"{load_plan(d, 'smoke').configs[plans[d][0]].stem}.yaml")
             .is_file()), None)
        if method not in covered and dataset is not None and method not in REFINER:
            add(dataset, method)
    return runs


# IDGBR refines another method's coarse maps (and takes its label embedding and VAE from earlier stages): its
# 1-step run is the bench's own test (tests/test_bench.py); here only its configs' --print_config.
REFINER = {"idgbr"}


def _write_tiny(dataset: str, root: Path, protocol: str | None) -> Path:
    from rsseg.data import synthetic

    if dataset == "vaihingen":
        from rsseg.data.datasets.vaihingen import prepare_vaihingen

        synthetic.write_synthetic_vaihingen(root / "raw", tiles={a: (160, 150) for a in ("1", "30", "2")})
        prepare_vaihingen(root / "raw", root / "prepared", patch_size=128, progress=False,
                          **({"protocol": protocol} if protocol else {}))
        return root / "prepared"
    if dataset == "uavid":
        from rsseg.data.datasets.uavid.prepare import prepare_uavid

        raw = root / "raw" / "uavid_v1.5_official_release_image"
        synthetic.write_synthetic_uavid(raw, frame_size=(128, 160), frames_per_seq=1)
        prepare_uavid(raw.parent, root / "prepared", patch_size=128, progress=False)
        return root / "prepared"
    small = {"loveda": {"per_split": (2, 2, 2), "size": 128}, "chn6cug": {"counts": (2, 2), "size": 64},
             "refsegrs": {"counts": (2, 2, 2), "size": 128}, "rrsisd": {"counts": (2, 2, 2), "size": 64}}
    synthetic.write_synthetic(dataset, root, **small[dataset])
    return root


@pytest.mark.parametrize(("dataset", "files"), _smoke_runs())
def test_one_step_run_without_a_logger(dataset, files, tiny_potsdam, tmp_path, monkeypatch):
    """Also the configs' LearningRateMonitor, which fails a run without a logger unless it is left out."""
    import importlib

    from rsseg.bench.plan import merged_config

    monkeypatch.setenv("WANDB_MODE", "offline")  # were a W&B run started, it would write its folder
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    merged = merged_config(files)
    protocol = merged["data"]["init_args"].get("protocol")
    root = tiny_potsdam if dataset == "potsdam" else _write_tiny(dataset, tmp_path / "data", protocol)
    module, _, name = merged["model"]["class_path"].rpartition(".")
    training_free = getattr(getattr(importlib.import_module(module), name), "training_free", False)
    # `rsseg bench` only evaluates a training-free model (SDCI), on the split its plan scores
    subcommand = load_plan(dataset, "smoke").evaluate if training_free else "fit"
    crop = CROP if "crop_size" in merged["data"]["init_args"] else []
    out = tmp_path / "run"
    start = time.perf_counter()
    build_cli([subcommand, *(a for f in files for a in ("--config", str(f))), "--data.init_args.root", str(root),
               *TINY_RUN, *crop, "--trainer.default_root_dir", str(out), "--trainer.logger", "false"])
    print(f"{subcommand} {' '.join(f.name for f in files)}: {time.perf_counter() - start:.1f} s")
    assert training_free or list(out.rglob("*.ckpt")), "fit wrote no checkpoint"
    assert not list(tmp_path.rglob("wandb")) and not (tmp_path / "wandb_dir").exists()
