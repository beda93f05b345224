"""LoveDA: official layout, label convention, split protocols, dataset and datamodule.

Raw layout (docs/datasets.md §1; Zenodo record 5706578, ``Train.zip``, ``Val.zip``, ``Test.zip``)::

    <root>/{Train,Val}/{Urban,Rural}/images_png/<id>.png   1024×1024 RGB, 0.3 m
    <root>/{Train,Val}/{Urban,Rural}/masks_png/<id>.png    single-band uint8, raw values 0–7
    <root>/Test/{Urban,Rural}/images_png/<id>.png          no masks: labels are private (Codalab)

LoveDA needs no preparation: every image is already a 1024² PNG, so the datamodule reads ``root``
directly. Images and masks are paired by id (the file stem); ids are numbers that must be unique
across the selected scenes (and across Train and Val when they are merged), which is checked.

Labels: raw 0 is no-data (black image borders after georegistration, Junjue-Wang/LoveDA#23) and
becomes ignore (255); raw k = 1..7 becomes class k − 1 (background, building, road, water, barren,
forest, agriculture). mIoU averages all 7 classes (GeoSeg and mmseg agree). A mask value above 7 is
an error (``strict=False``: ignore, counted and warned instead).

Protocols:

* ``standard`` (default): fit on Train, validate on Val, predict the Test images.
* ``trainval``: fit on Train + Val (GeoSeg's ``train_val``, "for a higher score in online testing",
  GeoSeg#30); there is no held-out split, so there is no validation and ``validate`` is an error.
  Its scores can only come from the test server.

There is no ``test`` stage: Test labels are private, so ``setup("test")`` raises a DataError that
points at ``validate`` (Val scores) and ``predict`` with
:class:`rsseg.data.LoveDASubmissionWriter` (the Codalab zip). Test samples carry no
``mask`` key at all, rather than a fake all-ignore mask that would produce meaningless metrics.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsseg.data.core.augment import MosaicMixin, check_mosaic_ratio
from rsseg.data.core.datamodule import BaseDataModule
from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.io import read_image
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise

logger = logging.getLogger(__name__)

DATASET = "loveda"

LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
# The colours of the official LoveDA visualisation (also used by GeoSeg and mmseg), docs/datasets.md §1.2.
LOVEDA_PALETTE = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
RAW_NODATA = 0
MAX_RAW_VALUE = len(LOVEDA_CLASSES)  # raw values are 0 (no-data) and 1..7

# raw mask value -> training index: 0 -> ignore, k -> k - 1, anything above 7 -> ignore
RAW_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
RAW_TO_TRAIN[1 : MAX_RAW_VALUE + 1] = np.arange(MAX_RAW_VALUE, dtype=np.uint8)

SCENES = ("Urban", "Rural")
SPLIT_FOLDERS = {"train": "Train", "val": "Val", "test": "Test"}
LABELLED_SPLITS = ("train", "val")
MERGED_SPLITS = {"trainval": ("train", "val")}  # GeoSeg's train_val
IMAGE_DIR, MASK_DIR = "images_png", "masks_png"

# images per (split, scene) in the official release (docs/datasets.md §1.3)
OFFICIAL_COUNTS = {
    ("train", "Urban"): 1156,
    ("train", "Rural"): 1366,
    ("val", "Urban"): 677,
    ("val", "Rural"): 992,
    ("test", "Urban"): 880,
    ("test", "Rural"): 916,
}

PROTOCOLS = {
    "standard": "fit on Train, validate on Val, predict Test for the server",
    "trainval": "fit on Train+Val (GeoSeg train_val), no validation, predict Test for the server",
}
DEFAULT_PROTOCOL = "standard"
TEST_LABELS_ARE_PRIVATE = (
    "LoveDA Test labels are private (scored only by the Codalab server), so there is no `test` stage; "
    "use `validate` for scores on Val, and `predict` with the LoveDASubmissionWriter callback "
    "(rsseg.data.LoveDASubmissionWriter) to write the submission zip for the server"
)
DOWNLOAD_HINT = "download Train.zip, Val.zip and Test.zip from Zenodo record 5706578 and extract them there"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown LoveDA protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def loveda_spec(protocol: str = DEFAULT_PROTOCOL) -> DatasetSpec:
    """Label and metric convention of LoveDA under ``protocol``."""
    _check_protocol(protocol)
    return DatasetSpec(
        name=DATASET,
        classes=LOVEDA_CLASSES,
        palette=LOVEDA_PALETTE,
        protocol=protocol,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(),
        eroded_test_labels=False,
        notes={
            "splits": PROTOCOLS[protocol],
            "labels": "raw mask 0 (no-data) -> ignore 255, raw k -> class k-1",
            "metrics": "mIoU/mF1 over all 7 classes, no-data ignored",
            "test": "labels private: predict writes the Codalab submission (flat zip of 0-6 PNGs)",
        },
    )


LOVEDA_SPEC = loveda_spec()


def normalise_scenes(scenes: str | Iterable[str]) -> tuple[str, ...]:
    """``("urban", "Rural")`` → ``("Urban", "Rural")``; unknown or no scenes are a ValueError."""
    if isinstance(scenes, str):
        scenes = (scenes,)
    by_lower = {scene.lower(): scene for scene in SCENES}
    out: list[str] = []
    for scene in scenes:
        canonical = by_lower.get(str(scene).lower())
        if canonical is None:
            raise ValueError(f"unknown LoveDA scene {scene!r}; choose from {', '.join(SCENES)}")
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise ValueError(f"select at least one LoveDA scene ({', '.join(SCENES)})")
    return tuple(out)


def decode_loveda_mask(raw: np.ndarray, path: str | Path = "mask", strict: bool = True) -> np.ndarray:
    """Raw mask (0 no-data, 1..7 classes) → training indices (255, 0..6).

    Values above 7 are not LoveDA labels: DataError naming ``path`` if ``strict``, else they become
    ignore and a DataWarning names the file and counts them.
    """
    bad = raw > MAX_RAW_VALUE
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        values = np.unique(raw[bad])
        shown = ", ".join(map(str, values[:8].tolist())) + (", …" if values.size > 8 else "")
        message = (
            f"{path}: {n_bad} pixels have mask values above {MAX_RAW_VALUE} ({shown}); LoveDA masks hold "
            f"0 (no-data) and 1–{MAX_RAW_VALUE} (classes)"
        )
        if strict:
            raise DataError(message + "; is this really an official masks_png file?")
        warnings.warn(f"{message}; they are set to ignore ({IGNORE_INDEX})", DataWarning, stacklevel=2)
    return RAW_TO_TRAIN[raw]


def encode_loveda_mask(mask: np.ndarray) -> np.ndarray:
    """Training indices (0..6, 255 = ignore) → raw mask values (1..7, 0 = no-data)."""
    if mask.dtype != np.uint8:
        raise ValueError(f"expected a uint8 mask, got {mask.dtype}")
    valid = mask < MAX_RAW_VALUE
    if not np.all(valid | (mask == IGNORE_INDEX)):
        raise ValueError(f"mask values must be 0..{MAX_RAW_VALUE - 1} or {IGNORE_INDEX}")
    return np.where(valid, mask + 1, RAW_NODATA).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class SampleFiles:
    """One sample on disk: its id, image, mask (None where labels are private) and extra meta."""

    id: str
    image: Path
    mask: Path | None
    meta: dict[str, Any] = field(default_factory=dict)


def id_sort_key(sample_id: str) -> tuple[int, int, str]:
    """Numeric ids sort by value (9 before 10), others after them by name."""
    return (0, int(sample_id), "") if sample_id.isdigit() else (1, 0, sample_id)


def _pngs(folder: Path) -> list[Path]:
    """PNG files in ``folder``; hidden files and other names (Thumbs.db, .DS_Store) are skipped."""
    return [p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()]


def _missing_folder(root: Path, split: str, folder: Path) -> DataError:
    """A missing split/scene folder, with a hint for the usual extraction mistakes."""
    split_dir = root / SPLIT_FOLDERS[split]
    hint = DOWNLOAD_HINT
    if (split_dir / SPLIT_FOLDERS[split]).is_dir():
        hint = f"{split_dir / SPLIT_FOLDERS[split]} exists: the archive was extracted one level too deep"
    elif (root / f"{SPLIT_FOLDERS[split]}.zip").is_file():
        hint = f"extract {root / (SPLIT_FOLDERS[split] + '.zip')} first"
    elif (root / "img_dir").is_dir() or (root / "ann_dir").is_dir():
        hint = "this looks like mmsegmentation's converted layout; point root at the official extracted archives"
    return DataError(f"{folder}: folder not found ({hint})")


def find_loveda_samples(root: str | Path, split: str, scenes: Iterable[str] = SCENES) -> list[SampleFiles]:
    """Image/mask pairs of ``split`` ("train", "val", "test" or "trainval") for ``scenes``, sorted by id.

    Masks are derived from image ids (never by zipping two listings). Labelled splits need a mask for
    every image and an image for every mask; Test has no masks (``mask`` is None). Duplicate ids
    across scenes or merged splits are an error: LoveDA ids are meant to be unique, and the flat
    submission zip needs them to be.
    """
    root = Path(root)
    scenes = normalise_scenes(scenes)
    splits = MERGED_SPLITS.get(split, (split,))
    if any(s not in SPLIT_FOLDERS for s in splits):
        raise ValueError(f"unknown LoveDA split {split!r}; choose one of {', '.join([*SPLIT_FOLDERS, *MERGED_SPLITS])}")
    if not root.is_dir():
        raise DataError(f"{root}: LoveDA root folder does not exist; {DOWNLOAD_HINT}")
    samples: list[SampleFiles] = []
    seen: dict[str, Path] = {}
    for one_split in splits:
        for scene in scenes:
            folder = root / SPLIT_FOLDERS[one_split] / scene
            samples += _scene_samples(root, one_split, scene, folder, seen)
    return sorted(samples, key=lambda sample: id_sort_key(sample.id))


def _scene_samples(root: Path, split: str, scene: str, folder: Path, seen: dict[str, Path]) -> list[SampleFiles]:
    image_dir, mask_dir = folder / IMAGE_DIR, folder / MASK_DIR
    if not image_dir.is_dir():
        raise _missing_folder(root, split, image_dir)
    images = _pngs(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no PNG images in this folder (an empty {SPLIT_FOLDERS[split]} split)")
    labelled = split in LABELLED_SPLITS
    if labelled:
        if not mask_dir.is_dir():
            raise DataError(f"{mask_dir}: folder not found; the {SPLIT_FOLDERS[split]} split needs its masks")
        orphans = sorted({p.stem for p in _pngs(mask_dir)} - {p.stem for p in images}, key=id_sort_key)
        if orphans:
            raise DataError(
                f"{mask_dir}: {len(orphans)} masks have no image in {image_dir} (e.g. {orphans[0]}.png); "
                "the archive may be partly extracted"
            )
    samples = []
    for image in images:
        sample_id = image.stem
        if sample_id in seen:
            raise DataError(
                f"duplicate LoveDA id {sample_id}: {seen[sample_id]} and {image}; ids must be unique across "
                "scenes and merged splits"
            )
        seen[sample_id] = image
        mask = mask_dir / f"{sample_id}.png" if labelled else None
        if mask is not None and not mask.is_file():
            raise DataError(f"{image}: its mask {mask} is missing")
        samples.append(SampleFiles(sample_id, image, mask, {"scene": scene, "split": SPLIT_FOLDERS[split]}))
    return samples


# --------------------------------------------------------------------------------------------------
# Datasets


class FilePairDataset(MosaicMixin, Dataset):
    """Samples read straight from (image, optional mask) file pairs listed up front.

    A sample is ``{"image": float C×H×W normalised, "mask": int64 H×W (only where labelled), "meta"}``
    with ``meta = {"id", "height", "width", **sample.meta}`` (the size of the file, before any crop);
    ``mosaic_ratio > 0`` (labelled samples only) adds GeoSeg's mosaic (``augment.MosaicMixin``).
    Subclasses say how a raw mask becomes class indices (``decode_mask``). Nothing LoveDA-specific
    lives here, so datasets shipped as plain image/mask files (CHN6-CUG) can share it.
    """

    def __init__(
        self,
        samples: Sequence[SampleFiles],
        transform: A.Compose | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        mosaic_ratio: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mean, self.std = mean, std
        self.mosaic_ratio = check_mosaic_ratio(mosaic_ratio)
        if self.mosaic_ratio > 0 and any(sample.mask is None for sample in self.samples):
            raise ValueError("mosaic_ratio > 0 needs masks, and these samples have none")

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        """``meta["id"]`` of sample ``index``, known without reading it (to find files named after it)."""
        return self.samples[index].id

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask file contents → uint8 class indices with 255 = ignore."""
        return raw

    def read_rgb(self, path: Path) -> np.ndarray:
        image = read_image(path)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise DataError(f"{path}: expected an RGB image, got shape {image.shape}")
        return image[..., :3]  # an alpha band carries no data

    def read_mask(self, path: Path, image_path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
        raw = read_image(path)
        if raw.ndim != 2:
            raise DataError(f"{path}: expected a single-band index mask, got shape {raw.shape}")
        if raw.shape != image_shape[:2]:
            raise DataError(
                f"size mismatch: {image_path} is {image_shape[0]}×{image_shape[1]} but "
                f"{path} is {raw.shape[0]}×{raw.shape[1]}"
            )
        return self.decode_mask(raw, path)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (H×W×3) and decoded mask (H×W, None where unlabelled) of sample ``index``."""
        sample = self.samples[index]
        image = self.read_rgb(sample.image)
        return image, None if sample.mask is None else self.read_mask(sample.mask, sample.image, image.shape)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, mask, mosaic_meta = self.training_pair(index)
        meta = {"id": sample.id, "height": image.shape[0], "width": image.shape[1], **sample.meta, **mosaic_meta}
        if self.transform is not None:
            out = self.transform(image=image) if mask is None else self.transform(image=image, mask=mask)
            image, mask = out["image"], out.get("mask")
        item: dict[str, Any] = {"image": normalise(image, self.mean, self.std)}
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        item["meta"] = meta
        return item


class LoveDADataset(FilePairDataset):
    """One LoveDA split read from the official layout (see the module docstring).

    ``split`` is "train", "val", "test" or "trainval" (Train + Val). Test samples have no ``mask`` key
    (``has_masks`` is False). ``meta`` holds ``id``, ``scene`` (Urban/Rural), ``split`` (the official
    folder: Train/Val/Test) and the image ``height``/``width``.
    """

    dataset_name: ClassVar[str] = DATASET
    display_name: ClassVar[str] = "LoveDA"

    def __init__(
        self,
        root: str | Path,
        split: str,
        scenes: Iterable[str] = SCENES,
        transform: A.Compose | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        strict: bool = True,
        mosaic_ratio: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.scenes = normalise_scenes(scenes)
        self.strict = strict
        super().__init__(find_loveda_samples(self.root, split, self.scenes), transform, mean, std, mosaic_ratio)
        self.has_masks = all(sample.mask is not None for sample in self.samples)

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return decode_loveda_mask(raw, path, self.strict)

    def counts(self) -> dict[tuple[str, str], int]:
        """Images per (official split folder, scene)."""
        out: dict[tuple[str, str], int] = {}
        for sample in self.samples:
            key = (sample.meta["split"], sample.meta["scene"])
            out[key] = out.get(key, 0) + 1
        return out


# --------------------------------------------------------------------------------------------------
# Datamodule


class LoveDADataModule(BaseDataModule):
    """LoveDA for fit/validate/predict, read from the official extracted archives (no preparation).

    ``crop_size`` random-crops training images (None keeps the whole 1024² images), ``augment`` flips and
    rotates them (``train_transforms``, ``mosaic_ratio``: ``BaseDataModule``); validation and prediction
    use whole images. ``scenes`` selects Urban and/or Rural. ``protocol`` is "standard"
    (Train / Val / Test) or "trainval" (fit on Train + Val, no validation). ``setup("test")`` is a
    DataError because Test labels are private; ``predict`` runs over the Test images (samples without
    ``mask``), for :class:`rsseg.data.LoveDASubmissionWriter`, or over ``predict_split``
    ("train", "val" or "trainval", whole images without augmentation).

    The loaders (and their DDP sharding without duplicates) come from ``BaseDataModule``.
    """

    default_protocol = DEFAULT_PROTOCOL

    def __init__(self, root: str, scenes: tuple[str, ...] = SCENES, strict: bool = True, **kwargs: Any) -> None:
        """``scenes``: Urban and/or Rural; ``strict``: mask values > 7 are errors; others: ``BaseDataModule``."""
        self.scenes = normalise_scenes(scenes)
        super().__init__(root, **kwargs)
        self.strict = strict

    def make_spec(self, protocol: str) -> DatasetSpec:
        return loveda_spec(protocol)

    @property
    def has_val(self) -> bool:
        return self.protocol == "standard"

    def has_val_split(self) -> bool:
        return self.has_val  # trainval: Lightning skips validation

    def _dataset(self, split: str, transform: A.Compose | None = None, mosaic_ratio: float = 0.0) -> LoveDADataset:
        dataset = LoveDADataset(
            self.root, split, self.scenes, transform=transform, strict=self.strict, mosaic_ratio=mosaic_ratio
        )
        self._log_counts(dataset)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if stage == "test":
            raise DataError(f"{self.root}: {TEST_LABELS_ARE_PRIVATE}")
        if stage in ("fit", None):
            split = "train" if self.has_val else "trainval"
            self.train_dataset = self._dataset(split, self.train_transform(), self.mosaic_ratio)
        if stage in ("fit", "validate", None):
            if self.has_val:
                self.val_dataset = self._dataset("val")
            elif stage == "validate":
                raise DataError(
                    f"{self.root}: protocol {self.protocol!r} trains on Val, so there is no held-out split to "
                    "validate on; use protocol 'standard' for Val scores"
                )
        if stage in ("predict", None):
            self.predict_dataset = self._dataset(self.checked_predict_split([*SPLIT_FOLDERS, *MERGED_SPLITS]))

    def test_dataloader(self) -> DataLoader:
        raise DataError(f"{self.root}: {TEST_LABELS_ARE_PRIVATE}")

    def _log_counts(self, dataset: LoveDADataset) -> None:
        counts = dataset.counts()
        logger.info(
            "LoveDA (%s protocol) %s: %d images (%s)",
            self.protocol,
            dataset.split,
            len(dataset),
            ", ".join(f"{split}/{scene} {n}" for (split, scene), n in sorted(counts.items())),
        )
        for (folder, scene), n in sorted(counts.items()):
            split = folder.lower()
            official = OFFICIAL_COUNTS[(split, scene)]
            if n != official:
                logger.warning(
                    "%s: %s/%s has %d images, the official release %d; results are not comparable with "
                    "published numbers",
                    self.root,
                    folder,
                    scene,
                    n,
                    official,
                )
