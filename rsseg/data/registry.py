"""Dataset name → datamodule, preparation and synthesis, for the CLI and the bench runner."""

from __future__ import annotations

from rsseg.data.datasets.chn6cug import CHN6CUGDataModule
from rsseg.data.datasets.loveda import LoveDADataModule
from rsseg.data.datasets.potsdam import PotsdamDataModule, prepare_potsdam
from rsseg.data.datasets.refsegrs import RefSegRSDataModule
from rsseg.data.datasets.rrsisd import RRSISDDataModule
from rsseg.data.datasets.uavid.datamodule import UAVidDataModule
from rsseg.data.datasets.uavid.prepare import prepare_uavid
from rsseg.data.datasets.vaihingen import VaihingenDataModule, prepare_vaihingen
from rsseg.data.synthetic import SYNTHESIZERS

DATAMODULES = {
    "chn6cug": CHN6CUGDataModule,
    "loveda": LoveDADataModule,
    "potsdam": PotsdamDataModule,
    "refsegrs": RefSegRSDataModule,
    "rrsisd": RRSISDDataModule,
    "uavid": UAVidDataModule,
    "vaihingen": VaihingenDataModule,
}
# Datasets whose raw release is cut into patches first (the others are read as released).
PREPARERS = {"potsdam": prepare_potsdam, "uavid": prepare_uavid, "vaihingen": prepare_vaihingen}

__all__ = ["DATAMODULES", "PREPARERS", "SYNTHESIZERS"]
