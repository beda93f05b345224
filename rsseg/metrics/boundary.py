"""IDGBR's boundary weighted F-measure, "WF (3px)" (KeyanHu-git/IDGBR ``evaluation/``, reference §3).

Not a per-class WF of the label maps: both the prediction and the ground truth are reduced to a
class-agnostic *boundary band* and WF compares the bands. Per image and label map L (uint8):

1. edge = ‖(Sobel_x L, Sobel_y L)‖ > 0 (3×3 Sobel, OpenCV's default reflect-101 border): pixels on both
   sides of every label change;
2. band = edge dilated by a ``band``×``band`` ones kernel ("3px" is this kernel size, not a distance);
3. pixels whose label is 255 (ignore) are outside the band (IDGBR marks "not band" with 255).

Then for each band value v present in the ground truth (1 = band, 0 = non-band; an image without any
boundary only has v = 0): WF_v = F^w(pred_band == v, gt_band == v) with β = 1. Over the dataset each
value's WF is the mean over the images whose ground truth contains v; the reported score aggregates
the two values that are > 0 by ``min`` (IDGBR's configs) or ``mean``. Note that a prediction with the
right boundaries but wrong classes on both sides scores perfectly here: pair it with mIoU.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from rsseg.metrics.wfmeasure import fixed_point_mean, fixed_point_sum, weighted_fmeasure

__all__ = ["BoundaryWFMeasure", "boundary_band"]


def boundary_band(labels: np.ndarray, band: int = 3) -> np.ndarray:
    """IDGBR's boundary band of an H×W label map (values 0…255; 255 = ignore) as a bool H×W array."""
    lab = np.ascontiguousarray(labels, dtype=np.uint8)
    gx = cv2.Sobel(lab, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(lab, cv2.CV_64F, 0, 1, ksize=3)
    edge = ((gx != 0) | (gy != 0)).view(np.uint8)  # sqrt(gx² + gy²) > 0
    out = cv2.dilate(edge, np.ones((band, band), np.uint8)).view(np.bool_)
    return out & (lab != 255)


class BoundaryWFMeasure(Metric):
    """IDGBR "WF (``band`` px)" of multi-class label maps (definition in the module docstring).

    ``update(preds, target)``: ``preds`` B×H×W integer labels or B×K×H×W float scores (argmax), ``target``
    B×H×W integer labels with 255 = ignore (labels must fit in uint8, as IDGBR's PNGs). ``compute()``
    returns ``{"WF": <aggregate>, "WF_min", "WF_mean", "WF_band", "WF_non_band"}`` (floats in [0, 1]; NaN
    where nothing was counted; ``WF_min``/``WF_mean`` are 0 when both counted scores are 0, since IDGBR only
    aggregates scores > 0). States are per-value sums and image counts, summed across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, band: int = 3, aggregate: Literal["min", "mean"] = "min", **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(band, int) or band < 1:
            raise ValueError(f"band must be a positive int, got {band!r}")
        if aggregate not in ("min", "mean"):
            raise ValueError(f"aggregate must be 'min' or 'mean', got {aggregate!r}")
        self.band = band
        self.aggregate = aggregate
        # index 0: non-band region, index 1: boundary band
        self.add_state("wf_sum", torch.zeros(2, 2, dtype=torch.long), dist_reduce_fx="sum")  # fixed point
        self.add_state("count", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.ndim == 4 and preds.is_floating_point():
            if torch.isnan(preds).any():
                raise ValueError("preds contain NaN")
            preds = preds.argmax(1)
        if preds.ndim != 3 or preds.shape != target.shape:
            raise ValueError(
                f"preds (B×H×W labels or B×K×H×W scores) and target (B×H×W) disagree: "
                f"{tuple(preds.shape)} vs {tuple(target.shape)}"
            )
        for name, x in (("preds", preds), ("target", target)):
            if x.is_floating_point() or x.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}")
        p = preds.detach().cpu().numpy()
        t = target.detach().cpu().numpy()
        for name, x in (("preds", p), ("target", t)):
            if x.size and (x.min() < 0 or x.max() > 255):
                raise ValueError(f"{name} labels must lie in [0, 255] (uint8 label maps)")
        scores = np.zeros((p.shape[0], 2))
        counts = np.zeros(2, dtype=np.int64)
        for i in range(p.shape[0]):
            gt_band = boundary_band(t[i], self.band)
            pred_band = boundary_band(p[i], self.band)
            for v, gt_v, pred_v in ((0, ~gt_band, ~pred_band), (1, gt_band, pred_band)):
                if gt_v.any():  # the values present in the GT: {0}, {1} or both
                    scores[i, v] = weighted_fmeasure(pred_v, gt_v, validate=False)
                    counts[v] += 1
        self.wf_sum += fixed_point_sum(scores).to(self.wf_sum.device)
        self.count += torch.from_numpy(counts).to(self.count.device)

    def compute(self) -> dict[str, float]:
        per_value = fixed_point_mean(self.wf_sum, self.count)  # [non-band, band]
        valid = [s for s in per_value if s > 0]  # IDGBR aggregates the scores > 0 only
        if valid:
            wf_min, wf_mean = min(valid), sum(valid) / len(valid)
        else:
            wf_min = wf_mean = 0.0 if int(self.count.sum()) else math.nan
        return {
            "WF": wf_min if self.aggregate == "min" else wf_mean,
            "WF_min": wf_min,
            "WF_mean": wf_mean,
            "WF_band": per_value[1],
            "WF_non_band": per_value[0],
        }
