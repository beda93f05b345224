"""Datasets and LightningDataModules, one module per dataset, plus shared tiling and preparation."""

from rsseg.data.errors import DataError
from rsseg.data.potsdam import PotsdamDataModule, PotsdamDataset, prepare_potsdam
from rsseg.data.spec import IGNORE_INDEX, DatasetSpec

__all__ = ["IGNORE_INDEX", "DataError", "DatasetSpec", "PotsdamDataModule", "PotsdamDataset", "prepare_potsdam"]
