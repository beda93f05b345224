"""The ``rsseg`` command: LightningCLI for fit/validate/test/predict, plus prepare, synth and bench.

``rsseg fit --config experiments/unet/potsdam.yaml`` runs the LightningCLI; the data-handling and
benchmark commands are plain argparse front-ends over functions in :mod:`rsseg.data` and
:mod:`rsseg.bench`.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import shlex
import sys
from collections.abc import Sequence

from rsseg.errors import original_message

# The LightningCLI subcommands (:mod:`rsseg.lightning_cli` runs them; listed here so --help stays fast).
LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI; see `rsseg fit --help`)",
    "validate": "evaluate on the validation split",
    "test": "evaluate on the test split",
    "predict": "predict label maps",
}
OWN_COMMANDS = ("prepare", "synth", "bench", "export", "infer", "rehearse-cache")
# Dataset names, written out so that parsing and --help import nothing heavy (tests/test_cli.py pins them to
# rsseg.data.registry): every dataset has a datamodule and a synthetic twin; these are cut into patches first.
DATASETS = ("chn6cug", "loveda", "potsdam", "refsegrs", "rrsisd", "uavid", "vaihingen")
PREPARED_DATASETS = ("potsdam", "uavid", "vaihingen")


def _build_parser() -> argparse.ArgumentParser:
    from rsseg import __version__

    parser = argparse.ArgumentParser(
        prog="rsseg",
        description="rsseg: remote-sensing segmentation benchmarks on PyTorch Lightning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Training commands take a YAML config: rsseg fit --config experiments/unet/potsdam.yaml",
    )
    parser.add_argument("--version", action="version", version=f"rsseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)

    prepare = sub.add_parser("prepare", help="cut an official dataset release into training patches")
    prepare.add_argument("dataset", choices=PREPARED_DATASETS)
    prepare.add_argument("--src", required=True, help="folder with the extracted official archives")
    prepare.add_argument("--dst", required=True, help="prepared root to create")
    prepare.add_argument("--patch-size", type=int, default=1024)
    prepare.add_argument("--stride", type=int,
                         help="training window stride (default: patch size; evaluation patches never overlap)")
    prepare.add_argument("--protocol", help="split protocol (default: the dataset's; ISPRS: unetformer)")
    prepare.add_argument("--test-labels", choices=("eroded", "full"),
                         help="ISPRS test labels: eroded noBoundary (default) or full")
    prepare.add_argument("--bands", choices=("RGB", "IRRG", "RGBIR"), help="ISPRS image bands (Potsdam)")
    prepare.add_argument("--strict", action="store_true", default=None,
                         help="fail on unknown label colours instead of ignoring them")
    prepare.add_argument("--workers", type=int, default=1, help="tiles cut in parallel processes")
    prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")

    synth = sub.add_parser("synth", help="write a small synthetic dataset in the official layout")
    synth.add_argument("dataset", choices=DATASETS)
    synth.add_argument("dst", help="folder to write")
    synth.add_argument("--seed", type=int, default=0)

    export = sub.add_parser("export", help="write a checkpoint's weights without the optimiser state (to share)")
    export.add_argument("--ckpt", required=True, help="a Lightning checkpoint written by rsseg fit")
    export.add_argument("--out", required=True, help="the weights-only file to write (rsseg test/predict take it)")

    infer = sub.add_parser(
        "infer", help="segment your own scenes (GeoTIFF, PNG, JPEG) with a trained checkpoint",
        description="Segment scenes of any size, read window by window, with a checkpoint of a semantic method. "
        "A georeferenced scene gives <output>/<name>.tif (uint8 classes on the scene's grid, colour table, nodata "
        "255); others give <name>.png (palette PNG). See docs/inference.md.")
    infer.add_argument("--ckpt", required=True, help="a checkpoint written by rsseg fit, or rsseg export's file")
    infer.add_argument("--input", required=True, nargs="+", metavar="PATH",
                       help="image files, folders of images, or glob patterns (quote them)")
    infer.add_argument("--output", required=True, help="folder for the label rasters")
    infer.add_argument("--window", type=_positive_int, help="window size in pixels (default: the model's "
                       "inference_window, else 1024)")
    infer.add_argument("--overlap", type=int, help="window overlap in pixels (default: the model's, else window/4)")
    infer.add_argument("--batch", type=_positive_int, default=4, help="windows per forward pass (default: 4)")
    infer.add_argument("--bands", type=_band_list, help="1-based bands to read, e.g. 3,2,1 (default: all)")
    infer.add_argument("--value-scale", type=float, help="the raw value that stands for full brightness when the "
                       "pixel type differs from training's (e.g. 65535 or 4095 for 16-bit scenes)")
    infer.add_argument("--preview", action="store_true", help="also write <name>_preview.png in the class colours")
    infer.add_argument("--probabilities", action="store_true",
                       help="also write <name>_prob.tif: one band per class, probability × 255 as uint8")
    infer.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: cuda when available)")

    rehearse = sub.add_parser(
        "rehearse-cache", help="write random-weight copies of every pretrained model, to rehearse offline",
        description="Write a Hugging Face hub cache holding RANDOMLY INITIALISED weights of the real architectures "
        "of every pretrained model the configs name, in the hub's layout and file names, so that every loading "
        "path can be rehearsed with HF_HOME=DIR HF_HUB_OFFLINE=1 (make rehearse). Never use it for results. "
        "See docs/rehearsal.md.")
    rehearse.add_argument("dir", help="the folder to use as HF_HOME")
    rehearse.add_argument("--only", type=lambda text: text.split(","), metavar="REPO,…",
                          help="only these repositories (hub ids)")

    bench = sub.add_parser(
        "bench", help="train and test every applicable method; write a comparison",
        epilog="Arguments after -- go to every method's LightningCLI, e.g. -- --trainer.max_steps 10. A plan's "
        "refiner (IDGBR) wraps the methods' datamodules, so it takes its own: --refiner-args for its runs, "
        "--refiner-stage-args for its label embedding and VAE stages.",
    )
    bench.add_argument("dataset", choices=DATASETS, type=_dataset_key,
                       help="dataset with a plan in experiments/bench/")
    bench.add_argument("--data-root", default=None, help="raw or prepared root (default: synthetic data)")
    bench.add_argument("--profile", default="smoke",
                       help="smoke (minutes on a CPU, offline small models) or paper (the papers' schedules and "
                       "models); default: smoke")
    bench.add_argument("--methods", default=None, help="comma-separated subset of methods")
    seeds = bench.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seed_list, default=None, metavar="S,S,…",
                       help="train and test every method once per seed (the table shows mean ± std across seeds)")
    seeds.add_argument("--seed-count", type=_positive_int, default=None, metavar="N",
                       help="the same as --seeds 0,1,…,N-1 (make bench SEEDS=N)")
    bench.add_argument("--out", default="results/bench", help="results folder")
    bench.add_argument("--cache", default=".cache/rsseg", help="folder for synthetic and prepared data")
    bench.add_argument("--refiner-args", default="", type=shlex.split, metavar="ARGS",
                       help='LightningCLI arguments of the refiner runs, one quoted string: "--trainer.max_steps 10"')
    bench.add_argument("--refiner-stage-args", default="", type=shlex.split, metavar="ARGS",
                       help="LightningCLI arguments of the refiner's label embedding and VAE stages")
    return parser


def _dataset_key(name: str) -> str:
    """A dataset's key; also accepts the configs' file spelling (``chn6_cug`` for ``chn6cug``)."""
    return name.lower().replace("_", "")


def _seed_list(text: str) -> list[int]:
    """``0,1,2`` → [0, 1, 2]: distinct non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and non-negative, got {text!r}")
    return seeds


def _band_list(text: str) -> tuple[int, ...]:
    """``3,2,1`` → (3, 2, 1): positive band numbers, as GDAL counts them."""
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        bands = ()
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers from 1, got {text!r}")
    return bands


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment: callers of :func:`main` (tests, notebooks) swap it, and a
    handler holding the first one would write to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """rsseg's own INFO messages on stderr (Lightning configures its own logger)."""
    logger = logging.getLogger("rsseg")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rsseg`` command; every error is one line ``rsseg <command>: error: …`` and exit code 2
    (``--verbose``: with its traceback), an interrupt exits 130 and a bench with failed methods 1."""
    argv, verbose = _pop_verbose(list(sys.argv[1:] if argv is None else argv))
    prog = f"rsseg {argv[0]}" if argv and argv[0] in (*LIGHTNING_COMMANDS, *OWN_COMMANDS) else "rsseg"
    _log_to_stderr()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 — the one place where every error becomes one line
        return _report_error(prog, error, verbose)


VERBOSE_FLAG = "--verbose"
# Errors (and their subclasses) whose message is the whole story: a file, a setting, a checkpoint, a config key.
# Others are likely bugs, and their line says how to see the traceback.
USER_ERRORS = ("DataError", "PlanError", "CheckpointError", "ValueError", "OSError", "ArgumentError",
               "MissingExtraError")


def _pop_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without rsseg's own ``--verbose`` (arguments after ``--`` belong to Lightning)."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    if VERBOSE_FLAG not in own:
        return argv, False
    position = own.index(VERBOSE_FLAG)
    return argv[:position] + argv[position + 1:], True


def _report_error(prog: str, error: Exception, verbose: bool) -> int:
    """Print ``error`` as one line (its traceback first with ``verbose``); exit code 2."""
    import traceback

    from rsseg.extras import MissingExtraError

    missing = error
    while missing is not None and not isinstance(missing, MissingExtraError):  # jsonargparse wraps it in its own
        missing = missing.__cause__ or missing.__context__
    error = missing or error
    if verbose:
        traceback.print_exception(error)
    kind = type(error).__name__
    hint = ""
    if not verbose and not any(cls.__name__ in USER_ERRORS for cls in type(error).__mro__):
        hint = f" [{kind}; rerun with {VERBOSE_FLAG} for the traceback]"
    print(f"{prog}: error: {original_message(error)}{hint}", file=sys.stderr)
    return 2


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in LIGHTNING_COMMANDS and argv[1] in ("-h", "--help"):
        print(lightning_help(argv[0]), end="")
        return 0
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from rsseg.lightning_cli import build_cli
        from rsseg.tracking import finish_wandb_run

        exit_code = 1
        try:
            build_cli(argv)
            exit_code = 0
        finally:
            finish_wandb_run(exit_code)
        return 0
    parser = _build_parser()
    argv, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(argv)
    if extra and args.command != "bench":
        parser.error("arguments after -- are only accepted by `rsseg bench`")
    args.lightning_args = extra
    if args.command is None:
        parser.print_help()
        return 0
    return _run_command(args)


HELP_COLUMNS = 100  # the width of the LightningCLI help texts (cached, so not the terminal's)


def lightning_help(command: str) -> str:
    """``rsseg <fit|validate|test|predict> --help``: the LightningCLI's text, which takes seconds to build (torch,
    Lightning and every model are imported), kept in the user's cache under a key of everything it is made of —
    the versions of rsseg, Lightning, jsonargparse and torch and rsseg's own files — so it is built once
    (``make install`` builds it) and answered at once after. It is laid out for HELP_COLUMNS whatever the
    terminal, so that the text built by ``make install`` is the one a terminal gets."""
    import hashlib
    import io
    import os
    from contextlib import redirect_stdout
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    from rsseg import __version__
    from rsseg.fingerprint import code_fingerprint

    sources = code_fingerprint()
    versions = []
    for name in ("lightning", "jsonargparse", "torch"):
        try:
            versions.append(version(name))
        except PackageNotFoundError:
            versions.append("")
    key = hashlib.sha256(repr((command, __version__, versions, sources)).encode()).hexdigest()[:20]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rsseg" / "help" / f"{command}-{key}.txt"
    if cache.is_file():
        return cache.read_text()
    from rsseg.lightning_cli import build_cli

    text, columns = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        with redirect_stdout(text):
            build_cli([command, "--help"])
    except SystemExit:
        pass
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for stale in cache.parent.glob(f"{command}-*.txt"):
            stale.unlink(missing_ok=True)
        partial = cache.with_name(cache.name + f".{os.getpid()}")
        partial.write_text(text.getvalue())
        partial.replace(cache)
    except OSError:  # a read-only home: answer anyway, slowly
        pass
    return text.getvalue()


def _run_command(args: argparse.Namespace) -> int:
    from rsseg.data.registry import PREPARERS

    if args.command == "prepare":
        preparer = PREPARERS[args.dataset]
        optional = {k: getattr(args, k) for k in ("protocol", "test_labels", "bands", "strict")}
        optional = {k: v for k, v in optional.items() if v is not None}
        unsupported = sorted(set(optional) - set(inspect.signature(preparer).parameters))
        if unsupported:
            names = ", ".join("--" + k.replace("_", "-") for k in unsupported)
            print(f"rsseg prepare: error: {names} does not apply to {args.dataset}", file=sys.stderr)
            return 2
        preparer(args.src, args.dst, patch_size=args.patch_size, stride=args.stride, workers=args.workers,
                 force=args.force, **optional)
    elif args.command == "export":
        from rsseg.checkpoints import export_weights

        sizes = export_weights(args.ckpt, args.out)
        print(f"wrote {args.out}: {sizes['export'] / 2**20:.1f} MiB (the checkpoint: {sizes['checkpoint'] / 2**20:.1f} "
              "MiB); test it with rsseg test --config <its config> --ckpt_path " + args.out)
    elif args.command == "infer":
        return _infer(args)
    elif args.command == "rehearse-cache":
        from rsseg.rehearsal.cache import write_cache

        for record in write_cache(args.dir, args.only):
            print(f"{record['status']:>8} {record['bytes'] / 2**20:9.1f} MiB  {record['repo_id']}")
        print(f"{args.dir}: a rehearsal cache (random weights); use it with HF_HOME={args.dir} HF_HUB_OFFLINE=1")
    elif args.command == "synth":
        from rsseg.data.synthetic import write_synthetic

        files = write_synthetic(args.dataset, args.dst, seed=args.seed)
        print(f"wrote {len(files)} synthetic {args.dataset} files to {args.dst}")
    elif args.command == "bench":
        from rsseg.bench.runner import BenchFailed, run_bench

        methods = args.methods.split(",") if args.methods else None
        try:
            run_bench(args.dataset, data_root=args.data_root, profile=args.profile, methods=methods,
                      out=args.out, cache=args.cache, lightning_args=args.lightning_args,
                      refiner_args=args.refiner_args, refiner_stage_args=args.refiner_stage_args,
                      seeds=args.seeds or (list(range(args.seed_count)) if args.seed_count else None))
        except BenchFailed as failed:
            print(f"rsseg bench: error: {failed}", file=sys.stderr)
            return 1
    return 0


def _infer(args: argparse.Namespace) -> int:
    """``rsseg infer``: 0 when every scene was written, 1 when some failed (listed at the end)."""
    from rsseg.infer.command import InferOptions, run_infer

    options = InferOptions(window=args.window, overlap=args.overlap, batch=args.batch, bands=args.bands,
                           value_scale=args.value_scale, preview=args.preview, probabilities=args.probabilities)
    report = run_infer(args.ckpt, args.input, args.output, options, device=args.device)
    print(f"rsseg infer: wrote {len(report.written)} file(s) to {args.output}")
    if report.failed:
        print(f"rsseg infer: {len(report.failed)} input(s) failed:", file=sys.stderr)
        for path, reason in report.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
