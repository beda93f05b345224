"""``rsseg rehearse-cache DIR``: write the rehearsal repository of every pretrained model the configs name."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from rsseg.rehearsal.hub import folder_size, snapshot, writing_repo
from rsseg.rehearsal.registry import Entry, entries

logger = logging.getLogger(__name__)


# What the rehearsal imports besides the core: every method's stack (its modules import them directly).
REHEARSAL_EXTRAS = (("transformers", "refer"), ("diffusers", "idgbr"), ("open_clip", "sdci"), ("skimage", "sdci"))


def require_all_extras() -> None:
    """The rehearsal builds every method: name the missing extra now rather than fail midway."""
    from rsseg.extras import require

    for module, extra in REHEARSAL_EXTRAS:
        require(module, extra, "the rehearsal (it needs pip install 'rsseg[all]')")


def write_cache(home: str | Path, only: Sequence[str] | None = None) -> list[dict]:
    """Write the repositories (those in ``only``, else all) under ``home`` (used as ``HF_HOME``), skipping
    those already complete; one record per repository."""
    require_all_extras()
    chosen = _chosen(entries(), only)
    records = []
    for number, entry in enumerate(chosen, start=1):
        present = snapshot(home, entry.repo_id, entry.revision)
        if present is not None:
            records.append({"repo_id": entry.repo_id, "status": "present", "bytes": folder_size(present)})
            continue
        logger.info("[%d/%d] %s (%s, for %s): writing random weights of the real architecture", number,
                    len(chosen), entry.repo_id, entry.library, entry.used_by)
        started = time.perf_counter()
        with writing_repo(home, entry.repo_id, entry.revision) as folder:
            entry.write(folder)
        written = snapshot(home, entry.repo_id, entry.revision)
        records.append({"repo_id": entry.repo_id, "status": "written", "bytes": folder_size(written),
                        "seconds": round(time.perf_counter() - started, 1)})
    return records


def _chosen(all_entries: list[Entry], only: Sequence[str] | None) -> list[Entry]:
    if not only:
        return all_entries
    known = {e.repo_id for e in all_entries}
    unknown = sorted(set(only) - known)
    if unknown:
        raise ValueError(f"no rehearsal repository {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [e for e in all_entries if e.repo_id in set(only)]
