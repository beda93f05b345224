"""Networks as plain nn.Modules (training logic lives in rsseg.tasks).

``SDCI`` is imported on first use (``from rsseg.models import SDCI`` or ``rsseg.models.SDCI``), so that
importing the other networks does not load the open-vocabulary stack (or break while it is being edited).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rsseg.models.baselines import SMPNet
from rsseg.models.d2ls import D2LS
from rsseg.models.danet import DANet
from rsseg.models.idgbr import IDGBR

if TYPE_CHECKING:
    from rsseg.models.sdci.model import SDCI

_LAZY = {"SDCI": "rsseg.models.sdci.model"}

__all__ = ["D2LS", "DANet", "IDGBR", "SDCI", "SMPNet"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
