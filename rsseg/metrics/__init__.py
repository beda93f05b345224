"""torchmetrics metrics of the suite: semantic (confusion matrix), weighted F-measure, boundary WF, referring."""

from rsseg.metrics.semantic import SegmentationMetrics

__all__ = ["SegmentationMetrics"]
