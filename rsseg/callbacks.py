"""Lightning callbacks for cross-cutting concerns (timing)."""

from __future__ import annotations

import time

import torch
from lightning import Callback


def _synchronize(pl_module) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class InferenceTimer(Callback):
    """Measures the model time of the last test loop (``stage="validate"``: of the last validation loop),
    data loading excluded, and counts its images, for images/s."""

    def __init__(self, stage: str = "test") -> None:
        if stage not in ("test", "validate"):
            raise ValueError(f"stage must be 'test' or 'validate', got {stage!r}")
        self.stage = stage
        self.seconds = 0.0
        self.images = 0
        self._start = 0.0

    def _epoch_start(self) -> None:
        self.seconds, self.images = 0.0, 0

    def _batch_start(self, pl_module) -> None:
        _synchronize(pl_module)
        self._start = time.perf_counter()

    def _batch_end(self, pl_module, batch) -> None:
        _synchronize(pl_module)
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch["image"].shape[0])

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if self.stage == "test":
            self._epoch_start()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "test":
            self._batch_start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "test":
            self._batch_end(pl_module, batch)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.stage == "validate":
            self._epoch_start()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "validate":
            self._batch_start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "validate":
            self._batch_end(pl_module, batch)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")
