"""Datasets and LightningDataModules, and the short names configs use (``rsseg.data.PotsdamDataModule``).

Layout:

* ``core/``: what every dataset shares: errors, the dataset spec, raster I/O, colour palettes, tiling,
  source walking, protocol lookup, the preparation machinery, sample transforms, the loader base
  (``core.datamodule.BaseDataModule``) and prepared roots (``core.prepared.PreparedRootDataModule``).
* ``datasets/``: one module (or package) per dataset. Potsdam, Vaihingen (sharing ``datasets/isprs/``)
  and UAVid are prepared into patches first; LoveDA, RefSegRS, RRSIS-D and
  CHN6-CUG are read as released (the referring ones share ``datasets/referring.py``).
* ``submissions/``: the LoveDA and UAVid test-server writers (prediction callbacks).
* ``refinement/``: IDGBR's coarse label maps (writer and datamodule) and random label maps.
* ``synthetic/``: synthetic copies of each dataset in its official layout.
* ``registry``: dataset name → datamodule, preparation and synthesis, for the CLI and the bench.
"""

from rsseg.data.core.datamodule import BaseDataModule
from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.prepared import PreparedRootDataModule
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.datasets.chn6cug import CHN6CUGDataModule, CHN6CUGDataset
from rsseg.data.datasets.loveda import LoveDADataModule, LoveDADataset
from rsseg.data.datasets.potsdam import PotsdamDataModule, PotsdamDataset, prepare_potsdam
from rsseg.data.datasets.refsegrs import RefSegRSDataModule, RefSegRSDataset
from rsseg.data.datasets.rrsisd import RRSISDDataModule, RRSISDDataset
from rsseg.data.datasets.uavid.datamodule import UAVidDataModule, UAVidDataset
from rsseg.data.datasets.uavid.prepare import prepare_uavid
from rsseg.data.datasets.vaihingen import VaihingenDataModule, VaihingenDataset, prepare_vaihingen
from rsseg.data.refinement.coarse import CoarseMapDataModule, CoarseMapWriter
from rsseg.data.refinement.random_labels import RandomLabelMapDataModule
from rsseg.data.submissions.loveda import LoveDASubmissionWriter
from rsseg.data.submissions.uavid import UAVidSubmissionWriter

__all__ = [
    "CHN6CUGDataModule",
    "CHN6CUGDataset",
    "BaseDataModule",
    "CoarseMapDataModule",
    "CoarseMapWriter",
    "IGNORE_INDEX",
    "DataError",
    "DataWarning",
    "DatasetSpec",
    "LoveDADataModule",
    "LoveDADataset",
    "LoveDASubmissionWriter",
    "PotsdamDataModule",
    "PotsdamDataset",
    "PreparedRootDataModule",
    "RandomLabelMapDataModule",
    "RefSegRSDataModule",
    "RefSegRSDataset",
    "RRSISDDataModule",
    "RRSISDDataset",
    "UAVidDataModule",
    "UAVidDataset",
    "UAVidSubmissionWriter",
    "VaihingenDataModule",
    "VaihingenDataset",
    "prepare_potsdam",
    "prepare_uavid",
    "prepare_vaihingen",
]
