"""rsseg: a benchmark suite for remote-sensing image segmentation on PyTorch Lightning."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI at import time

__version__ = "0.1.0"
