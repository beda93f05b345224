"""Per-unit evaluation counts: one confusion matrix per tile/image, or (I, U) per referring expression.

Confidence intervals over a benchmark resample its evaluation units (``rsseg.metrics.bootstrap``), so the
counts must be kept per unit, not only summed over the set. A unit is what the benchmark calls one test
item (:func:`unit_names`); every patch of a unit adds to the same counts. The counts are integers, each
rank keeps the units it saw, and ``compute`` sums every rank's: under DDP the result is exact as long as
every sample is scored once (the eval samplers shard without repeats), even when one tile's patches were
scored on different ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from rsseg.metrics.semantic import check_label_maps

__all__ = ["PerUnitConfusion", "PerUnitCounts", "PerUnitIoU", "per_sample_confusion", "unit_names"]


def _column(values: Any, batch_size: int, key: str) -> list[str]:
    """One collated meta entry (a list, or a tensor for numbers) as one string per sample."""
    values = values.tolist() if isinstance(values, Tensor) else list(values)
    if len(values) != batch_size:
        raise ValueError(f"meta[{key!r}] has {len(values)} entries for a batch of {batch_size}")
    return [str(v) for v in values]


def unit_names(meta: Mapping[str, Any] | None, batch_size: int) -> list[str]:
    """The evaluation unit of each sample of a collated batch ``meta`` (docs/architecture.md, the batch contract).

    ``meta["tile"]`` when present: the official tile of a prepared ISPRS patch (Potsdam, Vaihingen) or the
    frame of a UAVid patch, so that a tile's patches add up to the tile (a stitched whole tile names itself).
    Otherwise ``meta["id"]``: the image (LoveDA, CHN6-CUG). Referring samples (``meta["sentence_index"]``)
    are one expression each: ``"<id>#<sentence index>"``, where ``id`` is the RefSegRS image or the RRSIS-D
    ``ref_id`` and the index is the sentence's position in that object's list (stable; RRSIS-D's
    ``sent_id`` may be missing).
    """
    if not isinstance(meta, Mapping) or not ({"tile", "id"} & meta.keys()):
        raise ValueError("per-unit evaluation needs meta['tile'] or meta['id'] in every batch "
                         "(docs/architecture.md, the batch contract)")
    key = "tile" if "tile" in meta else "id"
    names = _column(meta[key], batch_size, key)
    if "sentence_index" in meta:
        sentences = _column(meta["sentence_index"], batch_size, "sentence_index")
        names = [f"{name}#{sentence}" for name, sentence in zip(names, sentences, strict=True)]
    return names


def per_sample_confusion(labels: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 B×K×K counts (rows = target, columns = prediction) of B×H×W int64 label maps, in one bincount.

    Pixels whose target or prediction lies outside ``[0, K)`` (the ignore index) are dropped, as
    :func:`rsseg.metrics.semantic.confusion_matrix` drops them once it has validated the values.
    """
    b, k = labels.shape[0], num_classes
    valid = ((target | labels) >= 0) & (target < k) & (labels < k)  # an OR is negative iff one of them is
    index = target * k + labels
    index += torch.arange(0, b * k * k, k * k, device=labels.device).view(b, 1, 1)
    index.masked_fill_(~valid, b * k * k)
    return torch.bincount(index.reshape(-1), minlength=b * k * k + 1)[: b * k * k].reshape(b, k, k)


def _all_ranks(local: tuple[list[str], np.ndarray]) -> list[tuple[list[str], np.ndarray]]:
    """Every rank's (names, counts); just ``local`` outside a multi-process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


class PerUnitCounts:
    """int64 counts of a fixed ``shape`` per named unit, summed over every sample of the unit.

    Counts stay on the device of the first ``add`` (one ``index_add_`` per batch, no host sync) in a
    buffer that doubles when full. ``compute`` is collective under DDP: every rank must call it.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.reset()

    def reset(self) -> None:
        self._rows: dict[str, int] = {}
        self._counts: Tensor | None = None

    def add(self, units: Sequence[str], counts: Tensor) -> None:
        """Add ``counts`` (B×shape, one per sample) to the units named ``units`` (B names, repeats allowed)."""
        if counts.shape != (len(units), *self.shape):
            raise ValueError(f"counts of shape {tuple(counts.shape)} for {len(units)} units of shape {self.shape}")
        rows = [self._rows.setdefault(name, len(self._rows)) for name in units]
        self._reserve(len(self._rows), counts.device)
        self._counts.index_add_(0, torch.tensor(rows, device=self._counts.device), counts.to(self._counts))

    def _reserve(self, n: int, device: torch.device) -> None:
        if self._counts is None:
            self._counts = torch.zeros(max(n, 64), *self.shape, dtype=torch.long, device=device)
        elif n > len(self._counts):
            grown = self._counts.new_zeros(max(n, 2 * len(self._counts)), *self.shape)
            grown[: len(self._counts)] = self._counts
            self._counts = grown

    def local(self) -> tuple[list[str], np.ndarray]:
        """This rank's units (in order of first appearance) and their counts, on the CPU."""
        names = list(self._rows)
        if self._counts is None:
            return names, np.zeros((0, *self.shape), np.int64)
        return names, self._counts[: len(names)].cpu().numpy()

    def compute(self) -> tuple[list[str], np.ndarray]:
        """Every rank's units, sorted by name, with their counts summed over ranks (n×shape int64)."""
        totals: dict[str, np.ndarray] = {}
        for names, counts in _all_ranks(self.local()):
            for name, count in zip(names, counts, strict=True):
                totals[name] = totals[name] + count if name in totals else count.copy()
        names = sorted(totals)
        return names, np.stack([totals[n] for n in names]) if names else np.zeros((0, *self.shape), np.int64)


class PerUnitConfusion(PerUnitCounts):
    """A K×K confusion matrix per unit (rows = target, columns = prediction); their sum over units is
    :class:`rsseg.metrics.SegmentationMetrics`' matrix of the same samples, bit for bit."""

    def __init__(self, num_classes: int) -> None:
        super().__init__((num_classes, num_classes))
        self.num_classes = num_classes

    def update(self, preds: Tensor, target: Tensor, units: Sequence[str]) -> None:
        """``preds`` B×H×W labels or B×K×H×W scores, ``target`` B×H×W labels (ignored pixels outside [0, K))."""
        labels, target = check_label_maps(preds, target, self.num_classes, check_nan=False)
        self.add(units, per_sample_confusion(labels, target, self.num_classes))


class PerUnitIoU(PerUnitCounts):
    """(I, U) = (|P ∧ G|, |P ∨ G|) per referring expression; their sums are
    :class:`rsseg.metrics.ReferringMetrics`' ``cum_i`` and ``cum_u`` of the same samples."""

    def __init__(self) -> None:
        super().__init__((2,))

    def update(self, preds: Tensor, target: Tensor, units: Sequence[str]) -> None:
        """``preds`` and ``target``: B×H×W binary masks (bool or 0/1)."""
        preds, target = preds.bool(), target.bool()
        i = (preds & target).flatten(1).sum(1)
        u = (preds | target).flatten(1).sum(1)
        self.add(units, torch.stack([i, u], 1))
