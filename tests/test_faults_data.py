"""Issue 18, data part ("Nothing lost, nothing run, nothing mislabelled"): one reproduction per fault in
the ISPRS (Potsdam, Vaihingen) and UAVid preparation; each docstring names its fault."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

import rsseg.data.datasets.isprs.prepare as isprs_prepare
import rsseg.data.datasets.uavid.prepare as uavid_prepare
from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.io import read_image
from rsseg.data.core.prepare import count_pixels
from rsseg.data.datasets.isprs.labels import decode_isprs_label
from rsseg.data.datasets.isprs.prepare import check_boundary_share, report_bgr_order
from rsseg.data.datasets.potsdam import PotsdamDataModule, find_potsdam_files, prepare_potsdam
from rsseg.data.datasets.uavid.prepare import find_release_folders, prepare_uavid
from rsseg.data.datasets.vaihingen import prepare_vaihingen
from rsseg.data.synthetic import (
    SYNTH_POTSDAM_TILES,
    SYNTH_VAIHINGEN_AREAS,
    write_synthetic_potsdam,
    write_synthetic_vaihingen,
)
from tests.data.uavid.data import write_uavid
from tests.data.vaihingen.data import write_vaihingen

RGB_DIR, LABEL_DIR, ERODED_DIR = "2_Ortho_RGB", "5_Labels_all", "5_Labels_all_noBoundary"


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def image_of(root: Path, tile: str) -> Path:
    return root / RGB_DIR / f"top_potsdam_{tile}_RGB.tif"


def label_of(root: Path, tile: str, eroded: bool = False) -> Path:
    if eroded:
        return root / ERODED_DIR / f"top_potsdam_{tile}_label_noBoundary.tif"
    return root / LABEL_DIR / f"top_potsdam_{tile}_label.tif"


def rewrite_tiff(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, np.ascontiguousarray(array), photometric="rgb")


@pytest.fixture
def potsdam_src(tiny_potsdam_raw, tmp_path) -> Path:
    return copy_tree(tiny_potsdam_raw, tmp_path / "src")


@pytest.fixture(scope="module")
def uavid_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uavid_raw") / "release"
    write_uavid(root)
    return root


# --------------------------------------------------------------------------------------------------
# Fault 1: symlink walks


def test_symlink_cycle_is_walked_once(potsdam_src, uavid_raw, tmp_path, caplog):
    """Fault 1 (symlink walks): a link back into --src (``src/a/loop -> src``) made os.walk(followlinks=True)
    walk the tree again and again (duplicates, or a hang); now the loop is skipped with one warning."""
    loop = potsdam_src / RGB_DIR / "loop"
    loop.symlink_to(potsdam_src, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="rsseg"):
        files = find_potsdam_files(potsdam_src)
    assert set(files) == {"2_11", "3_10", "2_10", "2_13", "7_10"}
    assert all("loop" not in str(path) for kinds in files.values() for path in kinds.values())
    warned = [r.getMessage() for r in caplog.records if str(loop) in r.getMessage()]
    assert len(warned) == 1 and "not followed" in warned[0]

    release = copy_tree(uavid_raw, tmp_path / "release")  # the UAVid walker shares the rule
    (release / "uavid_train" / "seq1" / "up").symlink_to(release, target_is_directory=True)
    assert set(find_release_folders(release)) == {"uavid_train", "uavid_val", "uavid_test"}


def test_link_to_the_file_system_root_is_not_walked(potsdam_src, uavid_raw, tmp_path, caplog):
    """Fault 1 (symlink walks): a link to ``/`` walked the whole file system; now it is skipped at once,
    with a warning naming it."""
    (potsdam_src / "everything").symlink_to("/", target_is_directory=True)
    release = copy_tree(uavid_raw, tmp_path / "release")
    (release / "everything").symlink_to("/", target_is_directory=True)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rsseg"):
        assert len(find_potsdam_files(potsdam_src)) == 5
        assert len(find_release_folders(release)) == 3
    assert time.monotonic() - start < 10
    for link in (potsdam_src / "everything", release / "everything"):
        assert any(str(link) in r.getMessage() and "contains the source folder" in r.getMessage()
                   for r in caplog.records)


def test_linked_data_folder_outside_src_is_followed(tiny_potsdam_raw, tmp_path):
    """Fault 1 (symlink walks): users link dataset folders into --src; a link to a real sibling folder
    outside --src is still followed, and the prepared manifest names the files under the link."""
    outside = copy_tree(tiny_potsdam_raw / RGB_DIR, tmp_path / "elsewhere" / "images")
    src = tmp_path / "src"
    src.mkdir()
    for folder in (LABEL_DIR, ERODED_DIR):
        copy_tree(tiny_potsdam_raw / folder, src / folder)
    (src / RGB_DIR).symlink_to(Path("..") / "elsewhere" / "images", target_is_directory=True)
    files = find_potsdam_files(src)
    assert files["2_11"]["image"] == image_of(src, "2_11")
    assert files["2_11"]["image"].resolve() == (outside / "top_potsdam_2_11_RGB.tif").resolve()
    manifest = prepare_potsdam(src, tmp_path / "dst", patch_size=128, progress=False)
    assert manifest["tiles"]["2_11"]["image"] == f"{RGB_DIR}/top_potsdam_2_11_RGB.tif"


# --------------------------------------------------------------------------------------------------
# Fault 2: broken symlinks


def test_broken_link_among_the_source_files_is_named(potsdam_src, uavid_raw, tmp_path):
    """Fault 2 (broken symlinks): a dataset file that is a broken link gave a FileNotFoundError traceback
    (``stat`` in ``file_fingerprint``), or, for UAVid, silently dropped the frame; now a DataError
    naming the link and its target."""
    image = image_of(potsdam_src, "2_11")
    image.unlink()
    image.symlink_to("/nonexistent/top_potsdam_2_11_RGB.tif")
    with pytest.raises(DataError, match=rf"{image}: broken symbolic link to /nonexistent/top_potsdam_2_11_RGB\.tif"):
        prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False)
    assert not (tmp_path / "dst").exists()

    release = copy_tree(uavid_raw, tmp_path / "release")
    label = release / "uavid_val" / "seq16" / "Labels" / "000100.png"
    label.unlink()
    label.symlink_to("../../../moved/000100.png")
    with pytest.raises(DataError, match=rf"{label}: broken symbolic link to \.\./\.\./\.\./moved/000100\.png"):
        prepare_uavid(release, tmp_path / "udst", patch_size=32, progress=False)


# --------------------------------------------------------------------------------------------------
# Fault 3: labels saved in BGR order


@pytest.fixture(scope="module")
def synthetic_twins(tmp_path_factory):
    """Default-size synthetic tiles: Potsdam 6_7 (train, the smallest car/low-vegetation ratio when
    swapped), 2_10 (val), 2_13 (test); Vaihingen area 30 (the smallest swapped car share)."""
    root = tmp_path_factory.mktemp("twins")
    write_synthetic_potsdam(root / "potsdam", tiles={t: SYNTH_POTSDAM_TILES[t] for t in ("6_7", "2_10", "2_13")})
    write_synthetic_vaihingen(root / "vaihingen", tiles={"30": SYNTH_VAIHINGEN_AREAS["30"]})
    return root


def tile_result(path: Path, rgb: np.ndarray) -> dict:
    mask, boundary, unknown = decode_isprs_label(rgb)
    job = SimpleNamespace(label=path, tile="t", label_kind="eroded")
    return {"job": job, "height": mask.shape[0], "width": mask.shape[1], "pixels_per_class": count_pixels(mask, 6),
            "boundary_pixels": boundary, "unknown_pixels": unknown}


def test_bgr_label_is_caught_by_its_class_statistics(synthetic_twins, tmp_path):
    """Fault 3 (labels saved in BGR order accepted even with --strict): the ISPRS palette maps onto itself
    under R↔B, so the colour check saw nothing. Now a label whose car and clutter shares are inverted
    against low vegetation and building is a DataError under strict, a DataWarning otherwise; the
    synthetic twins as written pass, their R↔B-swapped labels are caught."""
    vaihingen = synthetic_twins / "vaihingen"
    for path in (vaihingen / "top_mosaic_09cm_area30.tif",
                 vaihingen / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
                 / "top_mosaic_09cm_area30_noBoundary.tif"):
        rgb = read_image(path)
        report_bgr_order(tile_result(path, rgb), strict=True)  # as written: quiet
        with pytest.raises(DataError, match=rf"{path.name}: looks saved in BGR order"):
            report_bgr_order(tile_result(path, rgb[..., ::-1]), strict=True)

    src = copy_tree(synthetic_twins / "potsdam", tmp_path / "src")
    prepare_potsdam(src, tmp_path / "ok", patch_size=512, progress=False, strict=True)  # no false alarm
    label = label_of(src, "6_7")
    rewrite_tiff(label, read_image(label)[..., ::-1])
    message = rf"{label}: looks saved in BGR order \(red and blue channels swapped\): car is .* swap the channels"
    with pytest.raises(DataError, match=message + ".*strict mode"):
        prepare_potsdam(src, tmp_path / "strict", patch_size=512, progress=False, strict=True)
    assert not (tmp_path / "strict").exists()
    with pytest.warns(DataWarning, match=message):
        prepare_potsdam(src, tmp_path / "lenient", patch_size=512, progress=False)


# --------------------------------------------------------------------------------------------------
# Fault 4: all-black eroded labels


def test_black_eroded_label_is_not_silently_ignored(potsdam_src, tmp_path):
    """Fault 4 (an all-black eroded test label silently ignores a whole tile): a label with (nearly) no
    class pixel is now always a DataError naming it; a boundary share above 50 % is a DataWarning, a
    DataError under strict."""
    label = label_of(potsdam_src, "2_13", eroded=True)
    rgb = read_image(label)
    rewrite_tiff(label, np.zeros_like(rgb))
    with pytest.raises(DataError, match=rf"{label}: only 0 of its \d+ pixels carry an ISPRS class"):
        prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False)
    almost = np.zeros_like(rgb)
    almost[0, :2] = 255  # two impervious pixels: still nothing worth scoring
    rewrite_tiff(label, almost)
    with pytest.raises(DataError, match=rf"{label}: only 2 of its"):
        prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False)
    assert not (tmp_path / "dst").exists()

    mostly = rgb.copy()
    mostly[: rgb.shape[0] * 2 // 3] = 0  # two thirds black
    rewrite_tiff(label, mostly)
    with pytest.raises(DataError, match=rf"{label}: 6\d\.\d% of its pixels are boundary black.*strict mode"):
        prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False, strict=True)
    with pytest.warns(DataWarning, match=rf"{label}: 6\d\.\d% of its pixels are boundary black"):
        prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False)

    # the synthetic eroded labels as written are far from the threshold
    result = tile_result(label, rgb)
    assert check_boundary_share(result, strict=True) is result
    assert result["boundary_pixels"] < 0.2 * result["height"] * result["width"]


# --------------------------------------------------------------------------------------------------
# Fault 5: image missing beside its label


def test_label_without_its_image_is_an_error_naming_both(potsdam_src, tmp_path, caplog):
    """Fault 5 (an image missing beside its label only appeared in a generic "N tiles missing" warning):
    a protocol tile with a label but no image is now a DataError naming the label found, the image
    expected and its archive; whole tiles missing (no image, no label) keep the warning."""
    image_of(potsdam_src, "3_10").unlink()
    label = label_of(potsdam_src, "3_10")
    with pytest.raises(
        DataError,
        match=rf"{label}: label of tile 3_10 found, but not its image top_potsdam_3_10_RGB\.tif "
        r"\(from 2_Ortho_RGB\.zip\)",
    ):
        prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False)

    for path in (label, label_of(potsdam_src, "3_10", eroded=True)):
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="rsseg"):
        manifest = prepare_potsdam(potsdam_src, tmp_path / "dst", patch_size=128, progress=False)
    assert "3_10" in manifest["splits"]["train"]["missing_tiles"]
    assert any("tiles of the 'unetformer' protocol are missing" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# Fault 6: unknown --protocol


def test_unknown_protocol_is_a_data_error_listing_the_known_ones(potsdam_src, uavid_raw, tmp_path):
    """Fault 6 (unknown --protocol): the lookups raised a bare ValueError; now every Potsdam, Vaihingen
    and UAVid lookup (prepare, spec, datamodule) raises a DataError listing the known protocols (still a
    ValueError for callers that caught that)."""
    vaihingen = tmp_path / "vaihingen"
    write_vaihingen(vaihingen)
    cases = [
        (lambda: prepare_potsdam(potsdam_src, tmp_path / "p", protocol="foo", progress=False),
         "unknown Potsdam protocol 'foo'; choose one of unetformer, official"),
        (lambda: PotsdamDataModule(str(tmp_path / "p"), protocol="foo"),
         "unknown Potsdam protocol 'foo'; choose one of unetformer, official"),
        (lambda: prepare_vaihingen(vaihingen, tmp_path / "v", protocol="foo", progress=False),
         "unknown Vaihingen protocol 'foo'; choose one of unetformer, official"),
        (lambda: prepare_uavid(uavid_raw, tmp_path / "u", protocol="foo", progress=False),
         "unknown UAVid protocol 'foo'; choose one of official, trainval"),
        (lambda: prepare_uavid(uavid_raw, tmp_path / "u", protocol=["official"], progress=False),
         r"unknown UAVid protocol \['official'\]"),
    ]
    for call, message in cases:
        with pytest.raises(DataError, match=message) as caught:
            call()
        assert isinstance(caught.value, ValueError)
    assert not any((tmp_path / name).exists() for name in ("p", "v", "u"))


# --------------------------------------------------------------------------------------------------
# Fault 7: sizes checked before anything is written


def test_window_sizes_are_checked_before_anything_is_written(potsdam_src, uavid_raw, tmp_path, monkeypatch):
    """Fault 7 (sizes checked before anything is written): --patch-size 0 and --stride 0 gave ValueError
    tracebacks, --patch-size 100000 tried to allocate 27.9 GiB while padding. Now DataErrors in the CLI's
    words, a patch size above the largest tile/frame is refused before a patch is allocated (sizes from
    the headers), and the output size estimate reaches ``prepare_once(expected_bytes=...)``."""
    dst = tmp_path / "dst"
    for prepare, src in ((prepare_potsdam, potsdam_src), (prepare_uavid, uavid_raw)):
        with pytest.raises(DataError, match=r"^--patch-size must be a positive integer, got 0$"):
            prepare(src, dst, patch_size=0, progress=False)
        with pytest.raises(DataError, match=r"^--stride must be between 1 and --patch-size \(64\), got 0"):
            prepare(src, dst, patch_size=64, stride=0, progress=False)
        with pytest.raises(DataError, match=r"^--stride must be between 1 and --patch-size \(64\), got 65"):
            prepare(src, dst, patch_size=64, stride=65, progress=False)
    start = time.monotonic()
    with pytest.raises(
        DataError,
        match=rf"--patch-size 100000 is larger than the largest source tile, {image_of(potsdam_src, '3_10')} "
        r"\(257×300\).*choose --patch-size 300 or less",
    ):
        prepare_potsdam(potsdam_src, dst, patch_size=100000, progress=False)
    with pytest.raises(DataError, match=r"--patch-size 100000 is larger than the largest source frame, .*\(45×85\)"):
        prepare_uavid(uavid_raw, dst, patch_size=100000, progress=False)
    assert time.monotonic() - start < 10 and not dst.exists() and not list(tmp_path.glob("dst*"))

    estimates = {}
    for module in (isprs_prepare, uavid_prepare):
        real = module.prepare_once

        def spy(*args, _real=real, _name=module.__name__, **kwargs):
            estimates[_name] = kwargs["expected_bytes"]
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "prepare_once", spy)
    for name, prepare, src in (("rsseg.data.datasets.isprs.prepare", prepare_potsdam, potsdam_src),
                               ("rsseg.data.datasets.uavid.prepare", prepare_uavid, uavid_raw)):
        out = tmp_path / name
        unknown_colours = name == "rsseg.data.datasets.uavid.prepare"  # the UAVid release has some
        with pytest.warns(DataWarning) if unknown_colours else nullcontext():
            prepare(src, out, patch_size=64, stride=48, progress=False)
        written = sum(path.stat().st_size for path in out.rglob("*.png"))
        assert written <= estimates[name] <= 4 * written, (name, written, estimates[name])
