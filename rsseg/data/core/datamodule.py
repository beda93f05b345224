"""The datamodule base every rsseg dataset shares, prepared or read as released.

It owns the batch contract (samples are ``{"image", "mask", "meta"}`` dicts, docs/architecture.md, the batch contract),
the loader arguments, the dataloaders with their per-worker augmentation seeding, the DDP samplers that
shard evaluation sets without duplicates, the normalisation statistics a task needs, the dataset's
label convention (``spec``) and the ``predict_split`` check. Where the samples come from is the
subclass's: :class:`rsseg.data.core.prepared.PreparedRootDataModule` reads a root cut into patches by
``rsseg prepare``; the datasets read as released (LoveDA, RefSegRS, CHN6-CUG) list their files
themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import lightning
import torch
from torch.utils.data import DataLoader, Dataset

from rsseg.data.core.augment import NADIR_DEFAULT, build_train_transform, check_mosaic_ratio, resolve_steps
from rsseg.data.core.errors import DataError
from rsseg.data.core.spec import DatasetSpec
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, seed_augmentation


class BaseDataModule(lightning.LightningDataModule):
    """Loader arguments, dataloaders and DDP-exact evaluation sampling for one dataset under ``root``.

    Subclasses set ``default_protocol``, implement ``make_spec`` (the label and metric convention of a
    protocol), ``setup`` (which fills ``train_dataset``, ``val_dataset``, ``test_dataset`` and
    ``predict_dataset`` for its stage) and ``has_val_split``: a protocol without a val split gets no val
    dataloader during fit. ``predict_split`` (default "test") is the split ``predict`` runs over, without
    the training transform; ``checked_predict_split`` makes a split the dataset does not have a DataError.
    Under DDP, val/test/predict loaders shard without padding, so every sample is counted exactly once.

    Training augmentation (docs/augmentation.md): ``train_transforms`` is a list of steps for
    ``rsseg.data.core.augment.build_train_transform`` (recipe names such as ``random_scale``,
    ``smart_crop``, ``default``; ``{recipe: …, <parameter>: …}``; albumentations transforms as dicts);
    None keeps the dataset's default ``default_train_steps`` (a random ``crop_size`` crop, then flips and
    rot90 if ``augment``). ``mosaic_ratio`` in [0, 1] is the probability that a training sample becomes
    GeoSeg's 4-image mosaic before those steps run. Both are checked here: a bad step or ratio is a
    ValueError at construction, not at the first batch. A subclass whose samples forbid them sets
    ``fixed_augmentation`` to the reason, and either option is then a ValueError giving it.
    """

    default_protocol: ClassVar[str] = ""
    default_train_steps: ClassVar[tuple[str, ...]] = NADIR_DEFAULT
    fixed_augmentation: ClassVar[str] = ""

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: int | None = 512,
        protocol: str | None = None,
        eval_batch_size: int | None = None,
        augment: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        predict_split: str = "test",
        train_transforms: list[Any] | None = None,
        mosaic_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError("batch sizes must be at least 1")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be positive or None, got {crop_size}")
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        self.protocol = protocol or self.default_protocol
        self.augment = augment
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.predict_split = predict_split
        self.train_transforms = train_transforms
        self.mosaic_ratio = check_mosaic_ratio(mosaic_ratio)
        if self.fixed_augmentation and (train_transforms is not None or self.mosaic_ratio > 0):
            raise ValueError(f"{type(self).__name__} takes neither train_transforms nor mosaic_ratio: "
                             f"{self.fixed_augmentation}")
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD  # what the task needs to normalise uint8 tiles
        self.spec: DatasetSpec = self.make_spec(self.protocol)
        self.num_classes: int = self.spec.num_classes
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        # a bad step fails now, not at the first batch; resolving draws no random number
        resolve_steps(train_transforms, crop_size, augment, self.spec.ignore_index, self.default_train_steps)

    def input_spec(self) -> dict[str, Any]:
        """What a trained model needs to read new imagery the way this datamodule fed it (``rsseg infer``; kept
        in checkpoints as ``rsseg_input``): the bands, the raw pixel type and the scale that maps it to 0–1,
        the per-band statistics applied after, and the classes with their colours (docs/inference.md)."""
        return {
            "dataset": self.spec.name, "protocol": self.spec.protocol, "classes": list(self.spec.classes),
            "palette": [list(colour) for colour in self.spec.palette], "ignore_index": self.spec.ignore_index,
            "in_channels": int(getattr(self, "in_channels", len(self.mean))), "bands": getattr(self, "bands", None),
            "dtype": "uint8", "value_scale": 255.0, "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
        }

    def train_transform(self) -> A.Compose | None:
        """The seeded training pipeline: ``train_transforms``, or the dataset's default when None."""
        return build_train_transform(
            self.train_transforms, self.crop_size, self.augment, self.spec.ignore_index, self.default_train_steps
        )

    def make_spec(self, protocol: str) -> DatasetSpec:
        """The dataset's label and metric convention under ``protocol``."""
        raise NotImplementedError

    @property
    def dataset_name(self) -> str:
        return self.spec.name

    def has_val_split(self) -> bool:
        """Whether the protocol has a val split (without one, fit runs without validation)."""
        raise NotImplementedError

    def checked_predict_split(self, splits: Iterable[str]) -> str:
        """``predict_split`` if it is one of ``splits``, else a DataError naming the root and the splits."""
        splits = list(splits)
        if self.predict_split not in splits:
            raise DataError(
                f"{self.root}: predict_split {self.predict_split!r} is not a split of this "
                f"{self.spec.name} dataset (it has {', '.join(splits)})"
            )
        return self.predict_split

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = None if train else self._unpadded_sampler(dataset)
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=seed_augmentation if workers > 0 else None,
        )

    def _unpadded_sampler(self, dataset: Dataset) -> torch.utils.data.Sampler | None:
        """Lightning's DistributedSampler pads eval sets with duplicates; shard without repeats instead."""
        kwargs = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer else None
        if not kwargs or kwargs.get("num_replicas", 1) <= 1:
            return None
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(
            dataset, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"], shuffle=False
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require("train_dataset", "fit"), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None and not self.has_val_split():
            return []  # the protocol has no val split: Lightning skips validation
        return self._loader(self._require("val_dataset", "validate"), self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require("test_dataset", "test"), self.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require("predict_dataset", "predict"), self.eval_batch_size, train=False)

    def _require(self, attribute: str, stage: str) -> Dataset:
        dataset = getattr(self, attribute)
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup({stage!r}) must run before its dataloader")
        return dataset
