"""The synthetic ISPRS Potsdam: official layout and formats, determinism, label/image consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from rsseg.data.core.io import read_image
from rsseg.data.datasets.isprs.labels import decode_isprs_label
from rsseg.data.synthetic import SYNTHESIZERS, write_synthetic_potsdam
from rsseg.data.synthetic.potsdam import SYNTH_POTSDAM_TILES, erode_label

SMALL = {"2_11": (300, 257), "2_13": (271, 333)}
DIRS = ("2_Ortho_RGB", "5_Labels_all", "5_Labels_all_noBoundary")


def _paths(root: Path, tile: str) -> tuple[Path, Path, Path]:
    stem = f"top_potsdam_{tile}"
    return (root / DIRS[0] / f"{stem}_RGB.tif", root / DIRS[1] / f"{stem}_label.tif",
            root / DIRS[2] / f"{stem}_label_noBoundary.tif")


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_potsdam")
    return root, write_synthetic_potsdam(root, seed=0)


def test_registry():
    assert SYNTHESIZERS["potsdam"] is write_synthetic_potsdam


def test_default_tiles_cover_the_protocol_splits():
    tiles = SYNTH_POTSDAM_TILES
    assert {"2_11", "3_10", "4_10", "6_7", "6_8"} <= tiles.keys()  # UNetFormer train
    assert "2_10" in tiles  # UNetFormer val
    assert len({"2_13", "3_13", "4_14"} & tiles.keys()) >= 2  # official test
    assert "7_10" in tiles  # excluded by the protocol
    sizes = [s for hw in tiles.values() for s in hw]
    assert all(1000 <= s <= 1500 and s % 256 != 0 for s in sizes)
    assert len(set(tiles.values())) == len(tiles)


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    a = write_synthetic_potsdam(tmp_path / "a", seed=3, tiles=SMALL)
    b = write_synthetic_potsdam(tmp_path / "b", seed=3, tiles=SMALL)
    c = write_synthetic_potsdam(tmp_path / "c", seed=4, tiles=SMALL)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert len(a) == 3 * len(SMALL) + 1 and a[-1].name == "README_SYNTHETIC.txt"
    for pa, pb, pc in zip(a, b, c, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        if pa.suffix == ".tif":
            assert pa.read_bytes() != pc.read_bytes(), pa.name
    # the tiles of one dataset differ from each other too
    assert not np.array_equal(read_image(_paths(tmp_path / "a", "2_11")[0])[:257, :257],
                              read_image(_paths(tmp_path / "a", "2_13")[0])[:257, :257])


def test_no_partial_files_left_behind(tmp_path):
    write_synthetic_potsdam(tmp_path, seed=0, tiles=SMALL)
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert not [n for n in names if n.startswith(".") or "tmp" in n]
    assert len(names) == 3 * len(SMALL) + 1


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic_potsdam(tmp_path, tiles={"tile1": (300, 300)})
    with pytest.raises(ValueError):
        write_synthetic_potsdam(tmp_path, seed=-1, tiles=SMALL)


def test_layout_formats_and_labels(default_root):
    root, files = default_root
    assert (root / "README_SYNTHETIC.txt").read_text().startswith("SYNTHETIC")
    assert len(files) == 3 * len(SYNTH_POTSDAM_TILES) + 1
    counts = np.zeros(6, dtype=np.int64)
    for tile, (h, w) in SYNTH_POTSDAM_TILES.items():
        img_p, lab_p, ero_p = _paths(root, tile)
        assert {img_p, lab_p, ero_p} <= set(files)
        image, label, eroded = read_image(img_p), read_image(lab_p), read_image(ero_p)
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)
        assert label.shape == eroded.shape == (h, w, 3)

        full, n_black, n_unknown = decode_isprs_label(label)
        assert n_black == 0 and n_unknown == 0  # full labels: official colours only, no boundary
        ero, n_boundary, n_unknown_e = decode_isprs_label(eroded)
        assert n_unknown_e == 0 and n_boundary > 0
        kept = ero != 255
        assert np.array_equal(eroded[kept], label[kept])  # eroding only blackens pixels
        assert 0.03 < n_boundary / full.size < 0.4
        counts += np.bincount(full.ravel(), minlength=6)[:6]

        with tifffile.TiffFile(img_p) as tif:
            tags = tif.pages[0].tags
            assert tags[33550].value == (0.05, 0.05, 0.0)
            assert 33922 in tags and 34735 in tags
            assert 25832 in tags[34735].value
    freq = counts / counts.sum()
    assert (freq > 0).all(), freq  # every class 0–5 appears
    assert freq.max() < 0.5  # a majority-class predictor scores low mIoU
    assert freq[4] < 0.06 and freq[5] < 0.08  # cars rare, clutter small
    assert min(freq[0], freq[1], freq[2]) > 0.12


def test_erosion_is_a_disk_of_radius_3():
    label = np.zeros((40, 40), dtype=np.uint8)
    label[:, 20:] = 1
    ero = erode_label(label)
    assert (ero[:, 17:23] == 255).all()  # within 3 px of the edge (both sides)
    assert (ero[:, :17] == 0).all() and (ero[:, 23:] == 1).all()
    assert (erode_label(np.full((9, 9), 2, np.uint8)) == 2).all()  # tile borders are not boundaries


def test_colour_is_informative_but_not_sufficient(default_root):
    """A nearest-class-mean colour classifier fitted on one tile transfers above chance, not perfectly."""
    root, _ = default_root

    def load(tile):
        img_p, lab_p, _ = _paths(root, tile)
        mask, _, _ = decode_isprs_label(read_image(lab_p))
        return read_image(img_p)[::3, ::3].reshape(-1, 3).astype(np.float32), mask[::3, ::3].ravel()

    xa, ya = load("2_11")
    xb, yb = load("2_10")
    means = np.stack([xa[ya == c].mean(0) for c in range(6)])
    pred = np.argmin(((xb[:, None, :] - means[None]) ** 2).sum(-1), 1)
    cm = np.bincount(yb * 6 + pred, minlength=36).reshape(6, 6)
    iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
    majority_miou = np.bincount(yb, minlength=6).max() / yb.size / 6
    assert iou.mean() > 2 * majority_miou
    assert np.diag(cm).sum() / cm.sum() < 0.9  # the label is not just a function of the colour
