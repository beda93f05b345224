"""Progress that reads well where it is shown: a live bar in a terminal, dated lines in a log file or pipe.

Lightning's rich bar draws nothing readable into a file until a stage ends (a long test stage stays silent
for minutes) and titles a step-budgeted run (``max_epochs: -1``) "Epoch 11/-2". :func:`progress_callback`
picks :class:`EpochBar` for a terminal and :class:`ProgressLines` otherwise; the command line adds it unless
the configuration has a progress bar of its own or turns progress off.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

logger = logging.getLogger("rsseg.progress")


def _epoch_title(trainer: Any, epoch: int) -> str:
    """"Epoch 3/39", or "Epoch 3 · step 120/200" when the run is bounded by steps (``max_epochs`` −1 or None)."""
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        return f"Epoch {epoch}/{trainer.max_epochs - 1}"
    steps = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
    return f"Epoch {epoch} · step {trainer.global_step}{steps}"


class EpochBar(RichProgressBar):
    """Lightning's rich bar with a meaningful epoch title for step-budgeted runs."""

    def _get_train_description(self, current_epoch: int) -> str:
        title = _epoch_title(self.trainer, current_epoch)
        return f"{title:{len(self.validation_description)}}"  # padded as Lightning's, so the bars do not flicker


class ProgressLines(ProgressBar):
    """Progress as log lines (logger ``rsseg.progress``): where each stage starts and ends, and in between at
    most one line every ``interval`` seconds with the batch count, speed and the logged metrics."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._starts: dict[str, float] = {}
        self._last = 0.0
        self._epoch_batches: int | float = math.inf

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # --- one helper per event kind; ``clock`` names the stage whose time and speed a line reports -------
    def _begin(self, clock: str, label: str | None = None) -> None:
        self._starts[clock] = self._last = time.monotonic()
        if self._enabled and label:
            logger.info("%s: started", label)

    def _step(self, clock: str, label: str, done: int, total: int | float, extra: str = "") -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < self.interval:
            return
        self._last = now
        rate = done / max(now - self._starts.get(clock, now), 1e-9)
        count = f"{done}/{total}" if math.isfinite(total) else str(done)
        logger.info("%s: batch %s (%.2f it/s)%s", label, count, rate, extra)

    def _end(self, clock: str, label: str, extra: str = "") -> None:
        seconds = time.monotonic() - self._starts.pop(clock, time.monotonic())
        if self._enabled:
            logger.info("%s: done in %.0f s%s", label, seconds, extra)

    def _metrics(self, trainer, pl_module) -> str:
        values = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        return f"; {shown}" if shown else ""

    # --- training --------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_batches = self.total_train_batches  # read once: it counts the steps left in the budget
        self._begin("train", _epoch_title(trainer, trainer.current_epoch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._step("train", _epoch_title(trainer, trainer.current_epoch), batch_idx + 1, self._epoch_batches,
                   self._metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._end("train", _epoch_title(trainer, trainer.current_epoch), self._metrics(trainer, pl_module))

    # --- evaluation ------------------------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._begin("validation", "validation")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)  # the totals below are per dataloader
        if not trainer.sanity_checking:
            self._step("validation", "validation", batch_idx + 1, self.total_val_batches_current_dataloader)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._end("validation", "validation", self._metrics(trainer, pl_module))

    def on_test_start(self, trainer, pl_module) -> None:
        self._begin("test", "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._step("test", "test", batch_idx + 1, self.total_test_batches_current_dataloader)

    def on_test_end(self, trainer, pl_module) -> None:
        self._end("test", "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._begin("predict", "predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._step("predict", "predict", batch_idx + 1, self.total_predict_batches_current_dataloader)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._end("predict", "predict")


def progress_callback(stream=None) -> ProgressBar:
    """A live bar when ``stream`` (default stdout) is a terminal, log lines otherwise."""
    stream = sys.stdout if stream is None else stream
    if not getattr(stream, "isatty", lambda: False)():
        return ProgressLines()
    return EpochBar() if _RICH_AVAILABLE else TQDMProgressBar()
