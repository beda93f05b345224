"""Issue 18, preparation and synthesis: nothing lost, nothing run, nothing mislabelled.

One test per fault a hostile test found; each docstring names the fault. The data is tiny (a few
synthetic tiles or hand-written files under ``tmp_path``), so the whole file runs in seconds.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rsseg
from rsseg.data.core.errors import DataError
from rsseg.data.core.io import write_png
from rsseg.data.core.prepare import MANIFEST_FORMAT, MANIFEST_NAME, PARTIAL_MARKER, prepare_once
from rsseg.data.core.prepared import PreparedPatchDataset, StitchedTileDataset

PATCH_IDS = ("a_00000_00000", "a_00000_00016")


def tiny_build(out: Path) -> dict[str, Any]:
    """What a dataset's build does, in miniature: two 16² patches of one split plus their records."""
    for kind in ("images", "masks"):
        (out / "train" / kind).mkdir(parents=True)
    for pid in PATCH_IDS:
        write_png(out / "train" / "images" / f"{pid}.png", np.zeros((16, 16, 3), np.uint8))
        write_png(out / "train" / "masks" / f"{pid}.png", np.zeros((16, 16), np.uint8))
    size = {"y": 0, "height": 16, "width": 16, "tile_height": 16, "tile_width": 32}
    return {"patches": {"train": [{"id": pid, "tile": "a", "x": 16 * i, **size} for i, pid in enumerate(PATCH_IDS)]}}


class TinyDataset(PreparedPatchDataset):
    dataset_name = "tiny"


def prepare_tiny(dst: Path, parameters: dict | None = None, **kwargs: Any) -> dict[str, Any]:
    return prepare_once(
        dst, dataset="tiny", parameters=parameters or {"patch_size": 16}, sources=[], build=tiny_build, **kwargs
    )


def no_partials(folder: Path) -> bool:
    return not [path for path in folder.iterdir() if PARTIAL_MARKER in path.name or ".old-" in path.name]


# --------------------------------------------------------------------------------------------------
# Fault 1


def test_force_never_deletes_a_folder_that_holds_files_rsseg_did_not_write(tmp_path):
    """Fault 1: `prepare --force` deleted any folder with a parseable manifest.json (a results folder
    with checkpoints), and the error before it told the user to pass --force."""
    # a results folder whose manifest.json is someone else's
    results = tmp_path / "results"
    (results / "checkpoints").mkdir(parents=True)
    (results / MANIFEST_NAME).write_text(json.dumps({"format": 1, "dataset": "tiny", "runs": 3}))
    (results / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    for force in (False, True):
        with pytest.raises(DataError, match=r"not a prepared rsseg root.*another --dst") as caught:
            prepare_tiny(results, force=force)
        assert str(results) in str(caught.value) and "--force" not in str(caught.value)
    assert (results / "checkpoints" / "last.ckpt").read_bytes() == b"weights"

    # a real prepared root into which the user put files of their own
    dst = tmp_path / "prepared"
    prepare_tiny(dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    assert manifest["generator"] == "rsseg" and manifest["rsseg_version"]
    (dst / "checkpoints").mkdir()
    (dst / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (dst / "train" / "images" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds files rsseg did not write") as caught:
        prepare_tiny(dst, force=True)
    message = str(caught.value)
    assert str(dst) in message and "checkpoints/last.ckpt" in message and "train/images/notes.txt" in message
    assert "--force" not in message
    with pytest.raises(DataError, match=r"different parameters") as caught:  # --force only once they are out
        prepare_tiny(dst, parameters={"patch_size": 32})
    assert "checkpoints/last.ckpt" in str(caught.value) and "move those files out and pass --force" in str(caught.value)
    assert (dst / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert no_partials(tmp_path)

    # without the user's files, --force rebuilds; the different-parameters error still suggests it
    (dst / "checkpoints" / "last.ckpt").unlink()
    (dst / "train" / "images" / "notes.txt").unlink()
    with pytest.raises(DataError, match=r"different parameters.*--force"):
        prepare_tiny(dst, parameters={"patch_size": 32})
    assert prepare_tiny(dst, parameters={"patch_size": 32}, force=True)["already_prepared"] is False

    # roots prepared by the previous code (no generator, no file sizes) are still rsseg's
    old = {key: value for key, value in manifest.items() if key not in ("generator", "files")}
    (dst / MANIFEST_NAME).write_text(json.dumps(old))
    assert prepare_tiny(dst)["already_prepared"] is True
    assert prepare_tiny(dst, force=True)["already_prepared"] is False


# --------------------------------------------------------------------------------------------------
# Fault 2


def test_a_corrupt_prepared_patch_says_rebuild_and_prepare_rebuilds_it(tmp_path, caplog):
    """Fault 2: a corrupt prepared patch said "re-extract it from the archive", and re-running prepare
    said "already prepared … nothing to do"."""
    root = tmp_path / "root"
    prepare_tiny(root)
    dataset = TinyDataset(root, "train")
    patch = dataset.image_path(1)
    good = patch.read_bytes()
    patch.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"{patch}: cannot read image") as caught:
        dataset[1]
    message = str(caught.value)
    assert dataset.sample_id(1) in message and "re-extract" not in message
    assert f"rsseg prepare tiny --src <your raw folder> --dst {root} --force" in message
    with pytest.raises(DataError, match=r"must be rebuilt"):  # whole-tile evaluation reads it too
        StitchedTileDataset(dataset)[0]

    with caplog.at_level(logging.WARNING, logger="rsseg"):
        again = prepare_tiny(root)
    assert again["already_prepared"] is False
    assert "train/images/a_00000_00016.png" in caplog.text and "1 of 4 prepared files" in caplog.text
    assert patch.read_bytes() == good and TinyDataset(root, "train")[1]["image"].shape == (3, 16, 16)

    dataset.mask_path(0).unlink()  # a missing file is found too, also with an older manifest
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    del manifest["files"]
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert prepare_tiny(root)["already_prepared"] is False
    assert dataset.mask_path(0).is_file()
    assert prepare_tiny(root)["already_prepared"] is True


# --------------------------------------------------------------------------------------------------
# Fault 3


def test_synth_refuses_a_folder_it_did_not_write(tmp_path):
    """Fault 3: `rsseg synth <ds> <dst>` into an existing raw folder overwrote a real-looking tile and
    mixed synthetic tiles in, exit 0."""
    from rsseg.data.synthetic import SYNTHETIC_MARKER, write_synthetic

    raw = tmp_path / "raw"
    real = raw / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"the real tile")
    with pytest.raises(DataError, match=r"not empty and was not written by rsseg synth") as caught:
        write_synthetic("potsdam", raw, tiles={"2_10": (40, 40)})
    assert str(raw) in str(caught.value) and "2_Ortho_RGB/top_potsdam_2_10_RGB.tif" in str(caught.value)
    assert real.read_bytes() == b"the real tile" and [p for p in raw.rglob("*") if p.is_file()] == [real]

    synth = tmp_path / "synth"
    written = write_synthetic("potsdam", synth, seed=1, tiles={"2_10": (40, 40), "2_11": (40, 40)})
    marker = json.loads((synth / SYNTHETIC_MARKER).read_text())
    assert marker["dataset"] == "potsdam" and marker["seed"] == 1 and marker["rsseg_version"]
    on_disk = sorted(p.relative_to(synth).as_posix() for p in synth.rglob("*") if p.is_file())
    assert sorted(marker["files"]) == [name for name in on_disk if name != SYNTHETIC_MARKER]
    assert {p.relative_to(synth).as_posix() for p in written} <= set(marker["files"])

    # its own folder may be re-synthesised, and old files do not linger
    write_synthetic("potsdam", synth, seed=1, tiles={"2_10": (40, 40)})
    assert not list(synth.rglob("*2_11*"))
    (synth / "2_Ortho_RGB" / "top_potsdam_3_10_RGB.tif").write_bytes(b"added by hand")
    with pytest.raises(DataError, match=r"holds files rsseg synth did not write.*top_potsdam_3_10_RGB\.tif"):
        write_synthetic("potsdam", synth, tiles={"2_10": (40, 40)})
    assert (synth / "2_Ortho_RGB" / "top_potsdam_3_10_RGB.tif").read_bytes() == b"added by hand"
    with pytest.raises(DataError, match=r"unknown dataset 'nope'"):
        write_synthetic("nope", tmp_path / "other")


# --------------------------------------------------------------------------------------------------
# Fault 4


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``, from /proc/<pid>/stat (zombies count as gone)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_parent(tmp_path):
    """Fault 4: SIGKILL of `rsseg prepare --workers 2` left its worker processes alive (~550 MB each). Linux, as
    rsseg's machines and CI: the workers are found through /proc."""
    # rsseg.data's __init__ imports every dataset (torch, lightning: ~10 s on a busy machine); an empty
    # package object lets prepare.py load alone, unchanged, in about a second
    script = textwrap.dedent(
        """
        import os, sys, time, types
        import rsseg
        package = types.ModuleType("rsseg.data")
        package.__path__ = [os.path.join(os.path.dirname(rsseg.__file__), "data")]
        sys.modules["rsseg.data"] = package
        from rsseg.data.core.prepare import map_jobs
        map_jobs(time.sleep, [60.0] * 4, workers=2, progress=False)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(rsseg.__file__).parents[1])}  # the rsseg under test
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 30
        while len(workers := children_of(parent.pid)) < 2:
            assert parent.poll() is None, "the parent exited early"
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)
        time.sleep(1.0)  # let the workers run their initializer and pick up a job
        workers |= {grandchild for pid in workers for grandchild in children_of(pid)}
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = sorted(filter(alive, workers))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    for pid in survivors:  # clean up before failing: nothing of ours keeps running
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their killed parent"


# --------------------------------------------------------------------------------------------------
# Fault 5


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    ],
)
def test_an_unwritable_destination_is_a_data_error_not_a_traceback(tmp_path, error, reason):
    """Fault 5: a read-only destination and a full disk produced tracebacks. (Tests run as root, where
    chmod does not stop writes, so the build fails the way a full or read-only disk makes it fail.)"""
    dst = tmp_path / "dst"

    def failing_build(out: Path) -> dict[str, Any]:
        tiny_build(out)
        error.filename = str(out / "train" / "images" / "b.png")
        raise error

    with pytest.raises(DataError, match=reason) as caught:
        prepare_once(dst, dataset="tiny", parameters={}, sources=[], build=failing_build)
    assert str(dst) in str(caught.value) and "b.png" in str(caught.value)
    assert not dst.exists() and not list(tmp_path.iterdir())  # the partial folder is gone

    # a failure while moving the finished folder into place: the previous preparation stays
    prepare_tiny(dst)
    before = (dst / MANIFEST_NAME).read_text()
    real_replace = os.replace

    def failing_replace(source, target):
        if PARTIAL_MARKER in os.fspath(source):
            raise type(error)(error.errno, error.strerror, os.fspath(target))
        return real_replace(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rsseg.data.core.prepare.os.replace", failing_replace)
        with pytest.raises(DataError, match=rf"{dst}.*{reason}"):
            prepare_tiny(dst, parameters={"patch_size": 32}, force=True)
    assert (dst / MANIFEST_NAME).read_text() == before
    assert no_partials(tmp_path)


# --------------------------------------------------------------------------------------------------
# Fault 6


def test_free_space_is_checked_before_writing(tmp_path):
    """Fault 6: free space was not checked before writing (a full disk was found hours into a run)."""
    calls = []

    def build(out: Path) -> dict[str, Any]:
        calls.append(out)
        return tiny_build(out)

    dst = tmp_path / "not" / "yet" / "there"
    with pytest.raises(DataError, match=r"needs ~8\.0 EiB, .* free") as caught:
        prepare_once(dst, dataset="tiny", parameters={}, sources=[], build=build, expected_bytes=2**63)
    assert str(dst) in str(caught.value)
    assert not calls and not list(tmp_path.iterdir())
    assert prepare_once(dst, dataset="tiny", parameters={}, sources=[], build=build, expected_bytes=1)
    assert calls and (dst / MANIFEST_NAME).is_file()


# --------------------------------------------------------------------------------------------------
# Fault 7


def test_dst_dot_is_refused_clearly(tmp_path, monkeypatch):
    """Fault 7: `--dst .` crashed with a traceback (``Path('.').with_name`` has no name to change)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for force in (False, True):
        with pytest.raises(DataError, match=rf"{work}: .*not a prepared dataset"):
            prepare_tiny(Path("."), force=force)
    assert (work / "notes.txt").read_text() == "mine" and sorted(tmp_path.iterdir()) == [work]
    # the current directory as a prepared root: --force rebuilds it (it crashed with a ValueError)
    prepared = tmp_path / "prepared"
    prepare_tiny(prepared)
    monkeypatch.chdir(prepared)
    assert prepare_tiny(Path("."), force=True)["already_prepared"] is False
    assert (prepared / MANIFEST_NAME).is_file() and no_partials(tmp_path)
    # a relative path with ".." works, and is built beside its real location
    (work / "sub").mkdir()
    monkeypatch.chdir(work / "sub")
    prepare_tiny(Path("../prepared"))
    assert (work / "prepared" / MANIFEST_NAME).is_file()
    assert json.loads((work / "prepared" / MANIFEST_NAME).read_text())["format"] == MANIFEST_FORMAT
