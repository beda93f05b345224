"""Dataset name → datamodule, preparation and synthesis, for the CLI and the bench runner."""

from __future__ import annotations

from rsseg.data.potsdam import PotsdamDataModule, prepare_potsdam
from rsseg.data.synthetic import SYNTHESIZERS

DATAMODULES = {"potsdam": PotsdamDataModule}
PREPARERS = {"potsdam": prepare_potsdam}

__all__ = ["DATAMODULES", "PREPARERS", "SYNTHESIZERS"]
