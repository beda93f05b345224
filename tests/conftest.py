"""Shared fixtures: a tiny synthetic Potsdam, raw (official layout) and prepared."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

# Small tiles of the UNetFormer protocol's splits (train, val 2_10, test) plus the excluded 7_10.
TINY_TILES = {"2_11": (300, 257), "3_10": (257, 300), "2_10": (200, 230), "2_13": (230, 211), "7_10": (130, 140)}


@pytest.fixture(scope="session")
def tiny_potsdam_raw(tmp_path_factory):
    from rsseg.data.synthetic import write_synthetic_potsdam

    root = tmp_path_factory.mktemp("potsdam_raw")
    write_synthetic_potsdam(root, seed=0, tiles=TINY_TILES)
    return root


@pytest.fixture(scope="session")
def tiny_potsdam(tiny_potsdam_raw, tmp_path_factory):
    """A prepared root with 128² patches."""
    from rsseg.data.datasets.potsdam import prepare_potsdam

    root = tmp_path_factory.mktemp("potsdam_prepared") / "root"
    prepare_potsdam(tiny_potsdam_raw, root, patch_size=128, progress=False)
    return root
