"""torchmetrics metrics of the suite.

* :class:`SegmentationMetrics` — OA, Kappa, mIoU, mF1 and per-class scores from one confusion matrix
  (optionally per-class weighted F-measure);
* :class:`WeightedFMeasure` — Margolin et al.'s F^w_β of binary or soft maps, exact to pysodmetrics;
* :class:`BoundaryWFMeasure` — IDGBR's boundary-band "WF (3px)";
* :class:`ReferringMetrics` — LAVT's mIoU, oIoU and Pr@X for referring segmentation.
"""

from rsseg.metrics.bootstrap import (
    Interval,
    PairedComparison,
    paired_bootstrap,
    paired_referring_bootstrap,
    rank_stability,
    ratio_bootstrap,
    referring_bootstrap,
    resample_counts,
    semantic_bootstrap,
)
from rsseg.metrics.boundary import BoundaryWFMeasure
from rsseg.metrics.referring import ReferringMetrics
from rsseg.metrics.semantic import SegmentationMetrics
from rsseg.metrics.units import PerUnitConfusion, PerUnitIoU, unit_names
from rsseg.metrics.wfmeasure import WeightedFMeasure

__all__ = ["BoundaryWFMeasure", "ReferringMetrics", "SegmentationMetrics", "WeightedFMeasure"]
__all__ += ["PerUnitConfusion", "PerUnitIoU", "unit_names"]
__all__ += ["Interval", "PairedComparison", "paired_bootstrap", "paired_referring_bootstrap", "rank_stability",
            "ratio_bootstrap", "referring_bootstrap", "resample_counts", "semantic_bootstrap"]
