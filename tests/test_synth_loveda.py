"""The synthetic LoveDA: official layout and encoding, determinism, no-data borders, and that the
LoveDA loader reads it with every class present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsseg.data.datasets.loveda import LoveDADataModule, LoveDADataset
from rsseg.data.synthetic.loveda import write_synthetic_loveda

PER_SPLIT, SIZE = (4, 2, 2), 256
# split/scene -> ids: consecutive over Train, Val, Test; Rural before Urban (worked out by hand)
EXPECTED_IDS = {
    ("Train", "Rural"): [0, 1],
    ("Train", "Urban"): [2, 3],
    ("Val", "Rural"): [4],
    ("Val", "Urban"): [5],
    ("Test", "Rural"): [6],
    ("Test", "Urban"): [7],
}
AGRICULTURE = 6


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_loveda")
    return root, write_synthetic_loveda(root, seed=0, per_split=PER_SPLIT, size=SIZE)


def read(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.array(image)


def test_official_layout_names_and_returned_files(synth):
    root, files = synth
    expected = []
    for (split, scene), ids in sorted(EXPECTED_IDS.items(), key=lambda item: item[1][0]):
        for i in ids:
            expected.append(root / split / scene / "images_png" / f"{i}.png")
            if split != "Test":
                expected.append(root / split / scene / "masks_png" / f"{i}.png")
    expected.append(root / "README_SYNTHETIC.txt")
    assert files == expected
    on_disk = sorted(p for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(expected)  # nothing else: no Test masks, no temporary files
    assert not (root / "Test" / "Urban" / "masks_png").exists()
    assert (root / "README_SYNTHETIC.txt").read_text().startswith("SYNTHETIC DATA - NOT LOVEDA")


def test_images_are_rgb_and_masks_hold_raw_values_with_black_no_data_borders(synth):
    root, _ = synth
    for (split, scene), ids in EXPECTED_IDS.items():
        for i in ids:
            mode, image = read(root / split / scene / "images_png" / f"{i}.png")
            assert mode == "RGB" and image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            if split == "Test":
                continue
            mode, raw = read(root / split / scene / "masks_png" / f"{i}.png")
            assert mode == "L" and raw.shape == (SIZE, SIZE)
            assert raw.max() <= 7
            nodata = raw == 0
            if i % 2 == 0:  # even ids have a no-data border: pure black pixels, raw 0
                assert 0.01 < nodata.mean() < 0.2
                assert (image[nodata] == 0).all()
            else:
                assert not nodata.any()


def test_loader_reads_it_and_every_class_appears(synth):
    root, _ = synth
    counts = {}
    for scene in ("Urban", "Rural"):
        dataset = LoveDADataset(root, "trainval", scenes=(scene,))  # strict: a value above 7 would raise
        masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
        counts[scene] = np.bincount(masks.ravel(), minlength=256)
    total = counts["Urban"] + counts["Rural"]
    frequency = total[:7] / total[:7].sum()
    assert (frequency > 0.005).all(), frequency  # all seven classes, none negligible
    assert frequency.max() < 0.5
    assert counts["Urban"][AGRICULTURE] == 0 < counts["Rural"][AGRICULTURE]  # lawns are farmland only in Rural
    assert total[255] > 0  # no-data is ignore
    assert set(np.flatnonzero(total)) <= set(range(7)) | {255}


def test_datamodule_runs_every_stage_but_test(synth):
    root, _ = synth
    dm = LoveDADataModule(str(root), batch_size=2, num_workers=0, crop_size=128, pin_memory=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 128, 128) and batch["mask"].shape == (2, 128, 128)
    assert len(dm.val_dataset) == 2
    dm.setup("predict")
    assert [s.id for s in dm.predict_dataset.samples] == ["6", "7"]


def test_colour_is_informative_but_not_sufficient(synth):
    """A nearest-class-mean colour classifier fitted on Train transfers to Val above chance, not perfectly."""
    root, _ = synth

    def pixels(split):
        dataset = LoveDADataset(root, split)
        xs, ys = [], []
        for sample in dataset.samples:
            _, image = read(sample.image)
            _, raw = read(sample.mask)
            keep = raw[::2, ::2].ravel() > 0
            xs.append(image[::2, ::2].reshape(-1, 3)[keep].astype(np.float32))
            ys.append(raw[::2, ::2].ravel()[keep].astype(np.int64) - 1)
        return np.concatenate(xs), np.concatenate(ys)

    xa, ya = pixels("train")
    xb, yb = pixels("val")
    means = np.stack([xa[ya == c].mean(0) for c in range(7)])
    pred = np.argmin(((xb[:, None, :] - means[None]) ** 2).sum(-1), 1)
    cm = np.bincount(yb * 7 + pred, minlength=49).reshape(7, 7)
    present = cm.sum(1) > 0
    iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
    majority_miou = np.bincount(yb, minlength=7).max() / yb.size / present.sum()
    assert iou[present].mean() > 2 * majority_miou
    assert np.diag(cm).sum() / cm.sum() < 0.9  # the label is not just a function of the colour


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    tiny = {"per_split": (2, 2, 2), "size": 64}
    a = write_synthetic_loveda(tmp_path / "a", seed=3, **tiny)
    b = write_synthetic_loveda(tmp_path / "b", seed=3, **tiny)
    c = write_synthetic_loveda(tmp_path / "c", seed=4, **tiny)
    assert len(a) == 6 + 4 + 1  # 6 images, 4 masks (Train, Val), README
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for pa, pb, pc in zip(a, b, c, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa
        if pa.parent.name == "images_png":
            assert pa.read_bytes() != pc.read_bytes(), pa
    assert read(a[0])[1].shape == (64, 64, 3)
    # the images of one dataset differ from each other too
    assert a[0].read_bytes() != (tmp_path / "a" / "Train" / "Urban" / "images_png" / "1.png").read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [{"per_split": (1, 2, 2)}, {"per_split": (4, 2)}, {"size": 32}, {"seed": -1}, {"size": 100.5}],
)
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_loveda(tmp_path, **kwargs)
