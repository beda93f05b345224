"""The synthetic UAVid: release layout and formats, determinism, class mapping, and that the UAVid
loader reads it with zero unknown colours."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsseg.data.core.errors import DataWarning
from rsseg.data.core.io import read_image
from rsseg.data.datasets.uavid.datamodule import UAVidDataModule
from rsseg.data.datasets.uavid.labels import decode_uavid_label
from rsseg.data.datasets.uavid.prepare import prepare_uavid
from rsseg.data.synthetic.scene import MATERIAL_NAMES
from rsseg.data.synthetic.uavid import MATERIAL_UAVID_CLASS, write_synthetic_uavid

SIZE = (216, 384)  # 2160×3840 / 10
# classes by index, typed in from the UAVidToolKit table (docs/datasets.md §2.2)
CLUTTER, BUILDING, ROAD, STATIC_CAR, TREE, LOW_VEGETATION, HUMAN, MOVING_CAR = range(8)
EXPECTED_FRAMES = [
    ("uavid_train", "seq1", "000000"), ("uavid_train", "seq1", "000100"),
    ("uavid_val", "seq16", "000000"), ("uavid_val", "seq16", "000100"),
    ("uavid_test", "seq21", "000000"), ("uavid_test", "seq21", "000100"),
]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_uavid")
    return root, write_synthetic_uavid(root, seed=0, frame_size=SIZE, sequences=(1, 1, 1), frames_per_seq=2)


def labelled(root: Path):
    for folder, seq, frame in EXPECTED_FRAMES:
        if folder != "uavid_test":
            mask, n_unknown = decode_uavid_label(read_image(root / folder / seq / "Labels" / f"{frame}.png"))
            yield (folder, seq, frame), mask, n_unknown


def test_release_layout_formats_and_readme(synth):
    root, files = synth
    expected = []
    for folder, seq, frame in EXPECTED_FRAMES:
        expected.append(root / folder / seq / "Images" / f"{frame}.png")
        if folder != "uavid_test":
            expected.append(root / folder / seq / "Labels" / f"{frame}.png")
    assert files == [*expected, root / "README_SYNTHETIC.txt"]
    assert sorted(p for p in root.rglob("*") if p.is_file()) == sorted(files)  # no temporary leftovers
    assert not (root / "uavid_test" / "seq21" / "Labels").exists()
    assert (root / "README_SYNTHETIC.txt").read_text().startswith("SYNTHETIC DATA - NOT UAVid")
    for path in expected:
        array = read_image(path)
        assert array.dtype == np.uint8 and array.shape == (*SIZE, 3), path


def test_labels_use_official_colours_only_and_every_class_appears(synth):
    root, _ = synth
    counts = np.zeros(8, np.int64)
    for key, mask, n_unknown in labelled(root):
        assert n_unknown == 0, key
        per_frame = np.bincount(mask.ravel(), minlength=256)
        assert per_frame[8:].sum() == 0
        assert per_frame[HUMAN] > 0 and per_frame[STATIC_CAR] > 0 and per_frame[MOVING_CAR] > 0, key
        counts += per_frame[:8]
    freq = counts / counts.sum()
    assert (freq > 0).all(), freq
    assert freq.max() < 0.45  # a majority-class predictor scores a low mIoU
    assert freq[HUMAN] < 0.01 and freq[STATIC_CAR] + freq[MOVING_CAR] < 0.08  # small things stay small


def test_materials_map_to_uavid_classes():
    cls = dict(zip(MATERIAL_NAMES, MATERIAL_UAVID_CLASS.tolist(), strict=True))
    assert cls["asphalt"] == ROAD and cls["roof"] == BUILDING and cls["tree"] == TREE
    assert cls["lawn"] == cls["verge"] == LOW_VEGETATION
    assert {cls[m] for m in ("sidewalk", "yard", "parking lot", "soil", "rubble", "water", "bin")} == {CLUTTER}


def test_moving_cars_are_on_the_road_and_static_cars_are_not(synth):
    """Motion is a matter of context: the ring around a moving car is road, around a static car not."""
    root, _ = synth
    kernel = np.ones((7, 7), np.uint8)
    for key, mask, _ in labelled(root):
        for cls, on_road in ((MOVING_CAR, True), (STATIC_CAR, False)):
            count, components = cv2.connectedComponents((mask == cls).astype(np.uint8), connectivity=8)
            for index in range(1, count):
                car = components == index
                ring = cv2.dilate(car.astype(np.uint8), kernel).astype(bool) & ~np.isin(mask, (STATIC_CAR, MOVING_CAR))
                if ring.sum() < 10:
                    continue  # a sliver at the frame edge
                road_share = np.mean(mask[ring] == ROAD)
                assert (road_share > 0.5) == on_road, (key, cls, index, road_share)


def test_the_uavid_loader_reads_it_without_unknown_colours(synth, tmp_path):
    root, _ = synth
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        manifest = prepare_uavid(root, tmp_path / "prepared", patch_size=128, progress=False)
    splits = manifest["splits"]
    assert [splits[s]["num_frames"] for s in ("train", "val", "test")] == [2, 2, 2]
    assert splits["train"]["unknown_pixels"] == splits["val"]["unknown_pixels"] == 0
    assert manifest["nonstandard_sequences"] == {}  # seq1 / seq16 / seq21 are where the release puts them
    dm = UAVidDataModule(str(tmp_path / "prepared"), batch_size=2, num_workers=0, crop_size=96)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 96, 96) and batch["mask"].max() <= 255


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    kwargs = dict(frame_size=(96, 160), sequences=(1, 0, 1), frames_per_seq=1)
    a = write_synthetic_uavid(tmp_path / "a", seed=5, **kwargs)
    b = write_synthetic_uavid(tmp_path / "b", seed=5, **kwargs)
    c = write_synthetic_uavid(tmp_path / "c", seed=6, **kwargs)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert len(a) == 4 and not (tmp_path / "a" / "uavid_val").exists()
    for pa, pb, pc in zip(a, b, c, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa
        if pa.suffix == ".png":
            assert pa.read_bytes() != pc.read_bytes(), pa
    # frames differ from each other too
    train, test = (read_image(p) for p in a if p.parent.name == "Images")
    assert not np.array_equal(train, test)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"frame_size": (32, 384)},
        {"sequences": (0, 1, 1)},
        {"sequences": (21, 1, 1)},
        {"sequences": (1, 1)},
        {"frames_per_seq": 11},
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_uavid(tmp_path, **kwargs)
    assert not list(tmp_path.rglob("*.png"))
