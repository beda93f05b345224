"""Idempotent, atomic preparation of a dataset into patches plus a ``manifest.json``.

Preparation is a cache of the raw download: it is built once into a temporary sibling folder and
renamed into place only when complete, so an interrupted run never leaves a half-written ``dst``. The
manifest records the parameters, a fingerprint (relative path, size, mtime) of every source file and
the size of every file written; re-running with the same ones does nothing (unless a written file went
missing or changed size: then it rebuilds), with other parameters it refuses unless ``force``.

Only a folder whose manifest this code wrote, holding nothing but the files that manifest lists, is
ever replaced; ``force`` never deletes anything else (a results folder with a ``manifest.json`` of its
own, checkpoints put into a prepared root). Dataset modules supply the source list and a ``build``
function; everything else lives here.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import rsseg
from rsseg.data.core.errors import DataError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1  # bump when the prepared layout changes; older roots are then refused, not replaced
#                      (their file lists cannot be checked): users remove them by hand
PARTIAL_MARKER = ".partial-"
SYNTHETIC_MARKER = "rsseg-synthetic.json"  # what ``rsseg synth`` leaves in the folders it writes
GENERATOR = "rsseg"  # the manifest's mark: only folders holding it (and only its files) are ever replaced
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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
    Worker processes die with this one, even when it is killed with SIGKILL (see ``die_with_parent``).
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
            context = multiprocessing.get_context()
            # forkserver workers are children of the fork server (which exits with us), not of us
            parent = os.getpid() if context.get_start_method() in ("fork", "spawn") else None
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(parent,)
            ) as pool:
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


def die_with_parent(parent: int | None = None) -> None:
    """Worker initializer: exit when the parent process dies, however it dies.

    A SIGKILLed ``rsseg prepare`` cannot shut its pool down, and its workers (≈550 MB each) would wait
    forever for jobs. On Linux the kernel kills them (``PR_SET_PDEATHSIG``; it follows the thread that
    started the pool, which waits in ``map_jobs`` while the pool lives); the parent may have died
    before that was armed, hence the check against ``parent`` (the pid it must have; None: the current
    one). A daemon thread polling the parent pid covers other systems and anything the signal misses.
    """
    parent = parent or os.getppid()
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="rsseg-parent-watch", daemon=True).start()


def _set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_orphaned(parent: int, interval: float = 1.0) -> None:
    """Poll the parent pid; when it changed the parent is gone (we were re-parented), so exit at once."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


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
        raise DataError(
            f"{path}: cannot read the manifest ({error}); without it rsseg cannot tell its files from "
            f"others: if {Path(root)} is a prepared root, remove it yourself and run `rsseg prepare` again"
        ) from error


def is_synthetic_root(root: str | Path) -> bool:
    """Whether ``root`` holds rsseg's synthetic data: written by ``rsseg synth`` (its marker file), or prepared
    from such a folder (the manifest says so). Nothing synthetic may be compared with a paper's numbers."""
    root = Path(root)
    if (root / SYNTHETIC_MARKER).is_file():
        return True
    try:
        manifest = read_manifest(root)
    except DataError:
        return False
    return bool(manifest and manifest.get("synthetic_source"))


def prepare_once(
    dst: str | Path,
    *,
    dataset: str,
    parameters: dict[str, Any],
    sources: list[dict[str, Any]],
    build: Callable[[Path], dict[str, Any]],
    force: bool = False,
    expected_bytes: int | None = None,
    synthetic_source: bool = False,
) -> dict[str, Any]:
    """Build ``dst`` with ``build(tmp_dir)`` unless an identical preparation is already there.

    ``build`` writes the files into the folder it is given and returns the dataset-specific manifest
    entries. Returns the manifest, plus ``already_prepared`` (True when nothing was done), which is not
    stored in the file. An existing ``dst`` is replaced only when it is a prepared root this code wrote
    and holds nothing but the files its manifest lists: ``force`` never deletes anything else.
    ``expected_bytes`` (an estimate of the prepared size) is checked against the free space first.
    ``synthetic_source`` (the source is ``rsseg synth``'s) is recorded in the manifest (``is_synthetic_root``).
    """
    dst = absolute_destination(dst)
    _warn_about_leftovers(dst)
    existing = _existing_preparation(dst)
    if existing is not None:
        if not force and _is_up_to_date(dst, existing, dataset, parameters, sources):
            logger.info("already prepared: %s (same parameters and source files); nothing to do", dst)
            return {**existing, "already_prepared": True}
        _require_only_listed_files(dst, existing)
    _check_free_space(dst, expected_bytes)
    manifest = _build_into_place(dst, dataset, parameters, sources, build, synthetic_source)
    logger.info("prepared %s into %s", dataset, dst)
    return {**manifest, "already_prepared": False}


def absolute_destination(dst: str | Path) -> Path:
    """``dst`` as an absolute, normalised path, so that ``.`` or ``..`` have a name to build beside.

    Symlinks in the parents are kept (messages show the path the user knows); a ``dst`` that is itself
    a symlink is followed, so the link keeps pointing at the data and the temporary folder is built on
    the disk the data lives on.
    """
    path = Path(os.path.abspath(dst))
    if path.is_symlink():
        path = path.resolve()
    if not path.name:
        raise DataError(f"{path}: cannot prepare a dataset into the file-system root; choose a folder below it")
    return path


# --------------------------------------------------------------------------------------------------
# What is at the destination


def _existing_preparation(dst: Path) -> dict[str, Any] | None:
    """The manifest of the rsseg preparation at ``dst``; None when there is nothing to lose there.

    Anything else that holds files (no manifest, an unreadable one, one rsseg did not write) is a
    DataError that does not suggest ``--force``: no flag makes deleting someone else's files right.
    """
    if not os.path.lexists(dst):
        return None
    if not dst.is_dir():
        raise DataError(f"{dst}: exists and is not a folder; choose another --dst")
    if not any(dst.iterdir()):
        return None
    refuse = "refusing to overwrite it: choose another --dst or remove it yourself"
    path = dst / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{dst}: exists and is not a prepared dataset (no {MANIFEST_NAME}); {refuse}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(
            f"{dst}: not a prepared rsseg root, or a damaged one ({path} is unreadable: {error}); {refuse}"
        ) from error
    if not _written_by_rsseg(manifest):
        raise DataError(f"{dst}: not a prepared rsseg root (its {MANIFEST_NAME} was not written by rsseg); {refuse}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise DataError(
            f"{dst}: prepared by another rsseg version (manifest format {manifest['format']!r}, this one writes "
            f"{MANIFEST_FORMAT}), whose files this version cannot check; {refuse}"
        )
    return manifest


def _written_by_rsseg(manifest: Any) -> bool:
    """True for a manifest ``prepare_once`` wrote: now marked ``generator``, before only ``rsseg_version``."""
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("format"), int)
        and isinstance(manifest.get("dataset"), str)
        and (manifest.get("generator") == GENERATOR or isinstance(manifest.get("rsseg_version"), str))
        and isinstance(manifest.get("parameters"), dict)
        and isinstance(manifest.get("patches"), dict)
    )


def listed_files(manifest: dict[str, Any]) -> tuple[dict[str, int | None], set[str]]:
    """The files a preparation must hold (relative path → byte size, None if not recorded), and those
    it may hold.

    Manifests record every file with its size (``files``). Older ones only list the patches: their
    images must exist, their masks only in splits that have a masks folder (unlabelled splits have none).
    """
    allowed = {MANIFEST_NAME}
    if isinstance(manifest.get("files"), dict):
        required = {str(path): size if isinstance(size, int) else None for path, size in manifest["files"].items()}
        return required, allowed | set(required)
    required: dict[str, int | None] = {}
    for split, entries in manifest["patches"].items():
        for entry in entries:
            required[f"{split}/images/{entry['id']}.png"] = None
            allowed.add(f"{split}/masks/{entry['id']}.png")
    return required, allowed | set(required)


def files_on_disk(root: Path) -> list[str]:
    """Every file (and symlink) under ``root`` as a sorted relative path; folders are not files."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        here = Path(folder).relative_to(root)
        links = [name for name in subfolders if os.path.islink(os.path.join(folder, name))]
        found += [(here / name).as_posix() for name in sorted(names) + links]
    return sorted(found)


def _require_only_listed_files(dst: Path, manifest: dict[str, Any]) -> None:
    """DataError unless every file in ``dst`` is one its manifest lists: only then is replacing it safe."""
    unlisted = _unlisted_files(dst, manifest)
    if unlisted:
        raise DataError(
            f"{dst}: holds files rsseg did not write ({examples(unlisted)}); refusing to replace it, which "
            "would delete them: move them out of the folder, or choose another --dst"
        )


def _unlisted_files(dst: Path, manifest: dict[str, Any]) -> list[str]:
    _, allowed = listed_files(manifest)
    return [path for path in files_on_disk(dst) if path not in allowed]


def examples(paths: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``paths`` for a message, and how many more there are."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _is_up_to_date(
    dst: Path, existing: dict[str, Any], dataset: str, parameters: dict[str, Any], sources: list[dict[str, Any]]
) -> bool:
    """True when ``dst`` holds this exact preparation, complete; DataError when it holds a different one."""
    found = {"dataset": existing.get("dataset"), **existing.get("parameters", {})}
    wanted = {"dataset": dataset, **parameters}
    differences = [
        f"{key}: {found.get(key)!r} there, {wanted.get(key)!r} requested"
        for key in sorted(set(found) | set(wanted))
        if found.get(key) != wanted.get(key)
    ]
    if differences:
        unlisted = _unlisted_files(dst, existing)
        fix = (
            f"it also holds files rsseg did not write ({examples(unlisted)}), so it will not be replaced: "
            "choose another --dst, or move those files out and pass --force to rebuild it"
            if unlisted
            else "pass --force to rebuild it, or choose another --dst"
        )
        raise DataError(f"{dst}: already prepared with different parameters ({'; '.join(differences)}); {fix}")
    if existing.get("sources") != sources:
        logger.warning("%s: the source files changed since it was prepared; rebuilding", dst)
        return False
    damaged = _damaged_files(dst, existing)
    if damaged:
        logger.warning(
            "%s: %d of %d prepared files are missing or changed size (e.g. %s); rebuilding",
            dst, len(damaged), len(listed_files(existing)[0]), damaged[0],
        )
        return False
    return True


def _damaged_files(dst: Path, manifest: dict[str, Any]) -> list[str]:
    """Listed files that are missing or whose size differs from the recorded one (a cheap ``stat`` each).

    Catches deleted and truncated patches; a same-size corruption needs ``--force``, as the read error says.
    """
    required, _ = listed_files(manifest)
    if "files" not in manifest:  # older manifests: masks are required where the split has a masks folder
        required |= {
            f"{split}/masks/{entry['id']}.png": None
            for split, entries in manifest["patches"].items()
            if (dst / split / "masks").is_dir()
            for entry in entries
        }
    damaged = []
    for path, size in required.items():
        try:
            actual = (dst / path).stat().st_size
        except OSError:
            damaged.append(path)
            continue
        if size is not None and actual != size:
            damaged.append(path)
    return damaged


# --------------------------------------------------------------------------------------------------
# Building


def _check_free_space(dst: Path, expected_bytes: int | None) -> None:
    """DataError before anything is written when the disk ``dst`` is built on has too little space."""
    if expected_bytes is None:
        return
    ancestor = next(folder for folder in dst.parents if folder.is_dir())
    free = shutil.disk_usage(ancestor).free
    if expected_bytes > free:
        raise DataError(
            f"{dst}: not enough free space on {ancestor}: the preparation needs ~{human_bytes(expected_bytes)}, "
            f"{human_bytes(free)} free; free some space or choose another --dst"
        )


def human_bytes(count: float) -> str:
    """``2.3 GiB``: sizes in messages, in binary units like ``df -h``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} EiB"


def _build_into_place(
    dst: Path,
    dataset: str,
    parameters: dict[str, Any],
    sources: list[dict[str, Any]],
    build: Callable[[Path], dict[str, Any]],
    synthetic_source: bool = False,
) -> dict[str, Any]:
    """Build into a temporary sibling, write the manifest, swap it in; on failure leave no partial folder.

    An OSError (full disk, read-only or forbidden destination) becomes a DataError naming the path and
    the reason, not a traceback.
    """
    tmp = dst.with_name(f"{dst.name}{PARTIAL_MARKER}{os.getpid()}")
    replaced_cwd = _holds_working_directory(dst)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        content = build(tmp)
        manifest = {
            "format": MANIFEST_FORMAT,
            "generator": GENERATOR,
            "dataset": dataset,
            "rsseg_version": rsseg.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": parameters,
            "synthetic_source": synthetic_source,
            **{key: value for key, value in content.items() if key not in ("patches", "files")},
            "sources": sources,
            "patches": content.get("patches", {}),
        }
        manifest["files"] = {path: (tmp / path).stat().st_size for path in files_on_disk(tmp)}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        _move_into_place(tmp, dst)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(_write_error_message(dst, error)) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replaced_cwd:
        logger.warning("%s was replaced: a shell inside it still sees the removed old folder; run `cd %s`", dst, dst)
    return manifest


OS_ERROR_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def _write_error_message(dst: Path, error: OSError) -> str:
    """What went wrong where, and what to do: for a full disk and for one that cannot be written."""
    reason = OS_ERROR_REASONS.get(error.errno) or (
        os.strerror(error.errno).lower() if error.errno else str(error) or type(error).__name__
    )
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space or choose another --dst"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a --dst you can write to"
    else:
        fix = "check that the destination's disk can be written, or choose another --dst"
    return f"{dst}: cannot prepare the dataset there: {reason}{where}; nothing was changed there; {fix}"


def _holds_working_directory(dst: Path) -> bool:
    """True when the current directory is ``dst`` or inside it: replacing it strands a shell there."""
    try:
        cwd = Path.cwd()
    except OSError:
        return False
    return dst.exists() and (cwd == dst or dst in cwd.parents)


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
