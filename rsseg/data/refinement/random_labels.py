"""Random label maps: the only data IDGBR's label embedding network trains on (§III-A: "does not require
image data"; the released code draws uniform 64 × 64 maps)."""

from __future__ import annotations

from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, Dataset


class RandomLabelMaps(Dataset):
    """``length`` maps of ``size``² pixels, each pixel uniform over ``num_classes``; sample ``i`` is drawn
    from seed ``seed + i``, so a split is the same in every epoch, worker and run."""

    def __init__(self, num_classes: int, size: int = 64, length: int = 1000, seed: int = 0) -> None:
        if num_classes < 2 or size < 1 or length < 1:
            raise ValueError(f"need num_classes ≥ 2, size ≥ 1, length ≥ 1 (got {num_classes}, {size}, {length})")
        self.num_classes, self.size, self.length, self.seed = num_classes, size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed + index)
        mask = torch.randint(0, self.num_classes, (self.size, self.size), generator=generator)
        return {"mask": mask, "meta": {"id": f"random_{index}"}}


class RandomLabelMapDataModule(lightning.LightningDataModule):
    """Train on ``train_samples`` random maps per epoch, validate on ``val_samples`` others (seeds apart).

    Args:
        num_classes: K of the dataset whose labels will be embedded (Potsdam/Vaihingen 6, CHN6-CUG 2).
        size: map side in pixels (the released code: 64).
    """

    def __init__(self, num_classes: int, size: int = 64, batch_size: int = 4, train_samples: int = 80_000,
                 val_samples: int = 256, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_dataset = RandomLabelMaps(num_classes, size, train_samples, seed)
        self.val_dataset = RandomLabelMaps(num_classes, size, val_samples, seed + train_samples)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.batch_size, num_workers=self.num_workers)
