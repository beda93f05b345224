"""The LightningCLI of ``rsseg fit/validate/test/predict``, built from config arguments.

One place builds a Lightning run from arguments, for the command line (:mod:`rsseg.cli`) and the benchmark
runner (:mod:`rsseg.bench.runs`) alike. Over Lightning's CLI it adds: W&B as the default logger (in the parsed
config, so ``--print_config`` shows it; :mod:`rsseg.tracking`), configuration
errors raised instead of printed with the whole usage, ``num_classes`` taken from the datamodule,
checkpoints read safely with the user's explicit settings kept (:mod:`rsseg.checkpoints`), and progress
that suits where it is shown (:mod:`rsseg.progress`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI

import rsseg.data  # noqa: F401  (short class names in configs)
import rsseg.tasks  # noqa: F401
from rsseg.checkpoints import CheckpointError, names_a_file, read_checkpoint, reconcile_hparams
from rsseg.data.core.prepare import is_synthetic_root
from rsseg.errors import original_message
from rsseg.infer import PredictionWriter
from rsseg.legacy import convert_legacy_hparams
from rsseg.paper_numbers import compare_test_metrics
from rsseg.progress import progress_callback
from rsseg.tracking import (
    RecordedConfig,
    WandbEvaluationLogger,
    dataset_name,
    default_logger,
    default_logger_config,
    describe_run,
    method_name,
)

logger = logging.getLogger(__name__)


class RssegCLI(LightningCLI):
    """Lightning's CLI with rsseg's defaults and checks (module docstring)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        # the default logger is a default of the config (not swapped in when the trainer is built), so that
        # --print_config and the saved config.yaml show the logger the run uses
        parser.set_defaults({"trainer.logger": default_logger_config()})

    def parse_arguments(self, parser, args) -> None:
        self._args = args
        self._explicit = None
        self._ckpt_report = None
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """A ``--ckpt_path`` checkpoint's hyper-parameters fill in what the user did not set; see
        :mod:`rsseg.checkpoints` (Lightning's own version lets them replace explicit settings)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is False:
            raise CheckpointError("--weights_only false would unpickle the checkpoint (a file can run code that "
                                  "way); rsseg loads checkpoints with weights_only=True")
        config.weights_only = True  # also for remote checkpoints, where Lightning would default to False
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not names_a_file(ckpt_path):
            return
        # checkpoints of the layout before the tasks took their network as ``net`` are read in the new one
        hparams = convert_legacy_hparams(dict(read_checkpoint(ckpt_path).get("hyper_parameters") or {}))
        model = config.model
        stored_class = hparams.get("_class_path")
        if stored_class and stored_class != model.class_path:
            raise CheckpointError(f"{ckpt_path}: a {stored_class} checkpoint, but the configuration builds a "
                                  f"{model.class_path}; use the config it was trained with")
        explicit_model = self._explicit_config(subcommand).get("model") or {}
        explicit = set((explicit_model.get("init_args") or {}).keys())
        report = reconcile_hparams(hparams, model.init_args.as_dict(), explicit)
        if report.from_checkpoint:
            update = {"class_path": model.class_path, "init_args": report.from_checkpoint}
            self.config = self.parser.parse_object({subcommand: {"model": update}}, self.config)
        if report.overridden:
            logger.warning("%s: trained with other settings; the configured ones are used: %s", ckpt_path,
                           report.describe())
        if report.unknown:
            logger.warning("%s: stored settings that %s no longer has are ignored: %s", ckpt_path,
                           model.class_path, ", ".join(report.unknown))
        self._ckpt_report = (ckpt_path, report)

    def _explicit_config(self, subcommand: str):
        """The subcommand's settings the user gave (config files and flags), without defaults; parsed once."""
        if self._explicit is None:
            self._explicit = self.parser.parse_args(self._args, defaults=False)
        return self._explicit[subcommand]

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            if self._ckpt_report is None:
                raise
            raise self._checkpoint_error(error, "the model could not be built") from error
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._check_num_classes(subcommand)
        if subcommand == "fit":
            self._rank_checkpoints_only_with_validation()

    def _rank_checkpoints_only_with_validation(self) -> None:
        """Without a val split (e.g. ``protocol: official``) nothing can rank checkpoints by a ``val/`` metric,
        and Lightning would silently write none but ``last.ckpt``: such callbacks keep the latest epoch under
        their own file name instead (the configs' ``best.ckpt``), and the log says so."""
        has_val_split = getattr(self.datamodule, "has_val_split", None)
        try:
            if has_val_split is None or has_val_split():
                return
        except Exception:  # noqa: BLE001 — a root that cannot be read fails fit itself, with its own message
            return
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and (callback.monitor or "").startswith("val/"):
                logger.warning("no validation split in this protocol: checkpoints cannot be ranked by %s; "
                               "'%s.ckpt' will hold the last epoch", callback.monitor, callback.filename or "epoch…")
                callback.monitor = None
                callback._save_on_train_epoch_end = True  # its save_on_train_epoch_end: no validation end comes

    def _check_num_classes(self, subcommand: str) -> None:
        """``num_classes`` comes from the datamodule; an explicit other value is an error, not overwritten."""
        given = ((self._explicit_config(subcommand).get("model") or {}).get("init_args") or {}).get("num_classes")
        actual = getattr(self.datamodule, "num_classes", None)
        if given is not None and actual is not None and given != actual:
            raise ValueError(f"--model.init_args.num_classes {given} contradicts the data: "
                             f"{type(self.datamodule).__name__} has {actual} classes (num_classes comes from "
                             "the datamodule; drop the setting)")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as error:
            if self._ckpt_report is None or "state_dict" not in str(error):
                raise
            raise self._checkpoint_error(error, "its weights do not fit the configured model") from error

    def after_test(self) -> None:
        """On real data, the test metrics beside the paper's (``experiments/paper_numbers.yaml``): printed, and
        logged as ``test/paper/<m>`` and ``test/diff/<m>`` (so the W&B summary holds them)."""
        data = self.datamodule
        root = getattr(data, "root", None)
        if root is None or is_synthetic_root(root):
            return
        columns, lines = compare_test_metrics(method_name(self.model), dataset_name(data) or "",
                                              getattr(data, "protocol", None), self.trainer.callback_metrics)
        if not columns:
            return
        if self.trainer.is_global_zero:
            print("\n".join(lines), flush=True)
        for run_logger in self.trainer.loggers:
            run_logger.log_metrics(columns)

    def _checkpoint_error(self, error: Exception, what: str) -> CheckpointError:
        """``error`` as a CheckpointError naming the checkpoint and the settings that differ from it."""
        ckpt_path, report = self._ckpt_report
        differences = f"; configured unlike the checkpoint: {report.describe()}" if report.overridden else ""
        return CheckpointError(f"{ckpt_path}: {what} ({original_message(error)}){differences}")

    def instantiate_trainer(self, **kwargs):
        """The default logger learns the run's method, dataset, subcommand and folder before its run starts
        (:mod:`rsseg.tracking`); ``trainer.logger`` true or null asks for rsseg's default logger, not Lightning's
        TensorBoard/CSV one."""
        trainer = self._get(self.config_init, "trainer", default={})
        run_logger = kwargs.get("logger", trainer.get("logger"))
        if "logger" not in kwargs and (run_logger is None or run_logger is True):
            run_logger = kwargs["logger"] = default_logger()
        describe_run(run_logger, self.model, self.datamodule, trainer.get("default_root_dir"), self.subcommand)
        return super().instantiate_trainer(**kwargs)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> object:
        """rsseg's progress (a bar in a terminal, log lines elsewhere) unless the configuration turns progress
        off or brings its own bar; without a logger (``--trainer.logger false``) the configs' learning-rate
        monitor, which needs one, is left out instead of failing the run; ``predict`` writes its maps with a
        :class:`rsseg.infer.PredictionWriter` unless the configuration has a prediction writer of its own."""
        given = config.get("callbacks") or []
        config = {**config, "callbacks": given if isinstance(given, list) else [given]}  # one flag gives one object
        if config.get("logger") in (False, None, []):
            monitors = [c for c in config["callbacks"] if isinstance(c, LearningRateMonitor)]
            if monitors:
                logger.info("no logger: the learning-rate monitor is left out")
                config["callbacks"] = [c for c in config["callbacks"] if c not in monitors]
        configured = [*config["callbacks"], *callbacks, *self.trainer_defaults.get("callbacks", [])]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, progress_callback()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in configured):
            callbacks = [*callbacks, PredictionWriter()]  # predictions on disk (docs/inference.md)
        return super()._instantiate_trainer(config, callbacks)



def build_cli(args: Sequence[str], run: bool = True) -> RssegCLI:
    """The LightningCLI for ``args`` (a subcommand first when ``run``); model and datamodule are chosen by
    ``class_path``."""
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
        # configuration errors raise (one line from ``main``) instead of printing the whole usage and exiting
        parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in RssegCLI.subcommands()}},
        args=list(args),
        run=run,
    )


