"""A cheap fingerprint of rsseg's own code, for caches whose content the code decides (help texts, the bench's
fitted refiner stages): every module's path, modification time and size, without reading the files."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def code_fingerprint() -> list[tuple[str, int, int]]:
    """(relative path, mtime in ns, size) of every ``.py`` file of the package, sorted."""
    return sorted((str(p.relative_to(PACKAGE)), p.stat().st_mtime_ns, p.stat().st_size) for p in PACKAGE.rglob("*.py"))
