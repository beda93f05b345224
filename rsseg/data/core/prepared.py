"""Prepared roots: a dataset cut into patches by ``rsseg prepare``, its patch datasets and its datamodule.

A prepared root (see ``prepare.py``) holds ``<split>/images/<id>.png`` (RGB uint8),
``<split>/masks/<id>.png`` (class indices, 255 = ignore) and a ``manifest.json`` listing each split's
patches with their origin in the source tile, the protocol and the preparation parameters. Potsdam,
Vaihingen and UAVid are read this way; the loaders themselves are ``datamodule.BaseDataModule``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsseg.data.core.augment import MosaicMixin, check_mosaic_ratio
from rsseg.data.core.datamodule import BaseDataModule
from rsseg.data.core.errors import DataError
from rsseg.data.core.io import RAW_FILE_FIX, read_image
from rsseg.data.core.prepare import MANIFEST_FORMAT, MANIFEST_NAME, read_manifest
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise

logger = logging.getLogger(__name__)


def open_prepared_root(
    root: str | Path, dataset: str, display_name: str | None = None, raw_pattern: str | None = None
) -> dict[str, Any]:
    """Read the manifest of a prepared root, explaining what to do when ``root`` is not one."""
    root = Path(root)
    display_name = display_name or dataset
    prepare_hint = f"rsseg prepare {dataset} --src <downloaded files> --dst {root}"
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist; prepare {display_name} first with `{prepare_hint}`")
    manifest = read_manifest(root)
    if manifest is None:
        if raw_pattern and next(root.rglob(raw_pattern), None) is not None:
            raise DataError(
                f"{root}: this is the raw {display_name} download, not a prepared root; run "
                f"`rsseg prepare {dataset} --src {root} --dst <prepared>` and use <prepared> as root"
            )
        raise DataError(f"not a prepared {display_name} root: {root} (no {MANIFEST_NAME})")
    if manifest.get("dataset") != dataset:
        raise DataError(f"{root}: prepared for dataset {manifest.get('dataset')!r}, not {dataset!r}")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(
            f"{root}: prepared by an incompatible rsseg version (format {manifest.get('format')!r}, "
            f"expected {MANIFEST_FORMAT}); remove it and run `{prepare_hint}` again"
        )
    return manifest


def rebuild_command(root: Path, manifest: dict[str, Any], dataset: str = "") -> str:
    """The command that rebuilds a prepared root; the raw folder is named only when the manifest has it."""
    source = manifest.get("source_root")
    source = source if isinstance(source, str) and source else "<your raw folder>"
    return f"rsseg prepare {manifest.get('dataset') or dataset} --src {source} --dst {root} --force"


class PreparedPatchDataset(MosaicMixin, Dataset):
    """One split of a prepared root: sample = ``{"image", "mask", "meta"}`` (docs/architecture.md, the batch contract).

    ``meta`` describes the stored patch: ``id``, ``tile``, its origin ``y``/``x`` in the tile, the valid
    (unpadded) ``height``/``width`` inside the patch and the tile size. Under a random crop it still
    describes the patch the crop came from; with ``mosaic_ratio > 0`` it describes the patch at the
    mosaic's top-left and adds ``mosaic``/``mosaic_ids`` (``augment.MosaicMixin``).
    """

    dataset_name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    labelled: ClassVar[bool] = True  # False for a split without masks (UAVid's test)

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: A.Compose | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        manifest: dict[str, Any] | None = None,
        mosaic_ratio: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.mosaic_ratio = check_mosaic_ratio(mosaic_ratio)
        self.mean, self.std = mean, std
        manifest = manifest or open_prepared_root(self.root, self.dataset_name, self.display_name)
        if split not in manifest["patches"]:
            raise DataError(
                f"{self.root}: no {split!r} split in this prepared dataset "
                f"(it has {', '.join(manifest['patches'])})"
            )
        self.patches: list[dict[str, Any]] = manifest["patches"][split]
        self.ignore_index: int = manifest.get("ignore_index", IGNORE_INDEX)
        self.rebuild_command = rebuild_command(self.root, manifest, self.dataset_name)

    def __len__(self) -> int:
        return len(self.patches)

    def sample_id(self, index: int) -> str:
        """``meta["id"]`` of sample ``index``, known without reading it (to find files named after it)."""
        return self.patches[index]["id"]

    def image_path(self, index: int) -> Path:
        return self.root / self.split / "images" / f"{self.patches[index]['id']}.png"

    def mask_path(self, index: int) -> Path:
        return self.root / self.split / "masks" / f"{self.patches[index]['id']}.png"

    def read_patch(self, path: Path, index: int) -> np.ndarray:
        """``read_image`` of a file of patch ``index``; a damaged one says how to rebuild the root."""
        try:
            return read_image(path)
        except DataError as error:
            raise self.damaged(index, str(error).replace(RAW_FILE_FIX, "")) from error

    def damaged(self, index: int, problem: str) -> DataError:
        """A DataError for an unusable prepared patch: re-extracting the raw archive cannot fix it."""
        return DataError(
            f"{problem}. It is patch {self.sample_id(index)} of the {self.split!r} split of the prepared "
            f"root {self.root}, which must be rebuilt: `{self.rebuild_command}`"
        )

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored image (H×W×C) and mask (H×W) of patch ``index``, checked to match."""
        image_path, mask_path = self.image_path(index), self.mask_path(index)
        image, mask = self.read_patch(image_path, index), self.read_patch(mask_path, index)
        if image.ndim != 3:
            raise self.damaged(index, f"{image_path}: expected a multi-band image, got shape {image.shape}")
        if mask.ndim != 2:
            raise self.damaged(index, f"{mask_path}: expected a single-band index mask, got shape {mask.shape}")
        if image.shape[:2] != mask.shape:
            raise self.damaged(
                index,
                f"size mismatch: {image_path} is {image.shape[0]}×{image.shape[1]} but "
                f"{mask_path} is {mask.shape[0]}×{mask.shape[1]}",
            )
        return image, mask

    def tile_meta(self, tile: str, entry: dict[str, Any]) -> dict[str, Any]:
        """``meta`` of a whole stitched tile (:class:`StitchedTileDataset`); ``entry`` is one of its patches."""
        return {"id": tile, "tile": tile, "height": entry["tile_height"], "width": entry["tile_width"]}

    def sample_meta(self, index: int) -> dict[str, Any]:
        """``meta`` of patch ``index`` (from the manifest)."""
        entry = self.patches[index]
        return {key: entry[key] for key in ("id", "tile", "y", "x", "height", "width", "tile_height", "tile_width")}

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, mosaic_meta = self.training_pair(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": normalise(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "meta": {**self.sample_meta(index), **mosaic_meta},
        }


class StitchedTileDataset(Dataset):
    """Whole tiles of an evaluation split, stitched back from their prepared patches by origin.

    For native-resolution evaluation with sliding windows. Images stay uint8 (C×H×W): a 6000² RGB tile
    is 108 MB instead of 432 MB as float32, and the task normalises window by window on its device.
    Every patch holds source pixels (overlapping ones the same), so the stitched tile equals the source tile
    exactly. An unlabelled split (``labelled = False`` on the patch dataset, e.g. UAVid's test) gives no
    ``mask``; ``meta`` is the patch dataset's :meth:`PreparedPatchDataset.tile_meta`.
    """

    def __init__(self, patches: PreparedPatchDataset) -> None:
        self.patches = patches
        self.tiles: dict[str, list[int]] = {}
        for index, entry in enumerate(patches.patches):
            self.tiles.setdefault(entry["tile"], []).append(index)
        self.names = list(self.tiles)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        tile = self.names[index]
        entries = [self.patches.patches[i] for i in self.tiles[tile]]
        height, width = entries[0]["tile_height"], entries[0]["tile_width"]
        labelled = self.patches.labelled
        image: np.ndarray | None = None
        mask = np.full((height, width), self.patches.ignore_index, np.uint8)
        for i, entry in zip(self.tiles[tile], entries, strict=True):
            patch = self.patches.read_patch(self.patches.image_path(i), i)
            if image is None:
                image = np.zeros((height, width, patch.shape[2]), np.uint8)
            y, x, h, w = entry["y"], entry["x"], entry["height"], entry["width"]
            image[y : y + h, x : x + w] = patch[:h, :w]
            if labelled:
                mask[y : y + h, x : x + w] = self.patches.read_patch(self.patches.mask_path(i), i)[:h, :w]
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                  "meta": self.patches.tile_meta(tile, entries[0])}
        if labelled:
            sample["mask"] = torch.from_numpy(mask).long()
        return sample


class PreparedRootDataModule(BaseDataModule):
    """Datamodule over a prepared root: splits come from its manifest, tiling was done by ``prepare``.

    The manifest must be of this dataset and prepared under the requested ``protocol`` (else a
    DataError that says how to prepare or what to request); a protocol without a val split (e.g.
    Potsdam "official") gets no val dataloader during fit, and ``validate`` raises a DataError.

    ``eval_whole_tiles=True`` evaluates and predicts whole source tiles (uint8, batch 1, stitched from
    the patches) instead of patches: pair it with the task's ``inference_window`` for native-resolution
    sliding-window evaluation.

    ``predict_split`` (default "test") is the split ``predict`` runs over, without the training
    transform (no crop, no augmentation), e.g. "train" to write coarse label maps of the training patches
    with :class:`rsseg.data.CoarseMapWriter`; a split the dataset does not have is a DataError at
    ``setup``. Other loader arguments: :class:`rsseg.data.core.datamodule.BaseDataModule`.

    Subclasses set ``dataset_class`` (which names the dataset), ``raw_pattern`` (a file name that marks
    the raw download, for a helpful error) and ``make_spec``.
    """

    dataset_class: ClassVar[type[PreparedPatchDataset]] = PreparedPatchDataset
    raw_pattern: ClassVar[str | None] = None

    def __init__(self, root: str, eval_whole_tiles: bool = False, **kwargs: Any) -> None:
        """``eval_whole_tiles``: evaluate stitched whole tiles; other arguments: ``BaseDataModule``."""
        super().__init__(root, **kwargs)
        self.eval_whole_tiles = eval_whole_tiles
        self.manifest: dict[str, Any] | None = None

    def make_spec(self, protocol: str, manifest: dict[str, Any] | None = None) -> DatasetSpec:
        """The dataset's label and metric convention; ``manifest`` refines it after setup."""
        raise NotImplementedError

    @property
    def dataset_name(self) -> str:
        return self.dataset_class.dataset_name

    def has_val_split(self) -> bool:
        return "val" in self.load_manifest()["patches"]

    def load_manifest(self) -> dict[str, Any]:
        if self.manifest is None:
            cls = self.dataset_class
            manifest = open_prepared_root(self.root, cls.dataset_name, cls.display_name, self.raw_pattern)
            prepared = manifest["parameters"].get("protocol")
            if prepared != self.protocol:
                raise DataError(
                    f"{self.root}: prepared with protocol {prepared!r} but protocol "
                    f"{self.protocol!r} was requested; prepare another root with "
                    f"--protocol {self.protocol} or request {prepared!r}"
                )
            self.manifest = manifest
            self.spec = self.make_spec(self.protocol, manifest)
            self._log_splits(manifest)
        return self.manifest

    def _dataset(
        self, split: str, transform: A.Compose | None = None, mosaic_ratio: float = 0.0
    ) -> PreparedPatchDataset:
        return self.dataset_class(self.root, split, transform, manifest=self.load_manifest(),
                                  mosaic_ratio=mosaic_ratio)

    def setup(self, stage: str | None = None) -> None:
        splits = self.load_manifest()["patches"]
        if stage in ("fit", None):
            self.train_dataset = self._dataset("train", self.train_transform(), self.mosaic_ratio)
        if stage in ("fit", "validate", None):
            if "val" in splits:
                self.val_dataset = self._dataset("val")
            elif stage == "validate":
                raise DataError(
                    f"{self.root}: protocol {self.protocol!r} has no val split; "
                    "evaluate with `test`, or use a protocol with a val split"
                )
        if stage in ("test", None):
            self.test_dataset = self._dataset("test")
        if stage in ("predict", None):
            self.predict_dataset = self._dataset(self.checked_predict_split(splits))

    def _log_splits(self, manifest: dict[str, Any]) -> None:
        for split, info in manifest["splits"].items():
            logger.info(
                "%s (%s protocol) %s: %d tiles %s, %d patches, %s labels",
                self.dataset_name,
                self.protocol,
                split,
                info["num_tiles"],
                info["tiles"],
                info["num_patches"],
                info["label_kind"],
            )
            if info.get("missing_tiles"):
                logger.warning(
                    "%s: %s split is incomplete, %d of %d protocol tiles prepared (missing %s); results are "
                    "not comparable with published numbers",
                    self.root,
                    split,
                    info["num_tiles"],
                    info["num_tiles"] + len(info["missing_tiles"]),
                    ", ".join(info["missing_tiles"]),
                )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        if not train and self.eval_whole_tiles:
            if not isinstance(dataset, PreparedPatchDataset):
                raise ValueError(f"{type(self).__name__} already evaluates whole images; eval_whole_tiles is for "
                                 "datasets cut into patches by `rsseg prepare`")
            dataset, batch_size = StitchedTileDataset(dataset), 1  # tiles differ in size
        return super()._loader(dataset, batch_size, train)
