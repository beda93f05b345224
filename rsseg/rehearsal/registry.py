"""Every pretrained model the configs name, with the function that writes its rehearsal repository."""

from __future__ import annotations

from dataclasses import dataclass

from rsseg.rehearsal.hub import Writer


@dataclass(frozen=True)
class Entry:
    """One hub repository: ``repo_id`` (at ``revision`` where the loading library pins one), the library that
    loads it, what in rsseg uses it, and the writer of its files (random weights of the real architecture)."""

    repo_id: str
    library: str
    used_by: str
    write: Writer
    revision: str | None = None


def entries() -> list[Entry]:
    """All of them, family by family (each family's module lists its own)."""
    from rsseg.rehearsal.families import modules

    return [entry for module in modules() for entry in module.entries()]


def checks() -> dict:
    """Every rehearsal check by name (``<family>/<what>``)."""
    from rsseg.rehearsal.families import modules

    return {name: check for module in modules() for name, check in module.checks().items()}
