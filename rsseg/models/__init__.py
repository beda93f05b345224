"""Networks as plain nn.Modules (training logic lives in rsseg.tasks)."""

from rsseg.models.baselines import SMPNet
from rsseg.models.d2ls import D2LS
from rsseg.models.danet import DANet
from rsseg.models.idgbr import IDGBR

__all__ = ["D2LS", "DANet", "IDGBR", "SMPNet"]
