"""One run of ``rsseg bench``: a config fitted and tested through LightningCLI, logged to W&B."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from rsseg.callbacks import InferenceTimer
from rsseg.models.baselines import count_parameters

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """Online only when the user configured W&B (``WANDB_MODE`` or an API key); offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    return "online" if netrc.is_file() and "api.wandb.ai" in netrc.read_text() else "offline"


def _wandb_logger(save_dir: Path, group: str, name: str) -> str:
    return json.dumps({
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {
            "project": "rsseg", "group": group, "name": name, "save_dir": str(save_dir),
            "mode": wandb_mode(), "job_type": "bench",
        },
    })


def fit_and_test(name: str, args: list[str], run_dir: Path, group: str, evaluate: str = "test"):
    """Fit, then ``evaluate`` (``"test"`` or ``"validate"``), the run ``args`` describe, in ``run_dir/name``:
    its row, the CLI and the best checkpoint. A training-free model (``training_free = True``) is only
    evaluated; a model's ``bench_note`` (e.g. "random weights") goes into the row."""
    cli = _build(name, args, run_dir, group)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    timer = InferenceTimer(evaluate)
    trainer.callbacks.append(timer)

    train_seconds, best = None, ""
    if not getattr(model, "training_free", False):
        log.info("training %s", name)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        train_seconds = round(time.perf_counter() - start, 2)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    run = trainer.test if evaluate == "test" else trainer.validate
    [metrics] = run(model, datamodule=data, ckpt_path=best or None)
    trainer.callbacks.remove(timer)
    _close_loggers(trainer)
    prefix = "test/" if evaluate == "test" else "val/"
    row = {
        **{k.removeprefix(prefix): float(v) for k, v in metrics.items() if k.startswith(prefix)},
        **({"note": model.bench_note} if getattr(model, "bench_note", None) else {}),
        "params": count_parameters(model),
        "train_time_s": train_seconds,
        "inference_img_per_s": round(timer.images_per_second, 3),
        "test_images": timer.images,
        "checkpoint": best,
    }
    return row, cli, best


def fit_stage(name: str, args: list[str], run_dir: Path, group: str) -> str:
    """Fit a preliminary stage (no test); its best checkpoint, else its last one, else ""."""
    cli = _build(name, args, run_dir, group)
    log.info("training %s", name)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    _close_loggers(cli.trainer)
    callback = cli.trainer.checkpoint_callback
    return (callback.best_model_path or callback.last_model_path) if callback else ""


def _build(name: str, args: list[str], run_dir: Path, group: str):
    """The LightningCLI of one run (not run), writing to ``run_dir/name`` and logging to the bench's group."""
    from rsseg.cli import _lightning_cli

    folder = run_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    return _lightning_cli([*args, "--trainer.default_root_dir", str(folder),
                           "--trainer.logger", _wandb_logger(folder, group, name)], run=False)


def _close_loggers(trainer) -> None:
    for logger in trainer.loggers:
        logger.finalize("success")
    _finish_wandb()


def close_failed_run() -> None:
    """End a W&B run a failed method left open (the next method's logger would otherwise join it)."""
    _finish_wandb(exit_code=1)


def _finish_wandb(exit_code: int = 0) -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
