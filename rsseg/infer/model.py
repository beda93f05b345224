"""A trained semantic-segmentation model and the description of its input, read from a checkpoint.

Checkpoints written by ``rsseg fit`` (and ``rsseg export``) carry ``rsseg_input``: the bands, pixel type,
scale and statistics the datamodule fed the network and the classes with their colours
(:meth:`rsseg.data.core.datamodule.BaseDataModule.input_spec`), so inference needs no training config.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsseg.checkpoints import CheckpointError, read_checkpoint

INPUT_KEY = "rsseg_input"
REQUIRED_INPUT_FIELDS = ("classes", "palette", "in_channels", "dtype", "value_scale", "mean", "std")


@dataclass
class InferenceModel:
    """A task in eval mode on ``device`` and its ``input_spec``."""

    task: Any
    input_spec: dict[str, Any]
    device: torch.device
    path: Path

    def predict(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits of normalised N×C×h×w windows: the task's own inference (its test-time augmentation, and its
        sliding windows where a window exceeds ``inference_window``); on the CPU."""
        return self.task.predict_logits(windows.to(self.device)).float().cpu()


def task_class(path: Path, hparams: dict[str, Any]) -> type:
    """The rsseg task class a checkpoint names; only rsseg's own classes are imported."""
    from rsseg.tasks import SegmentationTask

    class_path = hparams.get("_class_path")
    if not class_path:
        raise CheckpointError(f"{path}: the checkpoint does not name its task class (written by rsseg fit?)")
    module, _, name = class_path.rpartition(".")
    if not module.startswith("rsseg."):
        raise CheckpointError(f"{path}: a {class_path} checkpoint; rsseg infer loads rsseg's tasks only")
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None or not issubclass(cls, SegmentationTask):
        raise CheckpointError(f"{path}: {class_path} is not a semantic segmentation task; rsseg infer segments "
                              "images into classes (referring segmentation needs a sentence per image)")
    if not getattr(cls, "segments_images", True):
        raise CheckpointError(f"{path}: {name} {cls.segments_images_reason}")
    return cls


def input_spec_of(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    spec = checkpoint.get(INPUT_KEY)
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path}: the checkpoint does not say what input its model was trained on (no "
                              f"{INPUT_KEY}; written before rsseg recorded it): fine-tune it for a step with rsseg "
                              "fit --ckpt_path to write a new one")
    missing = [field for field in REQUIRED_INPUT_FIELDS if field not in spec]
    if missing:
        raise CheckpointError(f"{path}: its {INPUT_KEY} lacks {', '.join(missing)}")
    return spec


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_inference_model(path: str | Path, device: str = "auto") -> InferenceModel:
    """The checkpoint's task (weights read without unpickling code) with its input description."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    spec = input_spec_of(path, checkpoint)
    cls = task_class(path, dict(checkpoint.get("hyper_parameters") or {}))
    target = resolve_device(device)
    try:
        task = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: the model could not be rebuilt ({type(error).__name__}: {error})") from error
    if task.num_classes != len(spec["classes"]):
        raise CheckpointError(f"{path}: the model has {task.num_classes} classes but its input description "
                              f"{len(spec['classes'])}")
    return InferenceModel(task.to(target).eval(), spec, target, path)
