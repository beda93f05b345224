"""The layout of ``rsseg.data``: public names, the datamodule bases, the class paths configs use."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

import rsseg.data
from rsseg.data import (
    BaseDataModule,
    CHN6CUGDataModule,
    LoveDADataModule,
    PotsdamDataModule,
    PreparedRootDataModule,
    RefSegRSDataModule,
    UAVidDataModule,
    VaihingenDataModule,
)
from rsseg.data.registry import DATAMODULES, PREPARERS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def class_paths(node: object) -> list[str]:
    """Every ``class_path`` value in a parsed YAML document, at any depth."""
    if isinstance(node, dict):
        own = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return own + [path for value in node.values() for path in class_paths(value)]
    if isinstance(node, list):
        return [path for item in node for path in class_paths(item)]
    return []


def resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_public_name_resolves():
    assert len(set(rsseg.data.__all__)) == len(rsseg.data.__all__)
    for name in rsseg.data.__all__:
        assert getattr(rsseg.data, name) is not None, name
    # the short paths the README and the configs' comments name
    for name in ("CoarseMapWriter", "LoveDASubmissionWriter", "UAVidSubmissionWriter", "DataError"):
        assert name in rsseg.data.__all__


@pytest.mark.parametrize("datamodule", [LoveDADataModule, RefSegRSDataModule, CHN6CUGDataModule])
def test_read_as_released_datamodules_use_only_the_loader_base(datamodule):
    assert issubclass(datamodule, BaseDataModule)
    assert not issubclass(datamodule, PreparedRootDataModule)


@pytest.mark.parametrize("datamodule", [PotsdamDataModule, VaihingenDataModule, UAVidDataModule])
def test_prepared_datamodules_read_a_prepared_root(datamodule):
    assert issubclass(datamodule, PreparedRootDataModule)


def test_the_registry_prepares_exactly_the_prepared_root_datasets():
    prepared = {name for name, cls in DATAMODULES.items() if issubclass(cls, PreparedRootDataModule)}
    assert prepared == set(PREPARERS)
    assert all(issubclass(cls, BaseDataModule) for cls in DATAMODULES.values())


def test_config_class_paths_resolve():
    paths = {
        (config.relative_to(EXPERIMENTS).as_posix(), path)
        for config in sorted(EXPERIMENTS.rglob("*.yaml"))
        for path in class_paths(yaml.safe_load(config.read_text()))
        if path.startswith("rsseg.data.")
    }
    assert len({path for _, path in paths}) >= 8  # every dataset, the coarse and random label maps
    for config, path in sorted(paths):
        assert isinstance(resolve(path), type), f"{config}: {path}"
