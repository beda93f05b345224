"""Synthetic datasets in the official on-disk layouts, for running the pipeline without real data.

``SYNTHESIZERS`` maps a dataset name to a writer ``fn(dst, seed=0, ...) -> list[Path]`` that writes a
small, learnable synthetic copy of that dataset under ``dst`` in its official layout.

Synthetic files carry the real file names, so once mixed into a real download nothing tells them apart.
``write_synthetic`` (what ``rsseg synth`` runs) therefore writes only into a new or empty folder, or
into one it wrote itself and that holds nothing else, and records what it wrote in ``SYNTHETIC_MARKER``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import rsseg
from rsseg.data.core.errors import DataError
from rsseg.data.core.prepare import SYNTHETIC_MARKER, examples, files_on_disk
from rsseg.data.synthetic.chn6cug import write_synthetic_chn6cug
from rsseg.data.synthetic.files import write_text_atomically
from rsseg.data.synthetic.loveda import write_synthetic_loveda
from rsseg.data.synthetic.potsdam import SYNTH_POTSDAM_TILES, write_synthetic_potsdam
from rsseg.data.synthetic.refsegrs import write_synthetic_refsegrs
from rsseg.data.synthetic.rrsisd import write_synthetic_rrsisd
from rsseg.data.synthetic.uavid import write_synthetic_uavid
from rsseg.data.synthetic.vaihingen import SYNTH_VAIHINGEN_AREAS, write_synthetic_vaihingen

SYNTHESIZERS = {
    "chn6cug": write_synthetic_chn6cug,
    "loveda": write_synthetic_loveda,
    "potsdam": write_synthetic_potsdam,
    "refsegrs": write_synthetic_refsegrs,
    "rrsisd": write_synthetic_rrsisd,
    "uavid": write_synthetic_uavid,
    "vaihingen": write_synthetic_vaihingen,
}

GENERATOR = "rsseg synth"


def write_synthetic(dataset: str, dst: str | Path, seed: int = 0, **kwargs: Any) -> list[Path]:
    """Write a synthetic ``dataset`` under ``dst`` (``SYNTHESIZERS[dataset](dst, seed, **kwargs)``) safely.

    ``dst`` must be new, empty, or a folder this function wrote that holds only the files its marker
    lists; anything else is a DataError and nothing is written (a synthetic tile must never replace or
    join a real one). A folder of its own is emptied of its listed files first, so files of an earlier
    synthesis with other parameters do not linger. Returns the synthesiser's list of written files.
    """
    if dataset not in SYNTHESIZERS:
        raise DataError(f"unknown dataset {dataset!r} for synthetic data (known: {', '.join(sorted(SYNTHESIZERS))})")
    dst = Path(dst)
    _remove_own_files(dst, _own_files(dst))
    written = SYNTHESIZERS[dataset](dst, seed=seed, **kwargs)
    marker = {
        "generator": GENERATOR,
        "dataset": dataset,
        "seed": seed,
        "parameters": kwargs,
        "rsseg_version": rsseg.__version__,
        "files": files_on_disk(dst),
    }
    write_text_atomically(dst / SYNTHETIC_MARKER, json.dumps(marker, indent=1, default=str))
    return written


def _own_files(dst: Path) -> list[str]:
    """The files of an earlier ``write_synthetic`` in ``dst`` (none for a new or empty folder).

    DataError for a folder holding files without a marker (a real download, an interrupted synthesis)
    or files its marker does not list: writing there could overwrite or mix with data that is not ours.
    """
    if not os.path.lexists(dst):
        return []
    if not dst.is_dir():
        raise DataError(f"{dst}: exists and is not a folder; choose a new or empty folder for synthetic data")
    present = files_on_disk(dst)
    if not present:
        return []
    refuse = (
        "refusing to write synthetic files there, which could overwrite real ones or mix with them: "
        "choose a new or empty folder"
    )
    try:
        marker = json.loads((dst / SYNTHETIC_MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    ours = isinstance(marker, dict) and marker.get("generator") == GENERATOR and isinstance(marker.get("files"), list)
    if not ours:
        raise DataError(
            f"{dst}: not empty and was not written by rsseg synth (no readable {SYNTHETIC_MARKER}; it holds "
            f"{examples(present)}); {refuse}"
        )
    listed = {str(path) for path in marker["files"]}
    unlisted = [path for path in present if path != SYNTHETIC_MARKER and path not in listed]
    if unlisted:
        raise DataError(f"{dst}: holds files rsseg synth did not write ({examples(unlisted)}); {refuse}")
    return sorted(listed)


def _remove_own_files(dst: Path, files: list[str]) -> None:
    """Delete an earlier synthesis (its listed files, its marker, the folders they leave empty)."""
    for path in files:
        (dst / path).unlink(missing_ok=True)
    (dst / SYNTHETIC_MARKER).unlink(missing_ok=True)
    for folder in sorted({(dst / path).parent for path in files}, key=lambda f: len(f.parts), reverse=True):
        while folder != dst and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


__all__ = [
    "SYNTHESIZERS",
    "SYNTHETIC_MARKER",
    "SYNTH_POTSDAM_TILES",
    "SYNTH_VAIHINGEN_AREAS",
    "write_synthetic_chn6cug",
    "write_synthetic_loveda",
    "write_synthetic_potsdam",
    "write_synthetic_refsegrs",
    "write_synthetic_rrsisd",
    "write_synthetic_uavid",
    "write_synthetic",
    "write_synthetic_vaihingen",
]
