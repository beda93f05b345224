"""Walking a ``--src`` folder: symbolic links followed, but never in circles or up to ``/``.

Users link dataset folders into their source folder (``src/2_Ortho_RGB -> /data/potsdam/2_Ortho_RGB``),
so directory links are followed. ``os.walk(followlinks=True)`` alone would also follow a link back into
the tree (``src/a/loop -> src``: the same files again and again, until the path is too long) and a link
to ``/`` or ``..`` (the whole file system). :func:`walk_source` therefore never enters a directory whose
real path it has already walked, nor one that contains ``src`` or the folder being walked; each such
link is skipped with one warning naming it. Folders that cannot be read are warned about, not silently
left out, and :func:`check_not_broken` turns a dataset file that is a broken link into a DataError.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from rsseg.data.core.errors import DataError

logger = logging.getLogger(__name__)


def _contains(outer: str, inner: str) -> bool:
    """True when the real path ``inner`` is ``outer`` or lies inside it."""
    try:
        return os.path.commonpath([outer, inner]) == outer
    except ValueError:  # different drives (Windows)
        return False


def walk_source(src: str | Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk(src)`` top-down, sorted, following directory links safely (module docstring).

    Yields ``(folder, subfolders, files)`` like ``os.walk``; callers may remove names from
    ``subfolders`` to skip them. Broken links are listed among ``files`` (they are not directories).
    """
    src = Path(src)
    root = os.path.realpath(src)
    visited = {root}

    def unreadable(error: OSError) -> None:
        logger.warning("%s: cannot read this folder (%s); files under it are not used", error.filename,
                       error.strerror or error)

    for folder, subfolders, files in os.walk(src, followlinks=True, onerror=unreadable):
        here = os.path.realpath(folder)
        keep = []
        for name in sorted(subfolders):
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            link = os.path.islink(path)
            if _contains(real, root) or _contains(real, here):
                logger.warning(
                    "%s: not followed: it leads to %s, which contains the source folder %s or the folder the "
                    "link is in (a link to / or ..); link the dataset folders themselves instead", path, real, src,
                )
                continue
            if real in visited:
                if link:
                    logger.warning("%s: not followed: it leads to %s, which is already walked; each file is "
                                   "used once", path, real)
                else:
                    logger.warning("%s: skipped: already walked through a symbolic link to it; each file is "
                                   "used once", path)
                continue
            visited.add(real)
            keep.append(name)
        subfolders[:] = keep
        files.sort()
        yield Path(folder), subfolders, files


def check_not_broken(path: Path) -> None:
    """DataError when ``path`` is a symbolic link whose target does not exist."""
    if path.is_symlink() and not path.exists():
        raise DataError(
            f"{path}: broken symbolic link to {os.readlink(path)} (the target does not exist); "
            "point the link at the real file, or remove it"
        )
