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
import warnings
from collections.abc import Sequence

LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI; see `rsseg fit --help`)",
    "validate": "evaluate on the validation split",
    "test": "evaluate on the test split",
    "predict": "predict label maps",
}


def _lightning_cli(args: Sequence[str], run: bool = True):
    """Build the LightningCLI; model and datamodule are chosen by ``class_path``."""
    from lightning import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    import rsseg.data  # noqa: F401  (short class names in configs)
    import rsseg.tasks  # noqa: F401
    from rsseg.tracking import RecordedConfig, WandbEvaluationLogger, default_logger

    class RssegCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

        def instantiate_trainer(self, **kwargs):
            """W&B is the default logger (Lightning's would be TensorBoard/CSV): see :mod:`rsseg.tracking`."""
            trainer = self._get(self.config_init, "trainer", default={})
            if trainer.get("logger") in (None, True) and "logger" not in kwargs:
                kwargs["logger"] = default_logger(self.model, self.datamodule, trainer.get("default_root_dir"),
                                                  self.subcommand)
            return super().instantiate_trainer(**kwargs)

    # LightningCLI parses ``args``, never sys.argv: sys.argv stays the process's own, which Lightning's DDP
    # launcher re-executes for the other ranks (`rsseg fit …` and `rsseg bench …` alike). In-process callers
    # (the bench, tests) have other arguments there, which LightningCLI would warn about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    return RssegCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=42,
        save_config_callback=RecordedConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [WandbEvaluationLogger(stage="test"),
                                        WandbEvaluationLogger(stage="validate")]},
        auto_configure_optimizers=False,
        args=list(args),
        run=run,
    )


def _build_parser() -> argparse.ArgumentParser:
    from rsseg.data.registry import DATAMODULES, PREPARERS, SYNTHESIZERS

    parser = argparse.ArgumentParser(
        prog="rsseg",
        description="rsseg: remote-sensing segmentation benchmarks on PyTorch Lightning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Training commands take a YAML config: rsseg fit --config experiments/unet/potsdam.yaml",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)

    prepare = sub.add_parser("prepare", help="cut an official dataset release into training patches")
    prepare.add_argument("dataset", choices=sorted(PREPARERS))
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
    synth.add_argument("dataset", choices=sorted(SYNTHESIZERS))
    synth.add_argument("dst", help="folder to write")
    synth.add_argument("--seed", type=int, default=0)

    bench = sub.add_parser(
        "bench", help="train and test every applicable method; write a comparison",
        epilog="Arguments after -- go to every method's LightningCLI, e.g. -- --trainer.max_steps 10. A plan's "
        "refiner (IDGBR) wraps the methods' datamodules, so it takes its own: --refiner-args for its runs, "
        "--refiner-stage-args for its label embedding and VAE stages.",
    )
    bench.add_argument("dataset", choices=sorted(DATAMODULES), type=_dataset_key,
                       help="dataset with a plan in experiments/bench/")
    bench.add_argument("--data-root", default=None, help="raw or prepared root (default: synthetic data)")
    bench.add_argument("--profile", default="smoke",
                       help="smoke (minutes on a CPU, offline small models) or paper (the papers' schedules and "
                       "models); default: smoke")
    bench.add_argument("--methods", default=None, help="comma-separated subset of methods")
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


def _log_to_stderr() -> None:
    """rsseg's own INFO messages on stderr (Lightning configures its own logger)."""
    logger = logging.getLogger("rsseg")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from rsseg.tracking import finish_wandb_run

        try:
            _lightning_cli(argv)
        finally:
            finish_wandb_run()
        return 0
    _log_to_stderr()
    parser = _build_parser()
    argv, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(argv)
    if extra and args.command != "bench":
        parser.error("arguments after -- are only accepted by `rsseg bench`")
    args.lightning_args = extra
    if args.command is None:
        parser.print_help()
        return 0

    from rsseg.bench.plan import PlanError
    from rsseg.data.errors import DataError

    try:
        return _run_command(args)
    except (DataError, PlanError) as error:
        print(f"rsseg {args.command}: error: {error}", file=sys.stderr)
        return 2


def _run_command(args: argparse.Namespace) -> int:
    from rsseg.data.registry import PREPARERS, SYNTHESIZERS

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
    elif args.command == "synth":
        files = SYNTHESIZERS[args.dataset](args.dst, seed=args.seed)
        print(f"wrote {len(files)} synthetic {args.dataset} files to {args.dst}")
    elif args.command == "bench":
        from rsseg.bench.runner import run_bench

        methods = args.methods.split(",") if args.methods else None
        run_bench(args.dataset, data_root=args.data_root, profile=args.profile, methods=methods,
                  out=args.out, cache=args.cache, lightning_args=args.lightning_args,
                  refiner_args=args.refiner_args, refiner_stage_args=args.refiner_stage_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
