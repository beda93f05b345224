"""Coarse label maps on disk: written by ``rsseg predict``, served next to each sample's image and mask.

A refiner (IDGBR) learns to correct the label maps that some trained segmentation model predicts, so it
trains on ``{"image", "mask", "coarse", "meta"}`` samples. Layout::

    <root>/coarse/<name>/coarse.json           the record: which checkpoint made each split's maps
    <root>/coarse/<name>/<split>/<id>.png      one single-band uint8 class-index map per sample

``<root>`` is the dataset root (or the writer's ``output_root``), ``<split>`` the datamodule's
``predict_split`` and ``<id>`` the sample's ``meta["id"]``. A map has the size of the stored patch or
image the dataset returns, so it aligns with it pixel for pixel. Write the maps of a split with::

    rsseg predict --config <the coarse model's config> --ckpt_path <its checkpoint> \\
        --return_predictions false --data.init_args.predict_split train \\
        --trainer.callbacks+=rsseg.data.CoarseMapWriter --trainer.callbacks.name <name>

and serve them by wrapping the same datamodule: ``CoarseMapDataModule(data, coarse="<name>")``, in a
config ``data: {class_path: rsseg.data.CoarseMapDataModule, init_args: {data: {class_path: ...}, coarse:
<name>}}``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import albumentations as A
import lightning
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from rsseg.data.core.datamodule import BaseDataModule
from rsseg.data.core.errors import DataError
from rsseg.data.core.io import read_image, write_png
from rsseg.data.core.spec import DatasetSpec

logger = logging.getLogger(__name__)

COARSE_DIR = "coarse"
RECORD_NAME = "coarse.json"
RECORD_FORMAT = 1


def write_command(name: str, split: str, output_root: Path | None = None) -> str:
    """The ``rsseg predict`` command that writes the ``split`` maps of coarse map set ``name`` (under the
    dataset root, or under ``output_root``)."""
    command = (
        "rsseg predict --config <the coarse model's config> --ckpt_path <its checkpoint> "
        f"--return_predictions false --data.init_args.predict_split {split} "
        f"--trainer.callbacks+=rsseg.data.CoarseMapWriter --trainer.callbacks.name {name}"
    )
    return command if output_root is None else f"{command} --trainer.callbacks.output_root {output_root}"


def check_file_name(value: str, what: str) -> str:
    """``value`` if it can name a file inside a folder (ids and set names become paths), else ValueError."""
    if not value or value in (".", "..") or any(c in value for c in ("/", "\\", "\0")):
        raise ValueError(f"{what} {value!r} cannot be a file name (path separators, empty, '.' or '..')")
    return value


def read_record(folder: Path) -> dict[str, Any] | None:
    """The ``coarse.json`` of a coarse map set, or None when there is none yet."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the coarse map record ({error}); delete the folder and re-write "
                        "the maps") from error
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise DataError(f"{path}: not a coarse map record of format {RECORD_FORMAT}; re-write the maps")
    return record


def check_record_matches(record: dict[str, Any], path: Path, data: Any) -> None:
    """A DataError when the maps in ``record`` were made for another dataset or number of classes."""
    for key, expected in (("dataset", data.spec.name), ("num_classes", data.num_classes)):
        if record.get(key) != expected:
            raise DataError(
                f"{path}: these coarse maps were written for {key} {record.get(key)!r} but the datamodule has "
                f"{expected!r}; write maps for this dataset under another name"
            )
    if record.get("protocol") != data.spec.protocol:
        logger.warning("%s: coarse maps written under protocol %r, the datamodule uses %r", path,
                       record.get("protocol"), data.spec.protocol)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` to ``path`` atomically: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _checkpoint_fields(checkpoint: str | Path | None) -> dict[str, str | None]:
    """Where the weights came from: a local checkpoint's absolute path and SHA-256 (a URL: no hash)."""
    if checkpoint is None:
        return {"checkpoint": None, "checkpoint_sha256": None}
    path = Path(checkpoint)
    if not path.is_file():
        return {"checkpoint": str(checkpoint), "checkpoint_sha256": None}
    return {"checkpoint": str(path.resolve()), "checkpoint_sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _model_record(module: lightning.LightningModule) -> dict[str, Any]:
    """The model's class path and those hparams that JSON can hold (enough to rebuild or compare it)."""
    cls = type(module)
    hparams = {key: value for key, value in module.hparams.items() if _json_safe(value)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "hparams": hparams}


# --------------------------------------------------------------------------------------------------
# Writing


class CoarseMapWriter(BasePredictionWriter):
    """Lightning callback: ``predict`` writes each predicted label map as a coarse map (see the module).

    The maps of the datamodule's ``predict_split`` go to ``<output_root or datamodule.root>/coarse/<name>/
    <split>/<id>.png``. A split is replaced as a whole: maps are written into a hidden folder that takes
    the place of ``<split>/`` only when predict ends with one map per sample of the split, so an
    interrupted or truncated predict leaves the previous maps (and ``coarse.json``) as they were. Takes
    the shared task's ``predict_step`` output, ``{"pred": B×H×W, "meta": {"id": [...]}}``. Under DDP every
    rank writes its shard (the predict loader shards without duplicates) into the same hidden folder, and
    rank 0 swaps it in and updates ``coarse.json`` once the ranks' maps add up to the split.
    """

    def __init__(self, name: str, output_root: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.name = check_file_name(name, "coarse map name")
        self.output_root = None if output_root is None else Path(output_root)
        self.folder: Path | None = None  # <root>/coarse/<name>, once predict has started
        self.split: str | None = None
        self._staging: Path | None = None
        self._ids: set[str] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        twins = [cb for cb in trainer.callbacks if isinstance(cb, CoarseMapWriter) and cb is not self
                 and (cb.name, cb.output_root) == (self.name, self.output_root)]
        if twins:
            raise ValueError(
                f"{len(twins) + 1} CoarseMapWriter callbacks write the coarse maps {self.name!r}; keep one in "
                "trainer.callbacks (a config saved by an earlier predict run already holds one)"
            )
        data = trainer.datamodule
        if data is None or not hasattr(data, "predict_split"):
            raise ValueError("CoarseMapWriter needs an rsseg datamodule (one with predict_split and root)")
        if getattr(data, "eval_whole_tiles", False):
            raise ValueError("CoarseMapWriter writes one map per patch: predict without eval_whole_tiles")
        self.split = check_file_name(data.predict_split, "predict_split")
        self.folder = (self.output_root or Path(data.root)) / COARSE_DIR / self.name
        record = read_record(self.folder)
        if record is not None:
            check_record_matches(record, self.folder / RECORD_NAME, data)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._abort()
        staging = self.folder / f".{self.split}.tmp{trainer.strategy.broadcast(os.getpid())}"  # rank 0's name
        if trainer.is_global_zero:
            for leftover in self.folder.glob(f".{self.split}.tmp*"):  # from a predict that was killed
                logger.warning("%s: removing the leftovers of an interrupted predict", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
            if trainer.ckpt_path is None:
                logger.warning(
                    "%s: no --ckpt_path given, so the coarse maps of the %s split come from an untrained model",
                    self.folder, self.split,
                )
            staging.mkdir(parents=True)
        trainer.strategy.barrier("coarse maps staged")
        self._staging = staging

    def write_on_batch_end(
        self, trainer, pl_module, prediction: Any, batch_indices, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._staging is None:
            raise RuntimeError("CoarseMapWriter: predict has not started")
        if not isinstance(prediction, dict) or "pred" not in prediction or "meta" not in prediction:
            raise ValueError('CoarseMapWriter expects predict_step to return {"pred": ..., "meta": ...}')
        preds, ids = prediction["pred"], prediction["meta"]["id"]
        if len(ids) != len(preds):
            raise ValueError(f"predict_step returned {len(preds)} maps for {len(ids)} ids")
        for sample_id, pred in zip(ids, preds, strict=True):
            self._write(check_file_name(str(sample_id), "sample id"), pred)

    def _write(self, sample_id: str, pred: Any) -> None:
        array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"prediction for {sample_id}: expected an H×W map of class indices, got "
                             f"{array.dtype} of shape {array.shape}")
        if array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise ValueError(f"prediction for {sample_id}: class indices must lie in 0–255 to be stored as uint8")
        if sample_id in self._ids:
            raise ValueError(f"duplicate prediction for id {sample_id!r}: coarse maps need one sample per id")
        write_png(self._staging / f"{sample_id}.png", array.astype(np.uint8, copy=False))
        self._ids.add(sample_id)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if self._staging is None:
            return
        trainer.strategy.barrier("coarse maps written")
        written = int(trainer.strategy.reduce(torch.tensor(len(self._ids)), reduce_op="sum"))
        expected = len(trainer.datamodule.predict_dataset)
        # rank 0 counts (before it may move the folder) and tells the others, so every rank decides alike
        on_disk = trainer.strategy.broadcast(len(list(self._staging.glob("*.png"))) if trainer.is_global_zero else 0)
        if written != expected or on_disk != expected:
            self._abort()
            raise RuntimeError(
                f"{self.folder / self.split}: predict produced {written} maps but the {self.split} split has "
                f"{expected} samples ({on_disk} files written; limit_predict_batches?); the previous maps are kept"
            )
        if trainer.is_global_zero:
            self._replace_split()
            self._update_record(trainer, pl_module, expected)
            logger.info("wrote %d coarse maps of the %s split to %s", expected, self.split, self.folder / self.split)
        self._staging, self._ids = None, set()
        trainer.strategy.barrier("coarse maps in place")

    def _replace_split(self) -> None:
        """Swap the staged folder in for ``<split>/`` (two renames, then the old maps are deleted)."""
        target, old = self.folder / self.split, self.folder / f".{self.split}.tmp{os.getpid()}.old"
        if target.exists():
            os.replace(target, old)
        os.replace(self._staging, target)
        self._staging = None
        self._ids = set()
        shutil.rmtree(old, ignore_errors=True)

    def _update_record(self, trainer, pl_module, count: int) -> None:
        """Merge this split's entry into ``coarse.json`` (the other splits' entries are kept)."""
        data = trainer.datamodule
        path = self.folder / RECORD_NAME
        record = read_record(self.folder) or {"splits": {}}
        record.update(format=RECORD_FORMAT, name=self.name, dataset=data.spec.name, protocol=data.spec.protocol,
                      num_classes=data.num_classes)
        record["splits"][self.split] = {
            "count": count,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            **_checkpoint_fields(trainer.ckpt_path),
            "model": _model_record(pl_module),
        }
        _write_json(path, record)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._abort()

    def _abort(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        self._ids = set()


# --------------------------------------------------------------------------------------------------
# Reading


def _check_size(coarse: np.ndarray, shape: tuple[int, ...], path: Path, hint: str) -> None:
    if coarse.shape != tuple(shape):
        raise DataError(
            f"{path}: coarse map is {coarse.shape[0]}×{coarse.shape[1]} but its sample is {shape[0]}×{shape[1]}; "
            f"the maps were written for other data, re-write them with `{hint}`"
        )


_MOSAIC_REFUSAL = ("coarse maps are paired with a sample by its id, and a mosaic sample is pieced from four; "
                   "set mosaic_ratio to 0 on the datamodule wrapped by CoarseMapDataModule")


class _JointTransform:
    """Stands in for a dataset's training transform, so that the coarse map staged for the sample being
    read goes through the very same steps as its image and mask (the default crop, flips and rot90, or
    any ``train_transforms``: ``random_scale``, ``smart_crop``, albumentations transforms).

    One albumentations call with the coarse map as an additional ``mask`` target: cropped, rotated and
    resized with the mask, padded with the ignore index like it, only ever resized nearest-neighbour. The
    dataset still reads, decodes and normalises the sample itself, so wrapped and plain samples are made
    the same way.
    """

    def __init__(self, transform: A.Compose) -> None:
        self.transform = copy.deepcopy(transform)
        self.transform.add_targets({"coarse": "mask"})
        self._staged: tuple[np.ndarray, Path, str] | None = None
        self._result: np.ndarray | None = None

    def set_random_seed(self, seed: int) -> None:
        """Reseed the wrapped transform (``rsseg.data.core.transforms.seed_augmentation`` calls it in each worker)."""
        self.transform.set_random_seed(seed)

    def stage(self, coarse: np.ndarray, path: Path, hint: str) -> None:
        self._staged = (coarse, path, hint)

    def __call__(self, **targets: np.ndarray) -> dict[str, Any]:
        if self._staged is None:
            raise RuntimeError("this dataset's transform now needs a coarse map: read it through CoarseMapDataset")
        coarse, path, hint = self._staged
        self._staged = None
        reference = targets["mask"] if "mask" in targets else targets["image"]
        _check_size(coarse, reference.shape[:2], path, hint)
        out = self.transform(**targets, coarse=coarse)
        self._result = out.pop("coarse")
        return out

    def take(self) -> np.ndarray:
        result, self._result = self._result, None
        if result is None:
            raise RuntimeError("the dataset did not apply its transform, so the coarse map was not transformed")
        return result


class CoarseMapDataset(Dataset):
    """The samples of ``dataset`` with ``coarse`` added: the map ``folder/<id>.png`` as int64 H×W.

    ``dataset`` must name its samples up front (``sample_id(index)``, as the rsseg semantic datasets do)
    and is taken over: its training transform, if any, is replaced by one that also moves the coarse
    map (``_JointTransform``). Every map is checked to exist here; size and values when it is read.
    """

    def __init__(self, dataset: Dataset, folder: Path, num_classes: int, hint: str) -> None:
        if not hasattr(dataset, "sample_id"):
            raise ValueError(f"{type(dataset).__name__} does not name its samples (no sample_id), so it cannot "
                             "be paired with coarse maps")
        if getattr(dataset, "mosaic_ratio", 0) > 0:
            raise ValueError(_MOSAIC_REFUSAL)
        self.dataset = dataset
        self.folder = folder
        self.num_classes = num_classes
        self.hint = hint
        self.joint = None if dataset.transform is None else _JointTransform(dataset.transform)
        dataset.transform = self.joint
        self._check_complete()

    def _check_complete(self) -> None:
        present = {path.name for path in self.folder.iterdir()} if self.folder.is_dir() else set()
        missing = [i for i in range(len(self.dataset)) if f"{self.dataset.sample_id(i)}.png" not in present]
        if missing:
            first = self.folder / f"{self.dataset.sample_id(missing[0])}.png"
            raise DataError(
                f"{first}: coarse map not found ({len(missing)} of {len(self.dataset)} samples have none); the "
                f"maps were written for other data or are incomplete, re-write them with `{self.hint}`"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, path: Path) -> np.ndarray:
        coarse = read_image(path)
        if coarse.ndim != 2:
            raise DataError(f"{path}: expected a single-band class-index map, got shape {coarse.shape}; "
                            f"re-write the maps with `{self.hint}`")
        top = int(coarse.max(initial=0))
        if top >= self.num_classes:
            raise DataError(f"{path}: value {top} is not a class index (the dataset has {self.num_classes} "
                            f"classes); re-write the maps with `{self.hint}`")
        return coarse

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.folder / f"{self.dataset.sample_id(index)}.png"
        coarse = self._read(path)
        if self.joint is None:
            sample = self.dataset[index]
            reference = sample["mask"] if "mask" in sample else sample["image"]
            _check_size(coarse, reference.shape[-2:], path, self.hint)
        else:
            self.joint.stage(coarse, path, self.hint)
            sample = self.dataset[index]
            coarse = self.joint.take()
        sample["coarse"] = torch.from_numpy(np.ascontiguousarray(coarse)).long()
        return sample


class CoarseMapDataModule(lightning.LightningDataModule):
    """Any rsseg semantic datamodule, its samples extended with the coarse map of their id.

    ``coarse`` is a coarse map set: a name under ``<data.root>/coarse/``, or a path (with a separator) to
    a folder holding ``coarse.json`` (``<output_root>/coarse/<name>`` for maps written with the writer's
    ``output_root``, e.g. beside a read-only dataset). ``setup`` sets ``data`` up, then every dataset it
    built (train, val, test, predict) gains ``coarse`` (int64 H×W) from ``<set>/<split>/<id>.png``,
    transformed exactly like ``mask`` under training augmentation. Batch sizes, workers and the DDP
    sampler are ``data``'s; so are ``spec``, ``num_classes``, ``mean``, ``std`` and ``root``.
    ``eval_whole_tiles`` and ``mosaic_ratio > 0`` are not supported (maps are per patch). Each problem
    with the maps is a DataError naming the file and the fix.
    """

    def __init__(self, data: BaseDataModule, coarse: str) -> None:
        super().__init__()
        if getattr(data, "eval_whole_tiles", False):  # a prepared root's option
            raise ValueError("CoarseMapDataModule pairs patches with their coarse maps; eval_whole_tiles=True "
                             "(whole stitched tiles) is not supported")
        if getattr(data, "mosaic_ratio", 0) > 0:
            raise ValueError(_MOSAIC_REFUSAL)
        self.data = data
        self.coarse = coarse
        self.train_dataset: CoarseMapDataset | None = None
        self.val_dataset: CoarseMapDataset | None = None
        self.test_dataset: CoarseMapDataset | None = None
        self.predict_dataset: CoarseMapDataset | None = None

    # --- what tasks and the CLI read from a datamodule ------------------------------------------
    @property
    def spec(self) -> DatasetSpec:
        return self.data.spec

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def mean(self) -> tuple[float, ...]:
        return self.data.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.data.std

    @property
    def root(self) -> Path:
        return self.data.root

    @property
    def dataset_name(self) -> str:
        return self.data.dataset_name

    @property
    def predict_split(self) -> str:
        return self.data.predict_split

    @property
    def folder(self) -> Path:
        """The coarse map set's folder (``coarse`` resolved against ``data.root`` when it is a name)."""
        if "/" in self.coarse or os.sep in self.coarse:
            return Path(self.coarse)
        return Path(self.data.root) / COARSE_DIR / check_file_name(self.coarse, "coarse map name")

    # --- set-up ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.data.trainer = self.trainer  # its loaders read the trainer's DDP settings
        self.data.setup(stage)
        splits = {"train_dataset": "train", "val_dataset": "val", "test_dataset": "test",
                  "predict_dataset": self.data.predict_split}
        for attribute, split in splits.items():
            inner, wrapped = getattr(self.data, attribute), getattr(self, attribute)
            if inner is not None and (wrapped is None or wrapped.dataset is not inner):
                # a dataset knows its split where the stage's name is not it (LoveDA trains on "trainval")
                setattr(self, attribute, self._wrap(inner, getattr(inner, "split", split)))

    def _write_command(self, split: str) -> str:
        folder = self.folder
        output_root = None if folder.parent == Path(self.data.root) / COARSE_DIR else folder.parent.parent
        return write_command(folder.name, split, output_root)

    def _record(self, split: str) -> dict[str, Any]:
        folder = self.folder
        record = read_record(folder)
        if record is None:
            raise DataError(
                f"{folder / RECORD_NAME}: no coarse maps here; write them with `{self._write_command(split)}` "
                "(one run per split)"
            )
        check_record_matches(record, folder / RECORD_NAME, self.data)
        return record

    def _wrap(self, dataset: Dataset, split: str) -> CoarseMapDataset:
        folder, record, hint = self.folder, self._record(split), self._write_command(split)
        entry = record.get("splits", {}).get(split)
        if entry is None:
            raise DataError(
                f"{folder / RECORD_NAME}: no coarse maps of the {split!r} split (it has "
                f"{', '.join(record.get('splits', {})) or 'none'}); write them with `{hint}`"
            )
        if entry.get("checkpoint") is None:
            logger.warning("%s: coarse maps of the %s split come from an untrained model (no checkpoint)",
                           folder, split)
        else:
            logger.info("%s: coarse maps of the %s split come from %s (sha256 %s, written %s)", folder, split,
                        entry["checkpoint"], entry.get("checkpoint_sha256"), entry.get("created"))
        return CoarseMapDataset(dataset, folder / split, self.data.num_classes, hint)

    # --- loaders: the inner datamodule's ------------------------------------------------------------
    def _dataloader(self, attribute: str, batch_size: int, train: bool, fallback) -> DataLoader | list:
        dataset = getattr(self, attribute)
        if dataset is None:
            return fallback()  # the inner datamodule's answer: [] without a val split, else its error
        return self.data._loader(dataset, batch_size, train=train)

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train_dataset", self.data.batch_size, True, self.data.train_dataloader)

    def val_dataloader(self) -> DataLoader | list:
        return self._dataloader("val_dataset", self.data.eval_batch_size, False, self.data.val_dataloader)

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test_dataset", self.data.eval_batch_size, False, self.data.test_dataloader)

    def predict_dataloader(self) -> DataLoader:
        return self._dataloader("predict_dataset", self.data.eval_batch_size, False, self.data.predict_dataloader)
