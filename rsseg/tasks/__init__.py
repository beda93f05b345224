"""LightningModules: training and evaluation logic for each method."""

from rsseg.tasks.d2ls import D2LSTask
from rsseg.tasks.segmentation import SegmentationTask, SMPSegmentationTask

__all__ = ["D2LSTask", "SegmentationTask", "SMPSegmentationTask"]
