"""One run of ``rsseg bench``: a config fitted and tested through LightningCLI, logged to W&B."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rsseg.bench.stages import stage
from rsseg.callbacks import InferenceProfiler, save_unit_records
from rsseg.lightning_cli import build_cli
from rsseg.models.baselines import count_parameters
from rsseg.tracking import WandbEvaluationLogger, finish_wandb_run, wandb_mode, wandb_project


def _wandb_logger(save_dir: Path, group: str, name: str, tags: list[str]) -> str:
    return json.dumps({
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {
            "project": wandb_project(), "group": group, "name": name, "save_dir": str(save_dir),
            "mode": wandb_mode(), "job_type": "bench", "tags": tags,
        },
    })


@dataclass(frozen=True)
class Tracking:
    """Where a bench's runs log: the W&B group (the dataset) and tags shared by every run of the bench."""

    group: str
    tags: tuple[str, ...] = ()


def announce(name: str, stage: str) -> None:
    """A banner above Lightning's progress bars saying which method and stage is running."""
    print(f"\n==> rsseg bench: {name} — {stage}", flush=True)


def fit_and_test(name: str, args: list[str], run_dir: Path, tracking: Tracking, evaluate: str = "test"):
    """Fit, then ``evaluate`` (``"test"`` or ``"validate"``), the run ``args`` describe, in ``run_dir/name``:
    its row, the CLI, the best checkpoint and its first evaluated samples (an ``EvaluationSamples``).
    A training-free model (``training_free = True``) is only evaluated; a model's ``bench_note`` (e.g.
    "random weights") goes into the row."""
    with stage(f"{name}: build"):
        cli = _build(name, args, run_dir, tracking)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    profiler = InferenceProfiler(evaluate)
    trainer.callbacks.append(profiler)

    train_seconds, best = None, ""
    if not getattr(model, "training_free", False):
        announce(name, "training")
        start = time.perf_counter()
        with stage(f"{name}: fit"):
            trainer.fit(model, datamodule=data)
        train_seconds = round(time.perf_counter() - start, 2)
        saved = trainer.checkpoint_callback
        # the ranked checkpoint, else (no validation within the run) the last one: the weights tested
        best = (saved.best_model_path or saved.last_model_path) if saved else ""
    announce(name, "testing" if evaluate == "test" else "validating")
    run = trainer.test if evaluate == "test" else trainer.validate
    prefix = "test/" if evaluate == "test" else "val/"
    key = prefix.rstrip("/")
    with stage(f"{name}: {'test' if evaluate == 'test' else 'validate'}"):
        [metrics] = run(model, datamodule=data, ckpt_path=best or None)
        trainer.callbacks.remove(profiler)
        _close_loggers(trainer)
        per_unit = str(save_unit_records(trainer, model, (key,), run_dir / name).get(key, ""))
    row = {
        **{k.removeprefix(prefix): float(v) for k, v in metrics.items() if k.startswith(prefix)},
        **({"note": model.bench_note} if getattr(model, "bench_note", None) else {}),
        "params": count_parameters(model),
        "gflops": profiler.gflops,
        "train_time_s": train_seconds,
        "inference_img_per_s": round(profiler.images_per_second, 3),
        "eval_memory_mib": profiler.eval_memory_mib,
        "test_images": profiler.images,
        "checkpoint": best,
        "seed": cli.config.get("seed_everything"),
        "protocol": getattr(getattr(data, "spec", None), "protocol", None),
        "per_unit": per_unit,
    }
    samples = next((c for c in trainer.callbacks if isinstance(c, WandbEvaluationLogger) and c.stage == evaluate),
                   None)
    return row, cli, best, samples


def fit_stage(name: str, args: list[str], run_dir: Path, tracking: Tracking) -> str:
    """Fit a preliminary stage (no test); its best checkpoint, else its last one, else ""."""
    with stage(f"{name}: build"):
        cli = _build(name, args, run_dir, tracking)
    announce(name, "training")
    with stage(f"{name}: fit"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        _close_loggers(cli.trainer)
    callback = cli.trainer.checkpoint_callback
    return (callback.best_model_path or callback.last_model_path) if callback else ""


def _build(name: str, args: list[str], run_dir: Path, tracking: Tracking):
    """The LightningCLI of one run (not run), writing to ``run_dir/name`` and logging to the bench's group."""
    folder = run_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    logger = _wandb_logger(folder, tracking.group, name, [*tracking.tags])
    return build_cli([*args, "--trainer.default_root_dir", str(folder), "--trainer.logger", logger], run=False)


def _close_loggers(trainer) -> None:
    for logger in trainer.loggers:
        logger.finalize("success")
    finish_wandb_run()


def close_failed_run() -> None:
    """End a W&B run a failed method left open (the next method's logger would otherwise join it)."""
    finish_wandb_run(exit_code=1)
