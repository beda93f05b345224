"""Lightning callbacks for cross-cutting concerns (timing)."""

from __future__ import annotations

import time

import torch
from lightning import Callback


def _synchronize(pl_module) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class InferenceTimer(Callback):
    """Measures test-loop model time (data loading excluded) and counts images, for images/s."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self._start = 0.0

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.seconds, self.images = 0.0, 0

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        _synchronize(pl_module)
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        _synchronize(pl_module)
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch["image"].shape[0])

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")
