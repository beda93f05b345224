"""Inference on one's own imagery (``rsseg infer``) and prediction files (``rsseg predict``): docs/inference.md."""

from rsseg.infer.writer import PredictionWriter

__all__ = ["PredictionWriter"]
