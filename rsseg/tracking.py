"""W&B tracking of every rsseg run: the default logger, what each run records, and what an evaluation logs.

Every ``rsseg fit/validate/test`` logs through Lightning's ``WandbLogger`` to project ``rsseg`` (or
``$WANDB_PROJECT``), grouped by dataset and tagged by method and protocol, with the full config and the
reproducibility manifest; offline unless the user configured W&B. A config's own ``trainer.logger`` wins
(``--trainer.logger false`` turns logging off).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from rsseg.callbacks import EvaluationSamples
from rsseg.manifest import run_manifest

DEFAULT_PROJECT = "rsseg"


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


def default_logger(model, datamodule, save_dir: str | Path | None, job_type: str | None) -> WandbLogger:
    """The logger of a run whose config names none, under ``save_dir`` (the trainer's ``default_root_dir``),
    else under ``runs/``: checkpoints go to ``<save_dir>/<project>/<run id>/checkpoints``, and ``./rsseg/`` in
    a checkout is the package."""
    return WandbLogger(project=wandb_project(), group=dataset_name(datamodule), name=method_name(model),
                       tags=run_tags(model, datamodule), save_dir=str(save_dir or "runs"), mode=wandb_mode(),
                       job_type=job_type or "fit")


def finish_wandb_run(exit_code: int = 0) -> None:
    """End the process's W&B run (WandbLogger leaves it open; the next logger in the process would join it)."""
    import wandb

    if wandb.run is not None:
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
    import wandb

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
    import wandb

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
