"""A Hugging Face hub cache written offline, in the layout and file names the hub would download.

``<HF_HOME>/hub/models--<org>--<name>/snapshots/<revision>/<files>`` with ``refs/main`` naming the revision:
what ``hf_hub_download`` reads with ``HF_HUB_OFFLINE=1`` (timm, transformers, diffusers, open_clip and
segmentation-models-pytorch all load through it). A repository is written into a staging folder and moved in
place whole, then ``refs/main`` is written last, so an interrupted run leaves no half repository that would be
taken for a complete one. Every snapshot holds ``REHEARSAL_NOTE``: its weights are random (docs/rehearsal.md).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REHEARSAL_NOTE = "RSSEG_REHEARSAL_RANDOM_WEIGHTS.txt"
NOTE_TEXT = ("rsseg rehearsal cache: the weights in this folder are RANDOMLY INITIALISED (the real architecture and "
             "configuration, saved by the library's own save function). They exist to rehearse loading offline; "
             "never use them for results.\n")


def hub_folder(home: str | Path) -> Path:
    """The hub cache under ``HF_HOME``."""
    return Path(home) / "hub"


def repo_folder(home: str | Path, repo_id: str) -> Path:
    return hub_folder(home) / ("models--" + repo_id.replace("/", "--"))


def rehearsal_revision(repo_id: str) -> str:
    """A commit-like name (40 hex digits, as the hub's) for a repository's rehearsal snapshot."""
    return hashlib.sha1(f"rsseg-rehearsal:{repo_id}".encode()).hexdigest()


def snapshot(home: str | Path, repo_id: str, revision: str | None = None) -> Path | None:
    """The complete rehearsal snapshot of ``repo_id`` (at ``revision``, else the one ``refs/main`` names), or
    None (a repository downloaded for real is not one: only rehearsal snapshots hold the note)."""
    folder = repo_folder(home, repo_id)
    if revision is None:
        ref = folder / "refs" / "main"
        if not ref.is_file():
            return None
        revision = ref.read_text().strip()
    path = folder / "snapshots" / revision
    return path if (path / REHEARSAL_NOTE).is_file() else None


@contextmanager
def writing_repo(home: str | Path, repo_id: str, revision: str | None = None) -> Iterator[Path]:
    """A folder to write ``repo_id``'s files into (subfolders as on the hub); when the block ends without an
    error it becomes the snapshot at ``revision`` (a pinned commit a library asks for, else the rehearsal's)
    and ``refs/main`` points at it."""
    folder = repo_folder(home, repo_id)
    revision = revision or rehearsal_revision(repo_id)
    staging = folder / f".staging-{revision}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        (staging / REHEARSAL_NOTE).write_text(NOTE_TEXT)
        target = folder / "snapshots" / revision
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(target)
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


Writer = Callable[[Path], None]  # writes a repository's files into the folder it is given
