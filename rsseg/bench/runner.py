"""``rsseg bench``: prepare a dataset, train and test every method of its plan, write the comparison."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

import yaml

from rsseg.bench.plan import BenchPlan, load_plan
from rsseg.bench.report import constant_mask_rows, environment_info, majority_class_row, write_report
from rsseg.bench.sources import resolve_prepared_root
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


def run_method(method: str, config: Path, plan: BenchPlan, root: Path, run_dir: Path, group: str,
               lightning_args: list[str] = ()) -> dict:
    """Fit then test one method through the same LightningCLI that ``rsseg fit`` uses."""
    from rsseg.cli import _lightning_cli

    method_dir = run_dir / method
    method_dir.mkdir(parents=True, exist_ok=True)
    args = [
        *plan.config_args(method),
        "--data.init_args.root", str(root),
        "--trainer.default_root_dir", str(method_dir),
        "--trainer.logger", _wandb_logger(method_dir, group, method),
        *lightning_args,
    ]
    cli = _lightning_cli(args, run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    timer = InferenceTimer()
    trainer.callbacks.append(timer)

    log.info("training %s (%s)", method, config)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    train_seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    [metrics] = trainer.test(model, datamodule=data, ckpt_path=best or None)
    for logger in trainer.loggers:
        logger.finalize("success")
    _finish_wandb()
    return {
        "method": method,
        "config": str(config),
        **{k.removeprefix("test/"): float(v) for k, v in metrics.items()},
        "params": count_parameters(model),
        "train_time_s": round(train_seconds, 2),
        "inference_img_per_s": round(timer.images_per_second, 3),
        "test_images": timer.images,
        "checkpoint": best,
    }


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()


# Datasets scored per (image, expression) with the referring metrics; every other dataset is semantic.
REFERRING_DATASETS = frozenset({"refsegrs"})


def bench_task(dataset: str) -> str:
    """``"referring"`` or ``"semantic"``: decides the reference rows and the report's columns."""
    return "referring" if dataset in REFERRING_DATASETS else "semantic"


def configured_data_args(plan: BenchPlan, method: str) -> dict:
    """The datamodule ``init_args`` a method's config files set, later files winning as in LightningCLI.

    Arguments after ``--`` on the command line are not seen here.
    """
    merged: dict = {}
    for path in plan.config_args(method)[1::2]:
        config = yaml.safe_load(Path(path).read_text()) or {}
        merged.update((config.get("data") or {}).get("init_args") or {})
    return merged


def reference_rows(plan: BenchPlan, root: Path) -> list[dict]:
    """Trivial predictors that put the methods' numbers in context (the report's first rows).

    Semantic: the training split's majority class everywhere. Referring: all target and all background,
    with the tokenizer and image size of the plan's first method (the dataset needs a tokenizer to load,
    and the masks are scored at the resolution the methods are scored at).
    """
    if bench_task(plan.dataset) == "semantic":
        return [majority_class_row(plan.dataset, root)]
    data_args = configured_data_args(plan, next(iter(plan.configs)))
    return constant_mask_rows(plan.dataset, root, {k: data_args[k] for k in ("tokenizer", "image_size")
                                                   if k in data_args})


def run_bench(dataset: str, data_root: str | None = None, profile: str = "smoke",
              methods: list[str] | None = None, out: str = "results/bench",
              cache: str = ".cache/rsseg", lightning_args: list[str] = ()) -> Path:
    """Run the whole comparison; returns the run folder with results.{md,csv,json} and a plot."""
    plan = load_plan(dataset, profile, methods)
    source = resolve_prepared_root(dataset, data_root, Path(cache), plan.prepare)
    if source.synthetic:
        print(SYNTHETIC_BANNER.format(dataset=dataset), flush=True)
    run_dir = Path(out) / dataset / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    group = f"bench-{dataset}-{run_dir.name}"

    rows = reference_rows(plan, source.prepared)
    for method, config in plan.configs.items():
        rows.append(run_method(method, config, plan, source.prepared, run_dir, group, list(lightning_args)))

    meta = {
        "dataset": dataset,
        "task": bench_task(dataset),
        "profile": profile,
        "synthetic": source.synthetic,
        "data_root": str(source.prepared),
        "raw_root": str(source.raw) if source.raw else None,
        "created": datetime.now().isoformat(timespec="seconds"),
        **environment_info(),
    }
    write_report(run_dir, rows, meta)
    if source.synthetic:
        print(SYNTHETIC_BANNER.format(dataset=dataset), flush=True)
    print(f"results: {run_dir}", flush=True)
    return run_dir


SYNTHETIC_BANNER = """
==========================================================================================
  SYNTHETIC DATA: no real {dataset} data was found (set DATA_ROOT=<raw or prepared root>).
  These numbers come from rsseg's synthetic {dataset} twin and say nothing about real data.
==========================================================================================
"""
