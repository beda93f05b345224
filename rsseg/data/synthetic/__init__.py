"""Synthetic datasets in the official on-disk layouts, for running the pipeline without real data.

``SYNTHESIZERS`` maps a dataset name to a writer ``fn(dst, seed=0, tiles=None) -> list[Path]`` that
writes a small, learnable synthetic copy of that dataset under ``dst`` in its official layout.
"""

from __future__ import annotations

from rsseg.data.synthetic.potsdam import SYNTH_POTSDAM_TILES, write_synthetic_potsdam

SYNTHESIZERS = {
    "potsdam": write_synthetic_potsdam,
}

__all__ = ["SYNTHESIZERS", "SYNTH_POTSDAM_TILES", "write_synthetic_potsdam"]
