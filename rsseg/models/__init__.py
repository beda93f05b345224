"""Networks as plain nn.Modules (training logic lives in rsseg.tasks)."""

from rsseg.models.d2ls import D2LS
from rsseg.models.danet import DANet

__all__ = ["D2LS", "DANet"]
