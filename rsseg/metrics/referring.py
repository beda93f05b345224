"""Referring-segmentation metrics as reported by LAVT and its successors (mIoU, oIoU, Pr@X).

A sample is one (image, expression) pair with a binary predicted mask P and ground truth G:
I = |P ∧ G|, U = |P ∨ G|, IoU = I/U, and IoU = 0 when U = 0 (LAVT ``test.py``; ``empty_iou`` changes it).
mIoU is the mean per-sample IoU, oIoU = ΣI / ΣU (large objects weigh more), and Pr@X the fraction of
samples with IoU ≥ X (not >). States are integer sums, so the result is exact across processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from rsseg.metrics.wfmeasure import fixed_point_mean, fixed_point_sum

__all__ = ["ReferringMetrics"]


class ReferringMetrics(Metric):
    """mIoU, oIoU and ``Pr@<X>`` for X in ``thresholds`` over (image, expression) samples.

    ``update(preds, target)``: ``preds`` B×H×W binary masks (bool or integer 0/1) or B×2×H×W float logits
    (argmax over the two channels, as LAVT); ``target`` B×H×W bool or integer 0/1. Each batch element is
    one sample. ``compute()`` returns ``{"mIoU", "oIoU", "Pr@0.5", …}`` as floats in [0, 1] (NaN before
    any sample; oIoU is NaN while ΣU = 0). IoUs are compared in float64, so I/U = 7/10 counts for Pr@0.7.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), empty_iou: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        thresholds = tuple(float(t) for t in thresholds)
        if not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must lie in [0, 1], got {thresholds}")
        if not 0.0 <= empty_iou <= 1.0:
            raise ValueError(f"empty_iou must lie in [0, 1], got {empty_iou}")
        self.thresholds = thresholds
        self.empty_iou = float(empty_iou)
        self.add_state("iou_sum", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")  # exact fixed point
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("cum_i", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("cum_u", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(len(thresholds), dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def _binary(x: Tensor, name: str) -> Tensor:
        if x.is_floating_point():
            raise ValueError(f"{name} must be a binary mask (bool or integer 0/1), got dtype {x.dtype}")
        if x.dtype != torch.bool:
            if ((x != 0) & (x != 1)).any():
                raise ValueError(f"{name} must contain only 0 and 1, found {x.unique()[:5].tolist()}")
            x = x.bool()
        return x

    def update(self, preds: Tensor, target: Tensor) -> None:
        if target.ndim != 3:
            raise ValueError(f"target must be B×H×W, got shape {tuple(target.shape)}")
        if preds.ndim == 4:
            if preds.shape[1] != 2 or not preds.is_floating_point():
                raise ValueError(f"4-D preds must be float logits B×2×H×W, got {tuple(preds.shape)} {preds.dtype}")
            if torch.isnan(preds).any():
                raise ValueError("preds contain NaN")
            preds = preds.argmax(1).bool()
        elif preds.ndim == 3:
            preds = self._binary(preds, "preds")
        else:
            raise ValueError(f"preds must be B×H×W masks or B×2×H×W logits, got shape {tuple(preds.shape)}")
        if preds.shape != target.shape:
            raise ValueError(f"preds shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}")
        target = self._binary(target, "target")
        i = (preds & target).flatten(1).sum(1)
        u = (preds | target).flatten(1).sum(1)
        iou = i.double() / u.clamp(min=1).double()
        iou = torch.where(u > 0, iou, torch.full_like(iou, self.empty_iou))
        thr = torch.tensor(self.thresholds, dtype=torch.float64, device=iou.device)
        self.iou_sum += fixed_point_sum(iou).to(self.iou_sum.device)
        self.n += i.numel()
        self.cum_i += i.sum().to(self.cum_i.device)
        self.cum_u += u.sum().to(self.cum_u.device)
        self.correct += (iou[:, None] >= thr[None, :]).sum(0).to(self.correct.device)

    def compute(self) -> dict[str, float]:
        n = int(self.n)
        out = {
            "mIoU": fixed_point_mean(self.iou_sum, self.n)[0],
            "oIoU": int(self.cum_i) / int(self.cum_u) if int(self.cum_u) else math.nan,
        }
        for t, c in zip(self.thresholds, self.correct.tolist(), strict=True):
            out[f"Pr@{t:g}"] = c / n if n else math.nan
        return out
