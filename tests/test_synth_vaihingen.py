"""The synthetic ISPRS Vaihingen: official layout and formats, false colour, determinism, and that the
Vaihingen loader prepares it with zero unknown colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from rsseg.data.core.io import read_image
from rsseg.data.datasets.isprs.labels import decode_isprs_label
from rsseg.data.datasets.vaihingen import PROTOCOLS, VaihingenDataModule, prepare_vaihingen
from rsseg.data.synthetic.vaihingen import SYNTH_VAIHINGEN_AREAS, write_synthetic_vaihingen

SMALL = {"1": (451, 419), "30": (397, 433), "2": (421, 389)}  # one area per UNetFormer split
TINY = {1: (97, 83), 2: (75, 101)}
ERODED_DIR = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"


def paths(root: Path, area: str) -> tuple[Path, Path, Path]:
    name = f"top_mosaic_09cm_area{area}"
    return root / "top" / f"{name}.tif", root / f"{name}.tif", root / ERODED_DIR / f"{name}_noBoundary.tif"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_vaihingen")
    return root, write_synthetic_vaihingen(root, seed=0, tiles=SMALL)


def test_default_areas_cover_the_protocol_splits_with_varying_odd_sizes():
    areas = SYNTH_VAIHINGEN_AREAS
    splits = PROTOCOLS["unetformer"].splits
    assert len(set(areas) & set(splits["train"])) >= 3
    assert "30" in areas and splits["val"] == ("30",)
    assert len(set(areas) & set(splits["test"])) >= 2
    assert set(areas) <= set(splits["train"]) | {"30"} | set(splits["test"])
    sizes = [s for hw in areas.values() for s in hw]
    assert all(600 <= s <= 1100 and s % 2 == 1 for s in sizes)
    assert len(set(areas.values())) == len(areas)


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    a = write_synthetic_vaihingen(tmp_path / "a", seed=3, tiles=TINY)
    b = write_synthetic_vaihingen(tmp_path / "b", seed=3, tiles=TINY)
    c = write_synthetic_vaihingen(tmp_path / "c", seed=4, tiles=TINY)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    expected = [path for area in ("1", "2") for path in paths(tmp_path / "a", area)]
    assert a == [*expected, tmp_path / "a" / "README_SYNTHETIC.txt"]  # per area: image, label, eroded
    for pa, pb, pc in zip(a, b, c, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        if pa.suffix == ".tif":
            assert pa.read_bytes() != pc.read_bytes(), pa.name
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file() and p not in a]  # no leftovers


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="area id"):
        write_synthetic_vaihingen(tmp_path, tiles={"area1": (100, 100)})
    with pytest.raises(ValueError, match="at least 32"):
        write_synthetic_vaihingen(tmp_path, tiles={"1": (100, 20)})
    with pytest.raises(ValueError, match="seed"):
        write_synthetic_vaihingen(tmp_path, seed=-1, tiles=TINY)


def test_layout_formats_labels_and_geotags(small):
    root, files = small
    assert (root / "README_SYNTHETIC.txt").read_text().startswith("SYNTHETIC DATA - NOT ISPRS VAIHINGEN")
    assert len(files) == 3 * len(SMALL) + 1
    counts = np.zeros(6, dtype=np.int64)
    for area, (h, w) in SMALL.items():
        image_p, label_p, eroded_p = paths(root, area)
        assert {image_p, label_p, eroded_p} <= set(files)
        assert image_p.name == label_p.name  # image and full label share the name, as in the real data
        image, label, eroded = read_image(image_p), read_image(label_p), read_image(eroded_p)
        assert image.dtype == np.uint8 and image.shape == (h, w, 3) and label.shape == eroded.shape == (h, w, 3)
        full, n_black, n_unknown = decode_isprs_label(label)
        assert n_black == 0 and n_unknown == 0
        ero, n_boundary, n_unknown_e = decode_isprs_label(eroded)
        assert n_unknown_e == 0 and 0.03 < n_boundary / full.size < 0.4
        kept = ero != 255
        assert np.array_equal(eroded[kept], label[kept])  # eroding only blackens pixels
        counts += np.bincount(full.ravel(), minlength=6)[:6]
        with tifffile.TiffFile(image_p) as tif:
            tags = tif.pages[0].tags
            assert tags[33550].value == (0.09, 0.09, 0.0)
            assert 33922 in tags and 32632 in tags[34735].value
    assert (counts > 0).all(), counts  # every class present


def test_false_colour_puts_bright_near_infrared_vegetation_first(small):
    root, _ = small
    image_p, label_p, _ = paths(root, "1")
    image = read_image(image_p).astype(np.float32)
    mask, _, _ = decode_isprs_label(read_image(label_p))
    vegetation, built = np.isin(mask, (2, 3)), np.isin(mask, (0, 1))
    ir, red = image[..., 0], image[..., 1]
    assert ir[vegetation].mean() > ir[built].mean() + 40  # vegetation is bright in IR
    assert ir[vegetation].mean() > red[vegetation].mean() + 60  # and shows red in the IRRG display


def test_the_vaihingen_loader_prepares_it_with_zero_unknown_colours(small, tmp_path):
    root, _ = small
    manifest = prepare_vaihingen(root, tmp_path / "prepared", patch_size=128, progress=False)
    splits = manifest["splits"]
    assert {s: info["tiles"] for s, info in splits.items()} == {"train": ["1"], "val": ["30"], "test": ["2"]}
    assert all(info["unknown_pixels"] == 0 for info in splits.values())
    assert splits["test"]["boundary_pixels"] > 0 and splits["train"]["boundary_pixels"] == 0
    dm = VaihingenDataModule(str(tmp_path / "prepared"), batch_size=4, num_workers=0, crop_size=96)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, dm.in_channels, 96, 96) and batch["mask"].shape == (4, 96, 96)
