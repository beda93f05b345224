"""Optional dependencies: the method-specific stacks are pip extras, imported only when a method is built.

``pip install rsseg`` gives the baselines, the metrics and the data pipelines; DANet/LAVT, IDGBR, SDCI, W&B
logging and GeoTIFF I/O each need an extra (``pyproject.toml``). Every import of an optional package goes
through :func:`require` (tests/test_extras.py enforces it), so importing rsseg never needs one, and building
a method without its extra fails at once with the one line that fixes it instead of a traceback deep inside
a training step.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Import name → distribution name, where they differ (the name pip needs).
DISTRIBUTIONS = {"open_clip": "open-clip-torch", "skimage": "scikit-image"}


class MissingExtraError(ImportError):
    """An optional package is missing; the message names the extra that installs it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported (e.g. ``"transformers"``, ``"skimage.segmentation"``), or :class:`MissingExtraError`
    "<what> needs <package>: pip install 'rsseg[<extra>]'" when it (or one of its own dependencies) is missing.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        package = DISTRIBUTIONS.get(top, top)
        missing = getattr(error, "name", None)
        # Installed but broken (one of its own dependencies is missing): say which, the extra reinstalls it.
        broken = f" (it failed to import: {error})" if missing and missing.partition(".")[0] != top else ""
        message = f"{what} needs {package}{broken}: pip install 'rsseg[{extra}]'"
        raise MissingExtraError(" ".join(message.split()), name=top) from error
