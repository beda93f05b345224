"""Sliding-window inference over a scene read strip by strip, so a 10k×10k raster never loads whole.

The window grid, the blend weights and the order in which windows are summed are those of
:func:`rsseg.models.sliding_window.sliding_window_logits`, so a scene gets the logits that function gives
the whole image (the same windows; batches of windows may differ, which moves float results by rounding
only). The difference is what is held: one strip of windows of raw pixels, and the logits of at most
``window`` rows. Rows are handed to ``emit`` as soon as no later window can touch them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rsseg.grid import axis_starts_aligned
from rsseg.models.sliding_window import blend_weights

# (row, rows) → float32 C×rows×W, normalised; the last rows of the scene may be asked beyond its height
ReadRows = Callable[[int, int], torch.Tensor]
# (row, logits K×rows×W) for rows that are final, top to bottom
EmitRows = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class WindowGrid:
    """The windows of a ``height``×``width`` scene: those of ``sliding_window_logits`` (a side shorter than a
    window is padded to one, bottom or right, as there), or the scene itself when it fits one window."""

    height: int
    width: int
    window: int
    overlap: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"overlap must be in [0, window), got overlap={self.overlap}, window={self.window}")

    @property
    def whole(self) -> bool:
        """The scene fits one window: it goes through the network as it is, unpadded (as the tasks do)."""
        return max(self.height, self.width) <= self.window

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.window), max(self.width, self.window)

    @property
    def rows(self) -> list[int]:
        return axis_starts_aligned(self.padded[0], self.window, self.window - self.overlap)

    @property
    def columns(self) -> list[int]:
        return axis_starts_aligned(self.padded[1], self.window, self.window - self.overlap)

    def __len__(self) -> int:
        return 1 if self.whole else len(self.rows) * len(self.columns)


@torch.no_grad()
def stream_scene_logits(predict: Callable[[torch.Tensor], torch.Tensor], read_rows: ReadRows, emit: EmitRows,
                        grid: WindowGrid, blend: str = "gaussian", batch_size: int = 4,
                        on_windows: Callable[[int], None] | None = None) -> None:
    """Predict every window of ``grid`` (``predict``: N×C×w×w → N×K×w×w logits, on the CPU or not) and emit
    the blended logits of the scene's rows in order; ``on_windows(n)`` after each batch (progress)."""
    if grid.whole:
        emit(0, predict(read_rows(0, grid.height)[None])[0].float().cpu())
        if on_windows is not None:
            on_windows(1)
        return
    window, (_, padded_width) = grid.window, grid.padded
    weights = blend_weights(window, blend)
    rows, columns = grid.rows, grid.columns
    logits_sum: torch.Tensor | None = None  # rows [held_from, held_from + its height) of the scene
    weight_sum = torch.zeros(0, padded_width)
    held_from = 0
    for index, y in enumerate(rows):
        strip = _padded(read_rows(y, min(window, grid.height - y)), window, padded_width)
        end = y + window
        if logits_sum is not None and end - held_from > logits_sum.shape[1]:  # grow the held rows down to ``end``
            grow = end - held_from - logits_sum.shape[1]
            logits_sum = F.pad(logits_sum, (0, 0, 0, grow))
            weight_sum = F.pad(weight_sum, (0, 0, 0, grow))
        elif logits_sum is None:
            weight_sum = torch.zeros(window, padded_width)
        for start in range(0, len(columns), batch_size):
            chunk = columns[start : start + batch_size]
            out = predict(torch.stack([strip[:, :, x : x + window] for x in chunk])).float().cpu()
            if logits_sum is None:
                logits_sum = torch.zeros(out.shape[1], window, padded_width)
            top = y - held_from
            for i, x in enumerate(chunk):
                logits_sum[:, top : top + window, x : x + window] += out[i] * weights
                weight_sum[top : top + window, x : x + window] += weights
            if on_windows is not None:
                on_windows(len(chunk))
        final = rows[index + 1] if index + 1 < len(rows) else end  # no later window starts above it
        done = min(final, grid.height) - held_from
        if done > 0:
            emit(held_from, (logits_sum[:, :done] / weight_sum[:done])[..., : grid.width])
        logits_sum, weight_sum = logits_sum[:, final - held_from :], weight_sum[final - held_from :]
        held_from = final


def _padded(strip: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """A C×h×w strip zero-padded to C×rows×width (bottom and right: the grid's padding of small scenes)."""
    pad_rows, pad_columns = rows - strip.shape[1], width - strip.shape[2]
    if pad_rows < 0 or pad_columns < 0:
        raise ValueError(f"a strip of {tuple(strip.shape[1:])} does not fit {rows}×{width}")
    return F.pad(strip, (0, pad_columns, 0, pad_rows)) if pad_rows or pad_columns else strip


def labels_and_probabilities(logits: torch.Tensor, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 class indices of K×h×w logits, and with ``probabilities`` the softmax as uint8 (p·255, rounded)."""
    labels = logits.argmax(0).to(torch.uint8).numpy()
    if not probabilities:
        return labels, None
    return labels, (logits.softmax(0) * 255).round_().to(torch.uint8).numpy()
