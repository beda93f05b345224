"""Datasets and LightningDataModules, one module per dataset, plus shared tiling and preparation."""

from rsseg.data.chn6cug import CHN6CUGDataModule, CHN6CUGDataset
from rsseg.data.coarse import CoarseMapDataModule, CoarseMapWriter
from rsseg.data.errors import DataError, DataWarning
from rsseg.data.loveda import LoveDADataModule, LoveDADataset
from rsseg.data.potsdam import PotsdamDataModule, PotsdamDataset, prepare_potsdam
from rsseg.data.random_labels import RandomLabelMapDataModule
from rsseg.data.refsegrs import RefSegRSDataModule, RefSegRSDataset
from rsseg.data.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.uavid import UAVidDataModule, UAVidDataset, prepare_uavid
from rsseg.data.vaihingen import VaihingenDataModule, VaihingenDataset, prepare_vaihingen

__all__ = [
    "CHN6CUGDataModule",
    "CHN6CUGDataset",
    "CoarseMapDataModule",
    "CoarseMapWriter",
    "IGNORE_INDEX",
    "DataError",
    "DataWarning",
    "DatasetSpec",
    "LoveDADataModule",
    "LoveDADataset",
    "PotsdamDataModule",
    "PotsdamDataset",
    "RandomLabelMapDataModule",
    "RefSegRSDataModule",
    "RefSegRSDataset",
    "UAVidDataModule",
    "UAVidDataset",
    "VaihingenDataModule",
    "VaihingenDataset",
    "prepare_potsdam",
    "prepare_uavid",
    "prepare_vaihingen",
]
