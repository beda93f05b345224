"""``rsseg bench``: prepare a dataset, train and test every method of its plan, write the comparison."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rsseg.bench.intervals import add_intervals
from rsseg.bench.plan import BenchPlan, load_plan, merged_config
from rsseg.bench.plots import write_plots
from rsseg.bench.refine import RefinerStages, write_coarse_maps
from rsseg.bench.report import COST_COLUMNS, constant_mask_rows, json_text, majority_class_row, write_report
from rsseg.bench.runs import Tracking, announce, close_failed_run, fit_and_test
from rsseg.bench.sources import resolve_prepared_root
from rsseg.bench.stages import StageClock, duration, previous_stage_times, stage, stage_lines
from rsseg.bench.summary import log_summary_run
from rsseg.data.synthetic.files import write_text_atomically
from rsseg.errors import original_message
from rsseg.manifest import data_checksum, run_manifest
from rsseg.paper_numbers import with_paper_columns

log = logging.getLogger(__name__)


def run_method(method: str, config: Path, plan: BenchPlan, root: Path, run_dir: Path, tracking: Tracking,
               lightning_args: list[str] = (), coarse_maps: Path | None = None, seed: int | None = None):
    """Fit then test one method through the same LightningCLI that ``rsseg fit`` uses; with
    ``coarse_maps``, then write its predictions of every split there as coarse maps for the refiner.
    ``seed`` replaces the config's ``seed_everything`` (the run's folder and W&B name get ``-seed<N>``).
    Its row and its first test samples."""
    args = [*plan.config_args(method), "--data.init_args.root", str(root), *prepared_protocol(root),
            *lightning_args, *(["--seed_everything", str(seed)] if seed is not None else [])]
    name = method if seed is None else f"{method}-seed{seed}"
    row, cli, best, samples = fit_and_test(name, args, run_dir, tracking, plan.evaluate)
    if coarse_maps is not None:
        announce(method, "writing coarse maps for the refiner")
        with stage(f"{name}: coarse maps"):
            write_coarse_maps(cli, best, method, coarse_maps)
    return {"method": method, "configs": [str(f) for f in plan.config_files(method)], **row}, samples


SEED_LISTS = ("per_unit", "checkpoint", "seed")  # kept per seed, in seed order


def seed_row(runs: list[dict]) -> dict:
    """One method's row from its runs with several seeds: a failed or interrupted run's row as it is, else
    every metric's mean over the seeds with ``<metric>_seed_std`` (sample std, ddof 1) beside it, the mean
    training time, the per-seed values under ``seed_runs``, and the per-seed files, checkpoints and seeds
    as lists; costs (parameters, FLOPs, speed, memory) are the first seed's."""
    stopped = [r for r in runs if "failed" in r or "interrupted" in r]
    if stopped or len(runs) == 1:
        return stopped[0] if stopped else runs[0]
    row = dict(runs[0])
    metrics = [k for k, v in runs[0].items() if isinstance(v, float) and k not in COST_COLUMNS and k not in SEED_LISTS]
    for key in metrics:
        values = np.array([r.get(key, np.nan) for r in runs], dtype=np.float64)
        row[key], row[f"{key}_seed_std"] = float(values.mean()), float(values.std(ddof=1))
    for key in SEED_LISTS:
        row[key] = [r.get(key) for r in runs]
    times = [r.get("train_time_s") for r in runs]
    row["train_time_s"] = None if None in times else round(float(np.mean(times)), 2)  # per run, as for one seed
    row["seed_runs"] = [{k: r[k] for k in ("seed", "train_time_s", *metrics) if k in r} for r in runs]
    return row


class BenchFailed(Exception):
    """Some method (or refiner row) of a bench failed. Raised after every table, plot and the manifest are
    written, so the other methods' results stay on disk while the CLI still exits non-zero."""

    def __init__(self, run_dir: Path, failed: list[str], total: int | None = None) -> None:
        self.run_dir, self.failed = Path(run_dir), list(failed)
        total = len(self.failed) if total is None else total
        super().__init__(f"{len(self.failed)} of {total} methods failed ({', '.join(self.failed)}); "
                         f"see {self.run_dir / 'results.md'}")


INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """SIGINT and SIGTERM handlers for the duration of a bench (a context manager; the previous handlers come
    back on exit). Each records which signal came and raises KeyboardInterrupt.

    Lightning catches a KeyboardInterrupt in fit/test, shuts down, ignores SIGINT from then on and calls
    ``sys.exit(1)``: without the record, that SystemExit reads like LightningCLI rejecting a configuration and
    the bench would go on to the next method. SIGTERM would otherwise only set Lightning's flag (its loops then
    raise a SIGTERMException, also a SystemExit) or kill the process without writing anything. Outside the
    main thread (where Python cannot set handlers) nothing is installed, and the chain of the exception is
    the only evidence (see ``interrupted_by``).
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in INTERRUPT_SIGNALS}
            self.rearm()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def rearm(self) -> None:
        """(Re)install the handlers: Lightning leaves SIGINT ignored after it handled a KeyboardInterrupt."""
        for signum in self._previous:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.received = self.received or signal.Signals(signum).name
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")

    def interrupted_by(self, error: BaseException) -> str | None:
        """The signal that ended a run that raised ``error``, or None when it simply failed: the one these
        handlers received, else a KeyboardInterrupt or Lightning's SIGTERMException in the chain of ``error``
        (Lightning's ``sys.exit(1)`` is raised while handling the KeyboardInterrupt, its context)."""
        if self.received:
            return self.received
        seen: set[int] = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, KeyboardInterrupt):
                return "SIGINT"
            if isinstance(error, SIGTERMException):
                return "SIGTERM"
            error = error.__cause__ or error.__context__
        return None


def guarded(name: str, run, *args, interrupts: Interrupts | None = None, **kwargs) -> tuple[dict, object]:
    """``run(*args, **kwargs)``'s row and samples, or on an error a row saying the run failed and why (the
    traceback goes to the log) and no samples, so one method's failure does not end the comparison.

    An interrupt (see ``Interrupts``) is no failure: the row is ``{"method", "interrupted": <signal>}`` and
    the caller stops the bench. ``interrupts``' handlers are re-installed after the run either way."""
    try:
        return run(*args, **kwargs)
    except (Exception, SystemExit, KeyboardInterrupt) as error:  # noqa: BLE001 — reported, not raised
        close_failed_run()
        signal_name = (interrupts or Interrupts()).interrupted_by(error)
        if signal_name:
            log.warning("%s interrupted by %s; the bench writes its tables and stops", name, signal_name)
            return {"method": name, "interrupted": signal_name}, None
        log.exception("%s failed; the bench goes on with the other methods", name)
        return {"method": name, "failed": failure_reason(error)}, None
    finally:
        if interrupts is not None:
            interrupts.rearm()


def failure_reason(error: BaseException) -> str:
    """The report's reason for a failed run, on one line. jsonargparse raises an ArgumentError for a
    configuration it rejects (exits with code 2 where it is set to exit); any other SystemExit is reported
    with its code, not as a configuration error."""
    if isinstance(error, argparse.ArgumentError):
        return f"LightningCLI rejected its configuration: {original_message(error)}"
    if isinstance(error, SystemExit):
        if error.code == 2:
            return "LightningCLI rejected its configuration (the error is printed above the traceback)"
        return f"the run exited (SystemExit with code {error.code})"
    return f"{type(error).__name__}: {original_message(error)}"


def prepared_protocol(root: Path) -> list[str]:
    """A prepared root holds the splits of one protocol: every method runs with it (whatever its config
    names, e.g. SDCI's official Potsdam protocol); roots read as released: no override."""
    from rsseg.data.core.prepare import read_manifest

    if not (Path(root) / "manifest.json").is_file():
        return []
    return ["--data.init_args.protocol", read_manifest(root)["protocol"]["name"]]


# Datasets scored per (image, expression) with the referring metrics; every other dataset is semantic.
REFERRING_DATASETS = frozenset({"refsegrs", "rrsisd"})


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
              refiner_stage_args: list[str] = (), seeds: list[int] | None = None) -> Path:
    """Run the whole comparison; returns the run folder with results.{md,csv,json}, the manifest and plots.

    ``lightning_args`` go to every method's run, and their ``--trainer.*`` flags to the refiner's runs too;
    ``refiner_args`` go to the plan's refiner runs (its datamodule wraps the method's, so the methods'
    ``--data``/``--model`` arguments do not fit it) and ``refiner_stage_args`` to the refiner's preliminary
    stages (label embedding, VAE). ``seeds`` trains and tests every method once per seed; its row holds the
    mean and the std across seeds (:func:`seed_row`), its interval that of the seed-averaged metric.

    The tables are rewritten after every row (``meta["complete"]`` false until the end). A SIGINT/SIGTERM
    stops the bench: the interrupted method's row says so, the tables are written and KeyboardInterrupt is
    raised. When every row was run but some failed, ``BenchFailed`` is raised after everything is written.
    The run folder is created once the data and the reference rows are ready, and removed again if an error
    leaves it empty.

    Under DDP (``--trainer.devices N --trainer.strategy ddp``) Lightning re-runs this command in every rank:
    the ranks share the run folder (``RSSEG_BENCH_RUN_DIR``), run every method together, and rank 0 writes
    the report.
    """
    plan = load_plan(dataset, profile, methods)
    clock = StageClock(previous_stage_times(Path(out) / dataset, profile))
    if clock.previous:
        print(f"the last {profile} bench of {dataset} took {duration(sum(clock.previous.values()))}", flush=True)
    with clock.running(), Interrupts() as interrupts:
        with stage("data"):
            source = resolve_prepared_root(dataset, data_root, Path(cache), plan.prepare)
        if source.synthetic:
            print(SYNTHETIC_BANNER.format(dataset=dataset), flush=True)
        with stage("reference rows"):
            references = reference_rows(plan, source.prepared)
        inherited = bool(os.environ.get(RUN_DIR_ENV))  # a DDP rank: the launching rank owns the folder
        run_dir = shared_run_dir(Path(out) / dataset)
        try:
            progress = _run_plan(plan, source, run_dir, profile, references, interrupts, list(lightning_args),
                                 list(refiner_args), list(refiner_stage_args), seeds, clock, Path(cache))
        except BaseException:
            if not inherited:
                remove_if_empty(run_dir)
            raise
        finally:
            if os.environ.get(RUN_DIR_ENV) == str(run_dir):
                del os.environ[RUN_DIR_ENV]  # the next bench in this process gets a folder of its own
    if rank_zero_only.rank == 0:
        print("\n" + "\n".join(stage_lines(clock.summary())), flush=True)
    print(f"results: {run_dir}", flush=True)
    if progress.failed:
        raise BenchFailed(run_dir, progress.failed, total=len(progress.rows) - len(references))
    return run_dir


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if nothing was written in it: an early error must not leave empty run folders."""
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or already gone): what is there stays


def planned_rows(plan: BenchPlan) -> list[str]:
    """The names of the rows the plan's runs give, in run order: each method, then its refined row."""
    names = []
    for method in plan.configs:
        names.append(method)
        if plan.refiner and method in plan.refined:
            names.append(f"{plan.refiner}({method})")
    return names


@dataclass
class Progress:
    """The tables of a running bench, rewritten (atomically) after every row so a bench killed or interrupted
    mid-run keeps the rows it finished: ``meta["complete"]`` is false and ``meta["pending"]`` lists the rows
    not run yet until the final write. Only rank 0 writes (under DDP every rank runs the bench)."""

    run_dir: Path
    meta: dict
    manifest: dict | None
    rows: list[dict]
    pending: list[str]
    interrupted: str | None = None
    failed: list[str] = field(default_factory=list)
    clock: StageClock | None = None

    def add(self, row: dict) -> None:
        """Record a run's row (no longer pending), with the paper's numbers on real data, and write the tables."""
        if not self.meta.get("synthetic"):
            row = with_paper_columns(row, self.meta["dataset"])
        self.rows.append(row)
        self.skip(row["method"])
        if row.get("failed"):
            self.failed.append(row["method"])
        self.interrupted = self.interrupted or row.get("interrupted")
        self.write()

    def skip(self, name: str) -> None:
        """``name`` will not run (done, or a refined row whose method failed)."""
        if name in self.pending:
            self.pending.remove(name)

    def write(self, complete: bool = False) -> None:
        """results.{json,csv,md} and manifest.json as they stand (``complete`` only for the final write)."""
        if rank_zero_only.rank != 0:
            return
        with stage("tables"):
            self.meta |= {"complete": complete, "pending": [] if complete else list(self.pending)}
            if self.interrupted:
                self.meta["interrupted"] = self.interrupted
            if self.clock is not None:
                self.meta["stages"] = self.clock.summary()
            self.manifest["methods"] = manifest_methods(self.rows)
            write_text_atomically(self.run_dir / "manifest.json", json_text(self.manifest))
            add_intervals(self.rows, self.meta)  # recomputed as rows arrive: every row on the same resamples
            write_report(self.run_dir, self.rows, self.meta)


def _run_plan(plan: BenchPlan, source, run_dir: Path, profile: str, references: list[dict],
              interrupts: Interrupts, lightning_args: list[str], refiner_args: list[str],
              refiner_stage_args: list[str], seeds: list[int] | None = None,
              clock: StageClock | None = None, cache: Path | None = None) -> Progress:
    """Every method of ``plan`` (and its refinement) in ``run_dir``, the tables rewritten after each, then on
    rank 0 the plots and the W&B summary; the rows and which failed. Raises KeyboardInterrupt (after writing
    the tables) when interrupted."""
    dataset = plan.dataset
    tracking = Tracking(group=dataset, tags=(f"bench-{run_dir.name}", f"profile-{profile}"))
    progress = Progress(run_dir, bench_meta(plan, source, profile), None, list(references), planned_rows(plan),
                        clock=clock)
    if rank_zero_only.rank == 0:
        with stage("manifest"):
            progress.manifest = bench_manifest(plan, source, progress.rows)
        progress.meta |= {"device": progress.manifest["device"], "manifest": progress.manifest}
    progress.write()

    samples: dict[str, object] = {}
    trainer_args = trainer_flags(lightning_args)  # devices, strategy, …: the refiner's runs take them too
    refiner = (RefinerStages(plan, source.prepared, run_dir, tracking, [*trainer_args, *refiner_args],
                             [*trainer_args, *refiner_stage_args], cache=cache) if plan.refiner else None)
    try:
        for i, (method, config) in enumerate(plan.configs.items(), 1):
            print(f"\n==> rsseg bench {dataset}: method {i}/{len(plan.configs)}: {method}", flush=True)
            refined = refiner is not None and method in plan.refined
            runs = []
            for n, seed in enumerate(seeds or [None]):  # the refiner refines the first seed's maps
                runs.append(guarded(method, run_method, method, config, plan, source.prepared, run_dir, tracking,
                                    list(lightning_args), interrupts=interrupts, seed=seed,
                                    coarse_maps=refiner.coarse_root if refined and n == 0 else None))
                if "failed" in runs[-1][0] or "interrupted" in runs[-1][0]:
                    break
            row, samples[method] = seed_row([r for r, _ in runs]) if seeds else runs[0][0], runs[0][1]
            progress.add(row)
            _stop_if_interrupted(row)
            if refined:
                name = f"{plan.refiner}({method})"
                if "failed" in row:
                    progress.skip(name)
                    continue
                row, samples[name] = guarded(name, refiner.run, method, interrupts=interrupts)
                progress.add(row)
                _stop_if_interrupted(row)
    except KeyboardInterrupt:
        if not progress.interrupted:  # between runs: no row of its own, the tables say so
            progress.interrupted = interrupts.received or "SIGINT"
            progress.write()
        raise

    progress.write(complete=True)
    if rank_zero_only.rank == 0:  # under DDP every rank runs the bench; the first one reports
        with stage("plots"):
            plots = write_plots(run_dir, progress.rows, progress.meta, **qualitative_samples(samples))
        with stage("W&B summary"):
            log_summary_run(run_dir, progress.rows, progress.meta, progress.manifest, plots, tracking)
        progress.write(complete=True)  # the stage table with the plots and the summary
    if source.synthetic:
        print(SYNTHETIC_BANNER.format(dataset=dataset), flush=True)
    return progress


def _stop_if_interrupted(row: dict) -> None:
    """End the bench after an interrupted run (its row and the tables are written): no next method."""
    if row.get("interrupted"):
        raise KeyboardInterrupt(f"{row['method']} interrupted by {row['interrupted']}")


def bench_meta(plan: BenchPlan, source, profile: str) -> dict:
    """The tables' ``meta``: what was benched, on which data, when (the bench's start)."""
    dataset = plan.dataset
    return {
        "dataset": dataset,
        "task": bench_task(dataset),
        "evaluated_split": "test" if plan.evaluate == "test" else "val",
        "profile": profile,
        "synthetic": source.synthetic,
        "data_root": str(source.prepared),
        "raw_root": str(source.raw) if source.raw else None,
        "created": datetime.now().isoformat(timespec="seconds"),
    }


RUN_DIR_ENV = "RSSEG_BENCH_RUN_DIR"


def shared_run_dir(parent: Path) -> Path:
    """A new time-stamped run folder, or the one the launching rank chose (the DDP ranks it starts inherit
    the environment)."""
    if os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    run_dir = new_run_dir(parent)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def new_run_dir(parent: Path, now: datetime | None = None) -> Path:
    """Create ``parent/<YYYYmmdd-HHMMSS>``, or ``…-2``, ``…-3``, … when benches started in the same second
    have taken the name: ``mkdir`` is atomic, so concurrent benches (processes or threads) each get their own
    folder without a race between looking and creating."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        run_dir = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise FileExistsError(f"{parent}: every run folder name of {stamp} is taken")


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
    manifest["methods"] = manifest_methods(rows)
    manifest["plan"] = {"dataset": plan.dataset, "profile": plan.profile, "evaluate": plan.evaluate}
    return manifest


def manifest_methods(rows: list[dict]) -> dict:
    """The manifest's record of each run row (reference rows have none): every config file it read (and its
    stages'), seed, protocol and checkpoint, as far as the run got."""
    keys = ("configs", "stage_configs", "seed", "protocol", "checkpoint")
    return {row["method"]: {k: row[k] for k in keys if k in row}
            for row in rows if "configs" in row or "failed" in row or "interrupted" in row}


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
