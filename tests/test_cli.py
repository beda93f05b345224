"""The `rsseg` command: LightningCLI subcommands, help, config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from rsseg.cli import main

REPO = Path(__file__).resolve().parents[1]
UNET = str(REPO / "experiments/unet/potsdam.yaml")
SMOKE = str(REPO / "experiments/smoke/potsdam.yaml")
UNET_SMOKE = str(REPO / "experiments/unet/smoke.yaml")


def _tiny_args(root: Path, out: Path) -> list[str]:
    return [
        "--config", UNET, "--config", UNET_SMOKE, "--config", SMOKE,
        "--data.init_args.root", str(root),
        "--data.init_args.crop_size", "64",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
        "--model.init_args.net.init_args.arch_kwargs", '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}',
        "--trainer.default_root_dir", str(out),
        "--trainer.accelerator", "cpu",
    ]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "rsseg.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("fit", "validate", "test", "predict", "prepare", "synth", "bench"):
        assert command in out


def test_help_and_version_import_nothing_heavy():
    """`rsseg --help`, `rsseg bench --help` and `--version` answer without importing torch (the slow part)."""
    probe = ("import sys\nfrom rsseg.cli import main\nfor argv in (['--help'], ['bench', '--help'], ['--version']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'lightning', 'rsseg.data') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert f"rsseg {version('rsseg')}" in result.stdout  # the installed distribution's version


def test_lightning_help_is_built_once_then_answered_without_importing_torch(tmp_path):
    """`rsseg fit --help` needs the whole LightningCLI (seconds); its text is cached under a key of what makes it."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "57"}  # the text ignores the terminal
    probe = ("import sys\nfrom rsseg.cli import main\nmain(['fit', '--help'])\n"
             "print('HEAVY', sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert "--trainer.max_epochs" in first.stdout and "--model " in first.stdout
    assert max(map(len, first.stdout.splitlines())) > 57
    assert first.stdout.endswith("HEAVY ['lightning', 'torch']\n")  # built by the real CLI
    assert second.stdout.endswith("HEAVY []\n")  # then read back
    assert second.stdout.replace("HEAVY []", "") == first.stdout.replace("HEAVY ['lightning', 'torch']", "")
    [cached] = (tmp_path / "rsseg" / "help").glob("fit-*.txt")
    source = REPO / "rsseg" / "infer" / "__init__.py"
    stat = source.stat()
    try:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rsseg changed: the text is rebuilt
        rebuilt = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rebuilt.stdout.endswith("HEAVY ['lightning', 'torch']\n")
    assert not cached.exists()  # the stale text is replaced


def test_the_command_lines_dataset_names_are_the_registrys():
    from rsseg.cli import DATASETS, PREPARED_DATASETS
    from rsseg.data.registry import DATAMODULES, PREPARERS, SYNTHESIZERS

    assert set(DATASETS) == set(DATAMODULES) == set(SYNTHESIZERS)
    assert set(PREPARED_DATASETS) == set(PREPARERS)


def test_fit_without_a_logger_runs_although_the_config_monitors_the_learning_rate(tiny_potsdam, tmp_path):
    assert "LearningRateMonitor" in Path(UNET).read_text()
    main(["fit", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.max_steps", "1", "--trainer.logger", "false"])
    assert sorted(tmp_path.rglob("*.ckpt")), "fit wrote no checkpoint"


def test_without_a_val_split_the_configs_best_checkpoint_holds_the_last_epoch(tiny_potsdam_raw, tmp_path, caplog):
    """experiments/*/potsdam.yaml rank checkpoints by val/mF1 and tell users to test best.ckpt; the official
    protocol has no val split, so best.ckpt is the last epoch's (Lightning would write only last.ckpt)."""
    from rsseg.data.datasets.potsdam import prepare_potsdam

    root = tmp_path / "official"
    prepare_potsdam(tiny_potsdam_raw, root, patch_size=128, protocol="official", progress=False)
    with caplog.at_level("WARNING", logger="rsseg.lightning_cli"):
        main(["fit", *_tiny_args(root, tmp_path / "run"), "--data.init_args.protocol", "official",
              "--trainer.max_steps", "2", "--trainer.logger", "false"])
    assert sorted(p.name for p in (tmp_path / "run").rglob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert "no validation split" in caplog.text


def test_fit_fast_dev_run_then_test(tiny_potsdam, tmp_path):
    main(["fit", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.max_steps", "3",
          "--trainer.check_val_every_n_epoch", "1"])
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    main(["test", *_tiny_args(tiny_potsdam, tmp_path), "--ckpt_path", str(checkpoints[0])])


def test_export_keeps_the_weights_and_hyper_parameters_and_rsseg_test_takes_it(tiny_potsdam, tmp_path, capsys):
    import torch

    main(["fit", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.max_steps", "2", "--trainer.logger", "false"])
    [trained] = sorted(tmp_path.rglob("last.ckpt"))
    exported = tmp_path / "shared" / "unet.pt"
    assert main(["export", "--ckpt", str(trained), "--out", str(exported)]) == 0
    assert f"wrote {exported}" in capsys.readouterr().out
    full, light = (torch.load(p, map_location="cpu", weights_only=True) for p in (trained, exported))
    assert "optimizer_states" in full and set(light) <= {"state_dict", "hyper_parameters", "hparams_name",
                                                          "pytorch-lightning_version", "epoch", "global_step",
                                                          "rsseg_input"}
    assert light["rsseg_input"] == full["rsseg_input"]  # rsseg infer reads exported weights without a config
    assert light["hyper_parameters"] == full["hyper_parameters"]
    assert light["state_dict"].keys() == full["state_dict"].keys()
    assert all(torch.equal(light["state_dict"][k], v) for k, v in full["state_dict"].items())
    assert exported.stat().st_size < trained.stat().st_size
    assert main(["test", *_tiny_args(tiny_potsdam, tmp_path), "--ckpt_path", str(exported),
                 "--trainer.logger", "false"]) == 0
    assert main(["export", "--ckpt", str(exported), "--out", str(exported)]) == 2  # never overwrites its source


def test_fast_dev_run_and_predict(tiny_potsdam, tmp_path):
    main(["fit", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.fast_dev_run", "true"])
    main(["predict", *_tiny_args(tiny_potsdam, tmp_path), "--trainer.fast_dev_run", "true"])


def test_seed_defaults_to_42_and_print_config(tiny_potsdam, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_tiny_args(tiny_potsdam, tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "seed_everything: 42" in printed
    assert "class_path: rsseg.tasks.SMPSegmentationTask" in printed


def test_unknown_config_key_is_named(tiny_potsdam, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  init_args:\n    learning_rate_typo: 0.1\n")
    result = subprocess.run(
        [sys.executable, "-m", "rsseg.cli", "fit", *_tiny_args(tiny_potsdam, tmp_path), "--config", str(config)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "rsseg fit: error: Parser key \"model\": Problem with given class_path 'rsseg.tasks.SMPSegmentationTask': "
        "Option 'learning_rate_typo' is not accepted")
    assert "usage:" not in result.stderr  # one line, not the whole usage of every option


def test_prepare_reports_data_errors_cleanly(tmp_path, capsys):
    code = main(["prepare", "potsdam", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing" in err and "rsseg prepare: error" in err
    assert not (tmp_path / "out").exists()
