"""CHN6-CUG binary road extraction: file pairing, mask binarisation, split protocols, dataset, datamodule.

Official layout (docs/datasets.md §6, CUG-URS/CHN6-CUG-Roads-Dataset README)::

    root/train/images/<id>_sat.jpg    root/train/gt/<id>_mask.png     3,608 tiles
    root/val/images/<id>_sat.jpg      root/val/gt/<id>_mask.png         903 tiles, the split papers report on

Google Earth RGB at 0.5 m, 512×512 tiles, read directly (no preparation). Each image is paired with the
mask of the same id (``_sat.jpg`` ↔ ``_mask.png``); an image without its mask or a mask without its
image is a DataError, since it means a half-extracted download.

Labels: background 0, road 1, no ignore class. A mask pixel is road when its value is ≥ 128 (the
official masks are 0/255 with road white; SegEarth-OV binarises the same way). Masks saved as RGB(A)
count a pixel as road when any colour channel is ≥ 128 (alpha is dropped), and a mask whose values
are all 0 or 1 (already converted, e.g. by an mmseg-style converter) is taken as it is, not thresholded
into all-background. See ``binarise_mask``.

Protocols (§6.3: "train on train, report on val/test"):

* ``official`` (default): train = ``train/``, test = ``val/`` (the 903 tiles papers report on); there is
  no val split, so fit runs without validation. ``val/`` is never used for model selection.
* ``holdout``: as ``official``, plus a val split held out of ``train/``: the ``val_fraction`` of its ids
  with the smallest SHA-1 of the id (deterministic, independent of listing order and of any seed).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from rsseg.data.core.augment import MosaicMixin, check_mosaic_ratio
from rsseg.data.core.datamodule import BaseDataModule
from rsseg.data.core.errors import DataError
from rsseg.data.core.io import read_image
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise

logger = logging.getLogger(__name__)

DATASET = "chn6cug"
CLASSES = ("background", "road")
PALETTE = ((0, 0, 0), (255, 255, 255))
ROAD_THRESHOLD = 128  # mask value ≥ 128 → road
IMAGE_SUFFIX = "_sat.jpg"
MASK_SUFFIX = "_mask.png"
FOLDERS = ("train", "val")
PROTOCOLS = {
    "official": "train = train/ (3,608 tiles), test = val/ (903 tiles, reported in papers), no val split",
    "holdout": "train = train/ minus a held-out fraction used as val, test = val/ (903 tiles)",
}
DEFAULT_PROTOCOL = "official"


def binarise_mask(mask: np.ndarray, threshold: int) -> np.ndarray:
    """uint8 {0,1} H×W from a grey, RGB(A) or already-binary mask: foreground = value ≥ ``threshold``.

    Colour masks: a pixel is foreground when any of its first three channels is ≥ ``threshold`` (white,
    grey or coloured objects on black all work; alpha is ignored). Masks whose values are all 0/1 are
    already binary and kept as they are: thresholding them would silently erase every object. A 0/255
    mask can never look like that, even after lossy re-saving, because black stays exactly 0.
    """
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)
    if mask.ndim != 2:
        raise ValueError(f"expected an H×W or H×W×C mask, got shape {mask.shape}")
    if mask.max(initial=0) <= 1:
        return mask.astype(np.uint8)
    return (mask >= threshold).astype(np.uint8)


def chn6cug_spec(protocol: str = DEFAULT_PROTOCOL) -> DatasetSpec:
    """Label and metric convention of CHN6-CUG under ``protocol``."""
    check_protocol(protocol)
    return DatasetSpec(
        name=DATASET,
        classes=CLASSES,
        palette=PALETTE,
        protocol=protocol,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(),
        notes={
            "splits": PROTOCOLS[protocol],
            "labels": f"road = mask value >= {ROAD_THRESHOLD} (0/1 masks kept); no ignore class",
            "metrics": "road papers report road-class IoU/precision/recall/F1; mIoU here averages both classes",
        },
    )


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown CHN6-CUG protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def find_pairs(root: str | Path, folder: str) -> dict[str, tuple[Path, Path]]:
    """``{id: (image, mask)}`` for ``root/folder``, sorted by id; pairs by id, never by listing order."""
    base = Path(root) / folder
    images_dir, masks_dir = base / "images", base / "gt"
    for path in (Path(root), base, images_dir, masks_dir):
        if not path.is_dir():
            raise DataError(f"{path}: folder not found (expected the CHN6-CUG layout {folder}/images, {folder}/gt)")
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in images_dir.iterdir() if p.name.endswith(IMAGE_SUFFIX)}
    masks = {p.name[: -len(MASK_SUFFIX)]: p for p in masks_dir.iterdir() if p.name.endswith(MASK_SUFFIX)}
    if not images:
        raise DataError(f"{images_dir}: no <id>{IMAGE_SUFFIX} images found")
    missing_masks = sorted(set(images) - set(masks))
    if missing_masks:
        raise DataError(
            f"{masks_dir / (missing_masks[0] + MASK_SUFFIX)}: mask not found for image "
            f"{images[missing_masks[0]]} ({len(missing_masks)} image(s) without a mask in {folder}/)"
        )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(
            f"{images_dir / (orphans[0] + IMAGE_SUFFIX)}: image not found for mask {masks[orphans[0]]} "
            f"({len(orphans)} mask(s) without an image in {folder}/); re-extract the archive"
        )
    return {tile: (images[tile], masks[tile]) for tile in sorted(images)}


def holdout_ids(ids: Sequence[str], fraction: float) -> list[str]:
    """The ``fraction`` of ``ids`` (at least one) with the smallest SHA-1 digest, in id order."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {fraction}")
    if len(ids) < 2:
        raise DataError(f"cannot hold out a val split from {len(ids)} training tile(s)")
    count = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    ranked = sorted(ids, key=lambda tile: hashlib.sha1(tile.encode("utf-8")).hexdigest())
    return sorted(ranked[:count])


def protocol_splits(
    root: str | Path, protocol: str = DEFAULT_PROTOCOL, val_fraction: float = 0.1
) -> dict[str, dict[str, tuple[Path, Path]]]:
    """Split name → ``{id: (image, mask)}`` under ``protocol`` (see the module docstring)."""
    check_protocol(protocol)
    train = find_pairs(root, "train")
    splits = {"train": train, "test": find_pairs(root, "val")}
    if protocol == "holdout":
        held = set(holdout_ids(list(train), val_fraction))
        splits["train"] = {tile: paths for tile, paths in train.items() if tile not in held}
        splits["val"] = {tile: paths for tile, paths in train.items() if tile in held}
    return splits


class CHN6CUGDataset(MosaicMixin, Dataset):
    """Image/mask pairs of one CHN6-CUG split: sample = ``{"image", "mask", "meta"}`` (docs/architecture.md,
    the batch contract).

    ``pairs`` is ``{id: (image, mask)}`` as from ``find_pairs``/``protocol_splits``; without it the whole
    official ``folder`` (``"train"`` or ``"val"``) is used. ``meta`` holds ``id``, ``height``, ``width``
    (and ``mosaic``/``mosaic_ids`` with ``mosaic_ratio > 0``: ``augment.MosaicMixin``).
    """

    def __init__(
        self,
        root: str | Path,
        folder: str = "train",
        pairs: dict[str, tuple[Path, Path]] | None = None,
        transform: A.Compose | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        mosaic_ratio: float = 0.0,
    ) -> None:
        if folder not in FOLDERS:
            raise ValueError(f"folder must be one of {FOLDERS}, got {folder!r}")
        self.root = Path(root)
        pairs = find_pairs(self.root, folder) if pairs is None else pairs
        if not pairs:
            raise DataError(f"{self.root / folder}: empty CHN6-CUG split")
        self.ids = sorted(pairs)
        self.pairs = pairs
        self.transform = transform
        self.mean, self.std = mean, std
        self.mosaic_ratio = check_mosaic_ratio(mosaic_ratio)

    def __len__(self) -> int:
        return len(self.ids)

    def sample_id(self, index: int) -> str:
        """``meta["id"]`` of sample ``index``, known without reading it (to find files named after it)."""
        return self.ids[index]

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB image (H×W×3) and binary road mask (H×W) of tile ``index``."""
        image_path, mask_path = self.pairs[self.ids[index]]
        image = read_image(image_path)
        if image.ndim != 3 or image.shape[2] < 3:
            raise DataError(f"{image_path}: expected an RGB image, got shape {image.shape}")
        mask = binarise_mask(read_image(mask_path), ROAD_THRESHOLD)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"size mismatch: {image_path} is {image.shape[0]}×{image.shape[1]} but "
                f"{mask_path} is {mask.shape[0]}×{mask.shape[1]}"
            )
        return image[..., :3], mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, mosaic_meta = self.training_pair(index)
        height, width = mask.shape
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": normalise(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "meta": {"id": self.ids[index], "height": height, "width": width, **mosaic_meta},
        }


class CHN6CUGDataModule(BaseDataModule):
    """CHN6-CUG for fit/validate/test/predict, read straight from the official layout (no preparation).

    ``crop_size`` random-crops training tiles (None keeps whole tiles; tiles are 512², so 512 only pads
    smaller ones, with ignore); ``augment`` adds flips and rot90 (``train_transforms``, ``mosaic_ratio``:
    ``BaseDataModule``). Evaluation uses whole tiles. Under the
    ``official`` protocol there is no val split (fit runs without validation, ``validate`` raises a
    DataError); ``holdout`` holds ``val_fraction`` of ``train/`` out as val. Test uses ``val/``; predict
    uses the protocol split ``predict_split`` ("test" = ``val/`` by default, "train", or "val" under
    ``holdout``), whole tiles without augmentation.
    """

    default_protocol = DEFAULT_PROTOCOL

    def __init__(self, root: str, val_fraction: float = 0.1, **kwargs: Any) -> None:
        """``val_fraction``: share of train held out as val under "holdout"; others: ``BaseDataModule``."""
        super().__init__(root, **kwargs)
        self.val_fraction = val_fraction
        self.splits: dict[str, dict[str, tuple[Path, Path]]] | None = None

    def make_spec(self, protocol: str) -> DatasetSpec:
        return chn6cug_spec(protocol)

    def has_val_split(self) -> bool:
        return "val" in self.load_splits()

    def load_splits(self) -> dict[str, dict[str, tuple[Path, Path]]]:
        if self.splits is None:
            self.splits = protocol_splits(self.root, self.protocol, self.val_fraction)
            for split, pairs in self.splits.items():
                logger.info("%s (%s protocol) %s: %d tiles", DATASET, self.protocol, split, len(pairs))
        return self.splits

    def _split_dataset(
        self, split: str, transform: A.Compose | None = None, mosaic_ratio: float = 0.0
    ) -> CHN6CUGDataset:
        folder = "val" if split == "test" else "train"
        pairs = self.load_splits()[split]
        return CHN6CUGDataset(self.root, folder, pairs=pairs, transform=transform, mosaic_ratio=mosaic_ratio)

    def setup(self, stage: str | None = None) -> None:
        splits = self.load_splits()
        if stage in ("fit", None):
            self.train_dataset = self._split_dataset("train", self.train_transform(), self.mosaic_ratio)
        if stage in ("fit", "validate", None):
            if "val" in splits:
                self.val_dataset = self._split_dataset("val")
            elif stage == "validate":
                raise DataError(
                    f"{self.root}: CHN6-CUG protocol {self.protocol!r} has no val split (val/ is the test "
                    "split papers report on); evaluate with `test`, or use protocol 'holdout'"
                )
        if stage in ("test", None):
            self.test_dataset = self._split_dataset("test")
        if stage in ("predict", None):
            split = self.checked_predict_split(splits)
            reuse = split == "test" and self.test_dataset is not None
            self.predict_dataset = self.test_dataset if reuse else self._split_dataset(split)
