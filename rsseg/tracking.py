"""W&B tracking of every rsseg run: the default logger, what each run records, and what an evaluation logs.

Every ``rsseg fit/validate/test`` logs through Lightning's ``WandbLogger`` (:class:`RssegWandbLogger`) to
project ``rsseg`` (or ``$WANDB_PROJECT``), grouped by dataset and tagged by method and protocol, with the full
config and the reproducibility manifest; offline unless the user configured W&B. The default logger is the
default of ``trainer.logger`` in the parsed config, so ``--print_config`` and the saved ``config.yaml`` show
it. Without ``wandb`` installed (it is the ``rsseg[wandb]`` extra) the default is :class:`RssegCSVLogger`:
metrics still land in CSV files. A config's own ``trainer.logger`` wins (``--trainer.logger false`` turns
logging off).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from rsseg.callbacks import EvaluationSamples
from rsseg.extras import require
from rsseg.manifest import run_manifest

DEFAULT_PROJECT = "rsseg"
WANDB_EXTRA = "pip install 'rsseg[wandb]'"

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """Online only when the user configured W&B (``WANDB_MODE`` or an API key); offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    return "online" if netrc.is_file() and "api.wandb.ai" in netrc.read_text() else "offline"


def wandb_project() -> str:
    return os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


def method_name(model) -> str:
    """A task's method as the comparison names it (``unet``, ``d2ls``, ``lavt``, …)."""
    return getattr(model, "method_name", None) or type(model).__name__.removesuffix("Task").lower()


def dataset_name(datamodule) -> str | None:
    spec = getattr(datamodule, "spec", None)
    return spec.name if spec is not None else getattr(datamodule, "dataset_name", None)


def run_tags(model, datamodule) -> list[str]:
    spec = getattr(datamodule, "spec", None)
    return [method_name(model), *([spec.protocol] if spec is not None else [])]


def wandb_installed() -> bool:
    """Whether ``wandb`` can be imported (without importing it: that takes seconds); an import hook that hides
    it raises instead of answering None."""
    try:
        return importlib.util.find_spec("wandb") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["wandb"] is None, i.e. blocked
        return False


class RssegWandbLogger(WandbLogger):
    """rsseg's default logger: a ``WandbLogger`` whose run-specific fields come from the run it logs.

    :meth:`describe_run` (the CLI calls it before the W&B run starts) names the run after the method, groups
    it by dataset (unless ``group`` is set), tags it by method and protocol, sets its ``job_type`` to the
    subcommand (unless set) and puts it under ``save_dir`` (the trainer's ``default_root_dir``, else
    ``runs/``): checkpoints go to ``<save_dir>/<project>/<run id>/checkpoints``, and ``./rsseg/`` in a
    checkout is the package. Only W&B's own settings are arguments: jsonargparse carries a default logger's
    arguments over to another logger class a config names when that class takes them, so a shared name such
    as ``name`` or ``save_dir`` would leak into e.g. a ``CSVLogger``.
    """

    def __init__(self, project: str | None = None, mode: str | None = None, entity: str | None = None,
                 group: str | None = None, job_type: str | None = None, notes: str | None = None) -> None:
        super().__init__(project=project or wandb_project(), mode=mode or wandb_mode(), entity=entity,
                         group=group, job_type=job_type, notes=notes, save_dir=None)

    def describe_run(self, model, datamodule, save_dir: str | Path | None, job_type: str | None) -> None:
        """Fill in what only the run knows; the W&B run reads ``_wandb_init`` when it starts, so a run that
        already started is left as it is."""
        if self._experiment is not None:
            return
        init = self._wandb_init
        init["name"] = init.get("name") or method_name(model)
        init["group"] = init.get("group") or dataset_name(datamodule)
        init["job_type"] = init.get("job_type") or job_type or "fit"
        init["tags"] = list(dict.fromkeys([*(init.get("tags") or ()), *run_tags(model, datamodule)]))
        init["dir"] = init.get("dir") or str(save_dir or "runs")
        self._name, self._save_dir = init["name"], init["dir"]


class RssegCSVLogger(CSVLogger):
    """The default logger where ``wandb`` is not installed: Lightning's ``CSVLogger`` under the same
    ``save_dir`` as W&B's, one folder per method (``<save_dir>/<method>/version_<n>/metrics.csv``); no
    arguments, for the reason :class:`RssegWandbLogger` gives."""

    def __init__(self) -> None:
        super().__init__(save_dir="runs")

    def describe_run(self, model, datamodule, save_dir: str | Path | None, job_type: str | None) -> None:
        """Place the logs (before anything is written); says once per process why they are CSV files."""
        if self._experiment is not None:
            return
        global _told_no_wandb
        CSVLogger.__init__(self, save_dir=str(save_dir or "runs"), name=method_name(model))
        if not _told_no_wandb:
            _told_no_wandb = True
            log.info("wandb is not installed: metrics go to CSV files under %s (for W&B tracking: %s)",
                     self.root_dir, WANDB_EXTRA)


_told_no_wandb = False  # the CSV default says why once per process


def default_logger_config() -> dict:
    """The default of ``trainer.logger``: W&B where it is installed (project and mode resolved now, so the
    printed config shows them), else CSV files."""
    if wandb_installed():
        return {"class_path": f"{__name__}.RssegWandbLogger",
                "init_args": {"project": wandb_project(), "mode": wandb_mode()}}
    return {"class_path": f"{__name__}.RssegCSVLogger"}


def default_logger() -> Logger:
    """The default logger as an object, for a run whose config asks for "the default" (``true``/``null``)."""
    return RssegWandbLogger() if wandb_installed() else RssegCSVLogger()


def describe_run(loggers, model, datamodule, save_dir: str | Path | None, job_type: str | None) -> None:
    """Let each of ``loggers`` (one, a list, or none) that takes them fill in the run's name, group, folder…"""
    for run_logger in loggers if isinstance(loggers, list | tuple) else [loggers]:
        if isinstance(run_logger, RssegWandbLogger | RssegCSVLogger):
            run_logger.describe_run(model, datamodule, save_dir, job_type)


def finish_wandb_run(exit_code: int = 0) -> None:
    """End the process's W&B run (WandbLogger leaves it open; the next logger in the process would join it).
    Nothing to end where ``wandb`` was never imported (or is not installed)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


class RecordedConfig(SaveConfigCallback):
    """Saves ``config.yaml`` as Lightning does, and logs the full config and the run manifest to every
    logger (W&B: ``config`` and ``manifest`` in the run's config; the method and protocol as tags)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        manifest = run_manifest(trainer.datamodule, seed=config.get("seed_everything"))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config, "manifest": manifest})
            if isinstance(logger, WandbLogger) and hasattr(logger.experiment, "tags"):
                run = logger.experiment
                run.tags = tuple(dict.fromkeys([*run.tags, *run_tags(pl_module, trainer.datamodule)]))


class WandbEvaluationLogger(EvaluationSamples):
    """After a test run (or a ``validate`` run): the per-class metrics as a W&B Table, the confusion matrix
    as W&B's confusion-matrix chart, and the first ``num_samples`` images with their ground truth and
    prediction as class-labelled W&B masks. Nothing happens without a WandbLogger."""

    def _end(self, trainer, pl_module) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        prefix, classes = "test" if self.stage == "test" else "val", self.classes
        for logger in loggers:
            table = per_class_rows(trainer.callback_metrics, prefix, classes)
            if table:
                logger.log_table(f"{prefix}/per_class", columns=list(table[0]), data=[list(r.values()) for r in table])
            matrix = getattr(pl_module, "confusion_matrices", {}).get(prefix)
            if matrix is not None:
                logger.experiment.log({f"{prefix}/confusion_matrix": confusion_chart(matrix.numpy(), classes)})
            if self.samples:
                logger.experiment.log({f"{prefix}/predictions": prediction_images(self.samples, classes)})


METRICS_PER_CLASS = ("IoU", "F1", "Precision", "Recall", "WFm")


def per_class_rows(metrics: dict, prefix: str, classes: list[str]) -> list[dict]:
    """One row per class with the ``<prefix>/<metric>/<class>`` values the run logged (none: [])."""
    present = [m for m in METRICS_PER_CLASS if any(f"{prefix}/{m}/{c}" in metrics for c in classes)]
    if not present:
        return []
    return [{"class": c, **{m: float(metrics.get(f"{prefix}/{m}/{c}", float("nan"))) for m in present}}
            for c in classes]


def confusion_chart(matrix: np.ndarray, classes: list[str], title: str = "Confusion matrix (pixels)"):
    """W&B's confusion-matrix chart from dataset-level counts (rows = ground truth, columns = prediction);
    ``wandb.plot.confusion_matrix`` wants one entry per sample, far too many pixels."""
    wandb = require("wandb", "wandb", "W&B evaluation logging")

    data = [[classes[i], classes[j], int(matrix[i, j])] for i in range(len(classes)) for j in range(len(classes))]
    return wandb.plot_table(
        vega_spec_name="wandb/confusion_matrix/v1",
        data_table=wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data),
        fields={"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
        string_fields={"title": title},
    )


def prediction_images(samples: list[dict], classes: list[str], ignore_index: int = 255) -> list:
    """W&B images with the prediction and the ground truth as masks with class labels (ignored pixels
    labelled "ignore"), captioned with the sample id (and sentence)."""
    wandb = require("wandb", "wandb", "W&B evaluation logging")

    labels = dict(enumerate(classes)) | {ignore_index: "ignore"}
    images = []
    for sample in samples:
        caption = sample["id"] + (f": {sample['text']}" if sample.get("text") else "")
        masks = {
            "prediction": {"mask_data": sample["pred"].astype(np.uint8), "class_labels": labels},
            "ground_truth": {"mask_data": sample["target"].astype(np.uint8), "class_labels": labels},
        }
        images.append(wandb.Image(sample["image"], masks=masks, caption=caption))
    return images
