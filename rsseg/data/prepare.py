"""Idempotent, atomic preparation of a dataset into patches plus a ``manifest.json``.

Preparation is a cache of the raw download: it is built once into a temporary sibling folder and
renamed into place only when complete, so an interrupted run never leaves a half-written ``dst``. The
manifest records the parameters and a fingerprint (relative path, size, mtime) of every source file;
re-running with the same ones does nothing, with other parameters it refuses unless ``force``.
Dataset modules supply the source list and a ``build`` function; everything else lives here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import rsseg
from rsseg.data.errors import DataError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1  # bump when the prepared layout changes; older roots then need --force
PARTIAL_MARKER = ".partial-"


@dataclass(frozen=True)
class SplitProtocol:
    """Which tiles form each split, and which tiles are deliberately left out (with the reason)."""

    name: str
    splits: Mapping[str, tuple[str, ...]]
    excluded: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def split_of(self, tile: str) -> str | None:
        return next((split for split, tiles in self.splits.items() if tile in tiles), None)


def map_jobs(
    work: Callable[[Any], dict[str, Any]],
    jobs: Sequence[Any],
    *,
    workers: int = 1,
    progress: bool = True,
    description: str = "tiles",
    label: Callable[[Any], str] = str,
    on_result: Callable[[dict[str, Any]], Any] = lambda result: None,
) -> list[dict[str, Any]]:
    """``work(job)`` for every job, serially or in ``workers`` processes, with a progress bar.

    Results come back in job order, so manifests are deterministic; ``on_result`` sees each one as it
    arrives (to warn, or to stop early by raising). ``work`` must be picklable when ``workers`` > 1.
    """
    bar = tqdm(total=len(jobs), desc=description, unit=description.split()[-1].rstrip("s"), disable=not progress)
    results: list[dict[str, Any]] = []
    try:
        if workers <= 1:
            for job in jobs:
                bar.set_postfix_str(label(job))
                results.append(work(job))
                on_result(results[-1])
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(work, job) for job in jobs]
                try:
                    for future in futures:
                        results.append(future.result())
                        on_result(results[-1])
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
    return results


def file_fingerprint(path: Path, root: Path) -> dict[str, Any]:
    """Cheap identity of a source file: hashing 38 × 100 MB tiles on every run would cost minutes."""
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def count_pixels(mask: np.ndarray, num_classes: int) -> list[int]:
    """Pixels per class index 0..num_classes-1 (everything else is ignore)."""
    return np.bincount(mask.ravel(), minlength=256)[:num_classes].tolist()


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared root, or None when there is none."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the manifest ({error}); re-run prepare with --force") from error


def prepare_once(
    dst: str | Path,
    *,
    dataset: str,
    parameters: dict[str, Any],
    sources: list[dict[str, Any]],
    build: Callable[[Path], dict[str, Any]],
    force: bool = False,
) -> dict[str, Any]:
    """Build ``dst`` with ``build(tmp_dir)`` unless an identical preparation is already there.

    ``build`` writes the files into the folder it is given and returns the dataset-specific manifest
    entries. Returns the manifest, plus ``already_prepared`` (True when nothing was done), which is not
    stored in the file.
    """
    dst = Path(dst)
    _warn_about_leftovers(dst)
    if not force and _is_up_to_date(dst, dataset, parameters, sources):
        manifest = read_manifest(dst)
        logger.info("already prepared: %s (same parameters and source files); nothing to do", dst)
        return {**manifest, "already_prepared": True}
    if dst.exists() and read_manifest(dst) is None and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(
            f"{dst}: exists and is not a prepared dataset (no {MANIFEST_NAME}); refusing to "
            "overwrite it: choose another --dst or remove it yourself"
        )

    tmp = dst.with_name(f"{dst.name}{PARTIAL_MARKER}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        content = build(tmp)
        manifest = {
            "format": MANIFEST_FORMAT,
            "dataset": dataset,
            "rsseg_version": rsseg.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": parameters,
            **{key: value for key, value in content.items() if key != "patches"},
            "sources": sources,
            "patches": content.get("patches", {}),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        _move_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("prepared %s into %s", dataset, dst)
    return {**manifest, "already_prepared": False}


def _is_up_to_date(
    dst: Path, dataset: str, parameters: dict[str, Any], sources: list[dict[str, Any]]
) -> bool:
    """True when ``dst`` holds this exact preparation; DataError when it holds a different one."""
    existing = read_manifest(dst)
    if existing is None:
        return False
    found = {
        "format": existing.get("format"),
        "dataset": existing.get("dataset"),
        **existing.get("parameters", {}),
    }
    wanted = {"format": MANIFEST_FORMAT, "dataset": dataset, **parameters}
    differences = [
        f"{key}: {found.get(key)!r} there, {wanted.get(key)!r} requested"
        for key in sorted(set(found) | set(wanted))
        if found.get(key) != wanted.get(key)
    ]
    if differences:
        raise DataError(
            f"{dst}: already prepared with different parameters ({'; '.join(differences)}); "
            "pass --force to rebuild it, or choose another --dst"
        )
    if existing.get("sources") != sources:
        logger.warning("%s: the source files changed since it was prepared; rebuilding", dst)
        return False
    return True


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Swap the finished folder in; an old ``dst`` is moved aside first and deleted only afterwards."""
    if not dst.exists():
        os.replace(tmp, dst)
        return
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _warn_about_leftovers(dst: Path) -> None:
    """Runs killed hard (SIGKILL, power loss) cannot clean up; point at what they left behind."""
    if not dst.parent.is_dir():
        return
    mine = f"{dst.name}{PARTIAL_MARKER}{os.getpid()}"
    for leftover in sorted(dst.parent.glob(f"{dst.name}{PARTIAL_MARKER}*")):
        if leftover.name != mine:
            logger.warning("%s: left over from an interrupted preparation; remove it to free space", leftover)
