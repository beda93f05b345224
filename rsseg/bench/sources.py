"""Where the bench's data comes from: the user's root, ``data/<dataset>``, or a synthetic twin."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rsseg.bench.plan import PlanError
from rsseg.data.core.errors import DataError
from rsseg.data.core.prepare import is_synthetic_root
from rsseg.data.registry import PREPARERS, SYNTHESIZERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    prepared: Path
    raw: Path | None
    synthetic: bool


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _synthesize(dataset: str, dst: Path) -> None:
    """Write the synthetic twin once; a partial earlier attempt is discarded, never reused."""
    if dst.is_dir():
        return
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("writing synthetic %s data to %s", dataset, dst)
    SYNTHESIZERS[dataset](partial)
    partial.rename(dst)


def resolve_prepared_root(dataset: str, data_root: str | None, cache: Path, prepare: dict) -> DataSource:
    """A root the datamodule reads, preparing raw data (idempotently) into ``cache`` if needed.

    Order: ``data_root`` argument, ``$DATA_ROOT``, ``data/<dataset>`` if it has files, else synthetic.
    Datasets without a preparer (RefSegRS, LoveDA, CHN6-CUG) are read as released: the root is used as is.
    A named root that does not exist is a ``DataError`` (the CLI prints it without a traceback).
    """
    if prepare and dataset not in PREPARERS:
        raise PlanError(f"{dataset} is read as released and has no preparation; drop `prepare` {prepare} "
                         "from its bench plan")
    root = data_root or os.environ.get("DATA_ROOT") or None
    given_by = "--data-root" if data_root else "$DATA_ROOT"
    synthetic = False
    if root is None and _has_files(Path("data") / dataset):
        root = Path("data") / dataset
    if root is None:
        synthetic = True
        root = cache / "synthetic" / dataset
        _synthesize(dataset, root)
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root {root} (from {given_by}) does not exist: give the folder of the {dataset} "
                        "release or of a prepared root, or neither --data-root nor $DATA_ROOT for synthetic data")
    synthetic = synthetic or is_synthetic_root(root)  # a twin written by `rsseg synth` and given as the root
    if dataset not in PREPARERS or (root / "manifest.json").is_file():
        return DataSource(prepared=root, raw=None, synthetic=synthetic)
    tag = "synthetic" if synthetic else root.resolve().name
    params = "-".join(f"{k}{v}" for k, v in sorted(prepare.items()))
    prepared = cache / "prepared" / dataset / (f"{tag}-{params}" if params else tag)
    PREPARERS[dataset](root, prepared, **prepare)
    return DataSource(prepared=prepared, raw=root, synthetic=synthetic)
