"""``PredictionWriter``: ``rsseg predict`` writes every predicted label map to disk.

One file per sample, named after its ``meta["id"]`` (``<id>_s<k>`` for the k-th sentence of a referring
image) under ``<run folder>/predictions/<split>/``, where the run folder is the one that holds the run's
checkpoints (``<save_dir>/<logger name>/<version>``, or ``default_root_dir`` without a logger). A sample whose
meta carries ``crs`` (WKT or ``EPSG:n``) and ``transform`` (the affine ``"a,b,c,d,e,f"`` as one string, so it
survives collation) is written as a GeoTIFF on that grid, others as palette PNGs in the dataset's class
colours; patches cut from a tile are cropped to their valid (unpadded) size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from rsseg.data.refinement.coarse import check_file_name
from rsseg.infer.rasters import LabelGeoTiff, atomic_path, write_label_png

logger = logging.getLogger(__name__)

BINARY_PALETTE = ((0, 0, 0), (255, 255, 255))


def run_folder(trainer) -> Path:
    """Where Lightning puts this run's checkpoints, without its ``checkpoints/``."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    first = trainer.loggers[0]
    save_dir = first.save_dir or trainer.default_root_dir
    version = first.version if isinstance(first.version, str) else f"version_{first.version}"
    return Path(save_dir) / str(first.name) / version


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict_step``'s ``{"pred": B×H×W class indices, "meta": {"id": [...], ...}}`` (module docstring).

    Args:
        output_dir: the folder to write to (default: ``<run folder>/predictions/<predict_split>``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.folder: Path | None = None
        self.written = 0
        self._palette: Sequence[Sequence[int]] = BINARY_PALETTE
        self._classes: Sequence[str] = ("background", "target")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        data = trainer.datamodule
        split = getattr(data, "predict_split", None) or "predict"
        folder = self.output_dir or run_folder(trainer) / "predictions" / check_file_name(split, "predict_split")
        self.folder = Path(trainer.strategy.broadcast(str(folder)))  # one folder for every rank
        self.folder.mkdir(parents=True, exist_ok=True)
        spec = getattr(data, "spec", None)
        if spec is not None and getattr(pl_module, "num_classes", None) == spec.num_classes:
            self._palette, self._classes = spec.palette, spec.classes
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if self.folder is None:
            raise RuntimeError("PredictionWriter: predict has not started")
        if not isinstance(prediction, Mapping) or "pred" not in prediction:
            raise ValueError('PredictionWriter expects predict_step to return {"pred": B×H×W, "meta": {...}}')
        preds = prediction["pred"]
        metas = split_meta(prediction.get("meta") or {}, len(preds))
        for index, (pred, meta) in enumerate(zip(preds, metas, strict=True)):
            name = sample_name(meta, f"batch{batch_idx:05d}_{index:03d}")
            self._write(name, _label_array(pred, name), meta)

    def _write(self, name: str, labels: np.ndarray, meta: Mapping[str, Any]) -> None:
        if "tile" in meta and "y" in meta and "height" in meta and "width" in meta:  # a patch: only its valid part
            labels = labels[: int(meta["height"]), : int(meta["width"])]
        if meta.get("crs") and meta.get("transform"):  # empty strings: samples of a batch without a grid
            path = self.folder / f"{name}.tif"
            with atomic_path(path) as partial:
                raster = LabelGeoTiff(partial, labels.shape, meta["crs"], parse_transform(meta["transform"], name),
                                      self._palette, self._classes)
                try:
                    raster.write_rows(0, labels)
                finally:
                    raster.close()
        else:
            path = self.folder / f"{name}.png"
            with atomic_path(path) as partial:
                write_label_png(partial, labels, self._palette)
        self.written += 1

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        total = int(trainer.strategy.reduce(torch.tensor(self.written), reduce_op="sum"))
        if trainer.is_global_zero and self.folder is not None:
            logger.info("wrote %d predicted label maps to %s", total, self.folder)


def split_meta(meta: Mapping[str, Any], size: int) -> list[dict[str, Any]]:
    """A collated batch meta (lists or tensors of per-sample values) as one dict per sample."""
    samples: list[dict[str, Any]] = [{} for _ in range(size)]
    for key, values in meta.items():
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if isinstance(values, list | tuple) and len(values) == size:
            for sample, value in zip(samples, values, strict=True):
                sample[key] = value
    return samples


def sample_name(meta: Mapping[str, Any], fallback: str) -> str:
    """The file name of a sample: its id (and its sentence), or ``fallback`` when the dataset gives none."""
    name = str(meta["id"]) if meta.get("id") is not None else fallback
    if "sentence_index" in meta:
        name = f"{name}_s{int(meta['sentence_index'])}"
    return check_file_name(name, "sample id")


def parse_transform(text: str, name: str):
    """``"a,b,c,d,e,f"`` as an affine transform (pixel → map coordinates)."""
    from rsseg.extras import require

    affine = require("affine", "geo", "writing georeferenced predictions")
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise ValueError(f"{name}: meta transform {text!r} is not six comma-separated numbers a,b,c,d,e,f")
    return affine.Affine(*values)


def _label_array(pred: Any, name: str) -> np.ndarray:
    array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or array.min(initial=0) < 0 \
            or array.max(initial=0) > 255:
        raise ValueError(f"prediction for {name}: expected an H×W map of class indices in 0–255, got {array.dtype} "
                         f"of shape {array.shape}")
    return array.astype(np.uint8, copy=False)
