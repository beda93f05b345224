"""UAVid over a prepared root: labelled and unlabelled patch datasets, whole-frame DDP sharding and
the datamodule (fit/validate/predict; test labels are private)."""


from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data.distributed import DistributedSampler

from rsseg.data.core.errors import DataError
from rsseg.data.core.prepared import PreparedPatchDataset, PreparedRootDataModule
from rsseg.data.core.spec import DatasetSpec
from rsseg.data.core.transforms import normalise
from rsseg.data.datasets.uavid.labels import DATASET, DEFAULT_PROTOCOL, UNLABELLED_SPLITS, uavid_spec

logger = logging.getLogger(__name__)

RAW_PATTERN = "uavid_*"
_TEST_REFUSAL = (
    "UAVid test labels are not public: scores on uavid_test come from the benchmark server "
    "(https://codalab.lisn.upsaclay.fr/competitions/7302). Evaluate on val with `validate`, or run "
    "`predict` with rsseg.data.UAVidSubmissionWriter to write the submission."
)


# UAVid views are oblique: the far, small-scale part of the scene is at the top, so vertical flips and
# 90° rotations (the nadir default, ``augment.NADIR_DEFAULT``) would show impossible views.
UAVID_DEFAULT = ("random_crop", "hflip")


_META_KEYS = ("id", "tile", "seq", "frame", "y", "x", "height", "width", "tile_height", "tile_width")


class UAVidDataset(PreparedPatchDataset):
    """One labelled split of a prepared UAVid root; ``meta`` adds ``seq``, ``frame`` and
    ``frame_patches`` (patches of that frame in the split), which the submission writer stitches by."""

    dataset_name = DATASET
    display_name = "UAVid"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_patches = Counter(patch["tile"] for patch in self.patches)

    def frame_meta(self, index: int) -> dict[str, Any]:
        entry = self.patches[index]
        return {**{key: entry[key] for key in _META_KEYS}, "frame_patches": self.frame_patches[entry["tile"]]}

    def sample_meta(self, index: int) -> dict[str, Any]:
        return self.frame_meta(index)

    def tile_meta(self, tile: str, entry: dict[str, Any]) -> dict[str, Any]:
        """A whole stitched frame as one "patch" at (0, 0), so UAVidSubmissionWriter writes it as it comes
        (whole-frame prediction, e.g. D2LS's 1152×1024 test tiles: ``inference_tiles``)."""
        height, width = entry["tile_height"], entry["tile_width"]
        return {**super().tile_meta(tile, entry), "seq": entry["seq"], "frame": entry["frame"], "y": 0, "x": 0,
                "tile_height": height, "tile_width": width, "frame_patches": 1}


class UAVidUnlabelledDataset(UAVidDataset):
    """The test split: image patches only (labels are private), ``{"image", "meta"}`` per sample."""

    labelled = False

    def mask_path(self, index: int) -> Path:
        raise DataError(f"{self.root}: the UAVid {self.split} split has no labels")

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_path(index)
        image = self.read_patch(path, index)
        if image.ndim != 3:
            raise self.damaged(index, f"{path}: expected a multi-band image, got shape {image.shape}")
        return {"image": normalise(image, self.mean, self.std), "meta": self.frame_meta(index)}


class FrameShardSampler(DistributedSampler):
    """Shards an evaluation set by whole frames: rank r gets every patch of frames r, r+N, …

    Every sample is seen exactly once (no padding duplicates), and each rank can stitch and write its
    frames without talking to the others.
    """

    def __init__(self, dataset: UAVidDataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        frames = list(dict.fromkeys(patch["tile"] for patch in dataset.patches))
        mine = set(frames[rank::num_replicas])
        self.indices = [i for i, patch in enumerate(dataset.patches) if patch["tile"] in mine]
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class UAVidDataModule(PreparedRootDataModule):
    """UAVid patches for fit/validate/predict; prepare the root first with ``prepare_uavid``.

    ``crop_size`` random-crops training patches (None keeps whole patches), then ``augment`` flips them
    horizontally (``UAVID_DEFAULT``; ``train_transforms`` replaces it); evaluation uses whole patches.
    ``predict_split`` is ``"test"`` (the submission) or ``"val"`` (to check a submission locally with the
    toolkit's evaluate.py). ``setup("test")`` raises: test labels are private.
    """

    dataset_class = UAVidDataset
    default_protocol = DEFAULT_PROTOCOL
    default_train_steps = UAVID_DEFAULT
    raw_pattern = RAW_PATTERN

    def __init__(self, root: str, predict_split: str = "test", **kwargs: Any) -> None:
        """``predict_split``: "test" (the submission) or "val"; other arguments: ``PreparedRootDataModule``."""
        if predict_split not in ("test", "val"):
            raise ValueError(f"predict_split must be 'test' or 'val', got {predict_split!r}")
        super().__init__(root, predict_split=predict_split, **kwargs)

    def make_spec(self, protocol: str, manifest: dict[str, Any] | None = None) -> DatasetSpec:
        return uavid_spec(protocol)

    def setup(self, stage: str | None = None) -> None:
        if stage == "test":
            raise DataError(f"{self.root}: {_TEST_REFUSAL}")
        splits = self.load_manifest()["patches"]
        if stage in ("fit", None):
            self.train_dataset = self._dataset("train", self.train_transform(), self.mosaic_ratio)
        if stage in ("fit", "validate", None):
            if "val" in splits:
                self.val_dataset = self._dataset("val")
            elif stage == "validate":
                raise DataError(
                    f"{self.root}: protocol {self.protocol!r} has no val split (val frames are trained on); "
                    "prepare with protocol 'official' to validate"
                )
        if stage in ("predict", None):
            if self.predict_split in splits:
                self.predict_dataset = self._predict_dataset()
            elif stage == "predict":
                raise DataError(
                    f"{self.root}: no {self.predict_split!r} split was prepared"
                    + (" (uavid_test was not found under --src)" if self.predict_split == "test" else "")
                )

    def _predict_dataset(self) -> UAVidDataset:
        manifest = self.load_manifest()
        cls = UAVidUnlabelledDataset if self.predict_split in UNLABELLED_SPLITS else UAVidDataset
        return cls(self.root, self.predict_split, manifest=manifest)

    def test_dataloader(self):
        raise DataError(f"{self.root}: {_TEST_REFUSAL}")

    def _unpadded_sampler(self, dataset: PreparedPatchDataset) -> torch.utils.data.Sampler | None:
        """Under DDP, whole frames per rank, so predictions can be stitched and written rank-locally."""
        kwargs = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer else None
        if not kwargs or kwargs.get("num_replicas", 1) <= 1:
            return None
        return FrameShardSampler(dataset, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"])

    def _log_splits(self, manifest: dict[str, Any]) -> None:
        for split, info in manifest["splits"].items():
            logger.info(
                "uavid (%s protocol) %s: %d sequences, %d frames, %d patches, %s",
                self.protocol,
                split,
                info["num_sequences"],
                info["num_frames"],
                info["num_patches"],
                "labelled" if info["labelled"] else "no labels (predict only)",
            )
