"""LightningModules: training and evaluation logic for each method."""

from rsseg.tasks.segmentation import SegmentationTask, SMPSegmentationTask

__all__ = ["SegmentationTask", "SMPSegmentationTask"]
