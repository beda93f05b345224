"""Dataset name → datamodule, preparation and synthesis, for the CLI and the bench runner."""

from __future__ import annotations

from rsseg.data.chn6cug import CHN6CUGDataModule
from rsseg.data.loveda import LoveDADataModule
from rsseg.data.potsdam import PotsdamDataModule, prepare_potsdam
from rsseg.data.refsegrs import RefSegRSDataModule
from rsseg.data.synthetic import SYNTHESIZERS
from rsseg.data.uavid import UAVidDataModule, prepare_uavid
from rsseg.data.vaihingen import VaihingenDataModule, prepare_vaihingen

DATAMODULES = {
    "chn6cug": CHN6CUGDataModule,
    "loveda": LoveDADataModule,
    "potsdam": PotsdamDataModule,
    "refsegrs": RefSegRSDataModule,
    "uavid": UAVidDataModule,
    "vaihingen": VaihingenDataModule,
}
# Datasets whose raw release is cut into patches first (the others are read as released).
PREPARERS = {"potsdam": prepare_potsdam, "uavid": prepare_uavid, "vaihingen": prepare_vaihingen}

__all__ = ["DATAMODULES", "PREPARERS", "SYNTHESIZERS"]
