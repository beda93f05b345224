"""``rsseg bench``: prepare a dataset, train and test every method of its plan, write the comparison."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from rsseg.bench.plan import BenchPlan, load_plan, merged_config
from rsseg.bench.plots import write_plots
from rsseg.bench.refine import RefinerStages, write_coarse_maps
from rsseg.bench.report import constant_mask_rows, majority_class_row, write_report
from rsseg.bench.runs import Tracking, announce, close_failed_run, fit_and_test
from rsseg.bench.sources import resolve_prepared_root
from rsseg.bench.summary import log_summary_run
from rsseg.manifest import data_checksum, run_manifest

log = logging.getLogger(__name__)


def run_method(method: str, config: Path, plan: BenchPlan, root: Path, run_dir: Path, tracking: Tracking,
               lightning_args: list[str] = (), coarse_maps: Path | None = None):
    """Fit then test one method through the same LightningCLI that ``rsseg fit`` uses; with
    ``coarse_maps``, then write its predictions of every split there as coarse maps for the refiner.
    Its row and its first test samples."""
    args = [*plan.config_args(method), "--data.init_args.root", str(root), *prepared_protocol(root),
            *lightning_args]
    row, cli, best, samples = fit_and_test(method, args, run_dir, tracking, plan.evaluate)
    if coarse_maps is not None:
        announce(method, "writing coarse maps for the refiner")
        write_coarse_maps(cli, best, method, coarse_maps)
    return {"method": method, "config": str(config), **row}, samples


def guarded(name: str, run, *args, **kwargs) -> tuple[dict, object]:
    """``run(*args, **kwargs)``'s row and samples, or on an error a row saying the run failed and why (the
    traceback goes to the log) and no samples, so one method's failure does not end the comparison."""
    try:
        return run(*args, **kwargs)
    except (Exception, SystemExit) as error:  # noqa: BLE001 — reported, not raised (SystemExit: a config error)
        log.exception("%s failed; the bench goes on with the other methods", name)
        close_failed_run()
        reason = f"{type(error).__name__}: {error}"
        if isinstance(error, SystemExit):
            reason = "LightningCLI rejected its configuration (the error is printed above the traceback)"
        return {"method": name, "failed": reason}, None


def prepared_protocol(root: Path) -> list[str]:
    """A prepared root holds the splits of one protocol: every method runs with it (whatever its config
    names, e.g. SDCI's official Potsdam protocol); roots read as released: no override."""
    from rsseg.data.prepare import read_manifest

    if not (Path(root) / "manifest.json").is_file():
        return []
    return ["--data.init_args.protocol", read_manifest(root)["protocol"]["name"]]


# Datasets scored per (image, expression) with the referring metrics; every other dataset is semantic.
REFERRING_DATASETS = frozenset({"refsegrs"})


def bench_task(dataset: str) -> str:
    """``"referring"`` or ``"semantic"``: decides the reference rows and the report's columns."""
    return "referring" if dataset in REFERRING_DATASETS else "semantic"


def configured_data_args(plan: BenchPlan, method: str) -> dict:
    """The datamodule ``init_args`` a method's config files set, later files winning as in LightningCLI.

    Arguments after ``--`` on the command line are not seen here.
    """
    return (merged_config(plan.config_args(method)[1::2]).get("data") or {}).get("init_args") or {}


def reference_rows(plan: BenchPlan, root: Path) -> list[dict]:
    """Trivial predictors that put the methods' numbers in context (the report's first rows).

    Semantic: the training split's majority class everywhere. Referring: all target and all background,
    with the tokenizer and image size of the plan's first method (the dataset needs a tokenizer to load,
    and the masks are scored at the resolution the methods are scored at).
    """
    if bench_task(plan.dataset) == "semantic":
        return [majority_class_row(plan.dataset, root, "test" if plan.evaluate == "test" else "val")]
    data_args = configured_data_args(plan, next(iter(plan.configs)))
    return constant_mask_rows(plan.dataset, root, {k: data_args[k] for k in ("tokenizer", "image_size")
                                                   if k in data_args})


def run_bench(dataset: str, data_root: str | None = None, profile: str = "smoke",
              methods: list[str] | None = None, out: str = "results/bench",
              cache: str = ".cache/rsseg", lightning_args: list[str] = (), refiner_args: list[str] = (),
              refiner_stage_args: list[str] = ()) -> Path:
    """Run the whole comparison; returns the run folder with results.{md,csv,json}, the manifest and plots.

    ``lightning_args`` go to every method's run, and their ``--trainer.*`` flags to the refiner's runs too;
    ``refiner_args`` go to the plan's refiner runs (its datamodule wraps the method's, so the methods'
    ``--data``/``--model`` arguments do not fit it) and ``refiner_stage_args`` to the refiner's preliminary
    stages (label embedding, VAE).

    Under DDP (``--trainer.devices N --trainer.strategy ddp``) Lightning re-runs this command in every rank:
    the ranks share the run folder (``RSSEG_BENCH_RUN_DIR``), run every method together, and rank 0 writes
    the report.
    """
    plan = load_plan(dataset, profile, methods)
    source = resolve_prepared_root(dataset, data_root, Path(cache), plan.prepare)
    if source.synthetic:
        print(SYNTHETIC_BANNER.format(dataset=dataset), flush=True)
    run_dir = shared_run_dir(Path(out) / dataset)
    try:
        _run_plan(plan, source, run_dir, profile, list(lightning_args), list(refiner_args), list(refiner_stage_args))
    finally:
        if os.environ.get(RUN_DIR_ENV) == str(run_dir):
            del os.environ[RUN_DIR_ENV]  # the next bench in this process gets a folder of its own
    print(f"results: {run_dir}", flush=True)
    return run_dir


def _run_plan(plan: BenchPlan, source, run_dir: Path, profile: str, lightning_args: list[str],
              refiner_args: list[str], refiner_stage_args: list[str]) -> None:
    """Every method of ``plan`` (and its refinement) in ``run_dir``, then on rank 0 the report."""
    dataset = plan.dataset
    tracking = Tracking(group=dataset, tags=(f"bench-{run_dir.name}", f"profile-{profile}"))

    rows = reference_rows(plan, source.prepared)
    samples: dict[str, object] = {}
    trainer_args = trainer_flags(lightning_args)  # devices, strategy, …: the refiner's runs take them too
    refiner = (RefinerStages(plan, source.prepared, run_dir, tracking, [*trainer_args, *refiner_args],
                             [*trainer_args, *refiner_stage_args]) if plan.refiner else None)
    for i, (method, config) in enumerate(plan.configs.items(), 1):
        print(f"\n==> rsseg bench {dataset}: method {i}/{len(plan.configs)}: {method}", flush=True)
        refined = refiner is not None and method in plan.refined
        row, samples[method] = guarded(method, run_method, method, config, plan, source.prepared, run_dir,
                                       tracking, list(lightning_args),
                                       coarse_maps=refiner.coarse_root if refined else None)
        rows.append(row)
        if refined and "failed" not in row:
            name = f"{plan.refiner}({method})"
            row, samples[name] = guarded(name, refiner.run, method)
            rows.append(row)

    meta = {
        "dataset": dataset,
        "task": bench_task(dataset),
        "evaluated_split": "test" if plan.evaluate == "test" else "val",
        "profile": profile,
        "synthetic": source.synthetic,
        "data_root": str(source.prepared),
        "raw_root": str(source.raw) if source.raw else None,
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    if rank_zero_only.rank != 0:  # under DDP every rank runs the bench; the first one reports
        return
    manifest = bench_manifest(plan, source, rows)
    meta |= {"device": manifest["device"], "manifest": manifest}
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_report(run_dir, rows, meta)
    panel = qualitative_samples(samples)
    plots = write_plots(run_dir, rows, meta, **panel)
    log_summary_run(run_dir, rows, meta, manifest, plots, tracking)
    if source.synthetic:
        print(SYNTHETIC_BANNER.format(dataset=dataset), flush=True)


RUN_DIR_ENV = "RSSEG_BENCH_RUN_DIR"


def shared_run_dir(parent: Path) -> Path:
    """A new time-stamped run folder, or the one the launching rank chose (the DDP ranks it starts inherit
    the environment)."""
    if os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    run_dir = parent / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def trainer_flags(args: list[str]) -> list[str]:
    """The ``--trainer.*`` flags (with their values) of LightningCLI arguments."""
    flags, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--trainer."):
            has_value = "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--")
            flags += args[i:i + 1 + has_value]
            i += 1 + has_value
        else:
            i += 1
    return flags


def bench_manifest(plan: BenchPlan, source, rows: list[dict]) -> dict:
    """The reproducibility manifest of the bench: code, libraries, device, data checksum, and per method its
    config files, seed and protocol (as the runs recorded them)."""
    manifest = run_manifest()
    manifest["data_root"] = str(source.prepared)
    manifest["data_checksum"] = data_checksum(source.prepared)
    manifest["methods"] = {row["method"]: {k: row[k] for k in ("config", "seed", "protocol", "checkpoint") if k in row}
                           for row in rows if "config" in row or "failed" in row}
    manifest["plan"] = {"dataset": plan.dataset, "profile": plan.profile, "evaluate": plan.evaluate}
    return manifest


def qualitative_samples(samples: dict[str, object]) -> dict:
    """The prediction panel's inputs: the first method's samples, each with every method's prediction of the
    same image (matched by id); empty when no method kept samples."""
    kept = {name: s for name, s in samples.items() if s is not None and s.samples}
    if not kept:
        return {}
    first = next(iter(kept.values()))
    panel = []
    for sample in first.samples:
        predictions = {name: p["pred"] for name, s in kept.items() for p in s.samples if p["id"] == sample["id"]
                       and p["pred"].shape == sample["target"].shape}
        panel.append({"id": sample["id"] + (f": {sample['text']}" if sample.get("text") else ""),
                      "image": sample["image"], "target": sample["target"], "predictions": predictions})
    return {"samples": panel, "palette": first.palette, "class_names": first.classes}


SYNTHETIC_BANNER = """
==========================================================================================
  SYNTHETIC DATA: no real {dataset} data was found (set DATA_ROOT=<raw or prepared root>).
  These numbers come from rsseg's synthetic {dataset} twin and say nothing about real data.
==========================================================================================
"""
