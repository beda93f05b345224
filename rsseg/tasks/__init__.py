"""LightningModules: training and evaluation logic for each method."""

from rsseg.tasks.d2ls import D2LSTask
from rsseg.tasks.danet import DANetTask, ReferringLoss
from rsseg.tasks.idgbr import IDGBRTask, LabelEmbeddingTask, LatentAutoencoderTask
from rsseg.tasks.sdci import SDCITask
from rsseg.tasks.segmentation import SegmentationTask, SMPSegmentationTask

__all__ = [
    "D2LSTask", "DANetTask", "IDGBRTask", "LabelEmbeddingTask", "LatentAutoencoderTask", "ReferringLoss",
    "SDCITask", "SegmentationTask", "SMPSegmentationTask",
]
