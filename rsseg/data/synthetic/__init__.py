"""Synthetic datasets in the official on-disk layouts, for running the pipeline without real data.

``SYNTHESIZERS`` maps a dataset name to a writer ``fn(dst, seed=0, ...) -> list[Path]`` that writes a
small, learnable synthetic copy of that dataset under ``dst`` in its official layout.
"""

from __future__ import annotations

from rsseg.data.synthetic.chn6cug import write_synthetic_chn6cug
from rsseg.data.synthetic.loveda import write_synthetic_loveda
from rsseg.data.synthetic.potsdam import SYNTH_POTSDAM_TILES, write_synthetic_potsdam
from rsseg.data.synthetic.refsegrs import write_synthetic_refsegrs
from rsseg.data.synthetic.uavid import write_synthetic_uavid
from rsseg.data.synthetic.vaihingen import SYNTH_VAIHINGEN_AREAS, write_synthetic_vaihingen

SYNTHESIZERS = {
    "chn6cug": write_synthetic_chn6cug,
    "loveda": write_synthetic_loveda,
    "potsdam": write_synthetic_potsdam,
    "refsegrs": write_synthetic_refsegrs,
    "uavid": write_synthetic_uavid,
    "vaihingen": write_synthetic_vaihingen,
}

__all__ = [
    "SYNTHESIZERS",
    "SYNTH_POTSDAM_TILES",
    "SYNTH_VAIHINGEN_AREAS",
    "write_synthetic_chn6cug",
    "write_synthetic_loveda",
    "write_synthetic_potsdam",
    "write_synthetic_refsegrs",
    "write_synthetic_uavid",
    "write_synthetic_vaihingen",
]
