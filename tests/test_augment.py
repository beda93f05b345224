"""Training augmentation from a config (rsseg.data.core.augment): GeoSeg's random scale, smart crop and
mosaic, every config form, the unchanged defaults of each dataset kind, the datamodule wiring, and the
coarse map following the mask through the new steps."""

from __future__ import annotations

import albumentations as A
import lightning
import numpy as np
import pytest
import torch
from scipy.ndimage import minimum_filter
from torch.utils.data import Dataset, default_collate

from rsseg.data import (
    CHN6CUGDataModule,
    CoarseMapDataModule,
    LoveDADataModule,
    PotsdamDataModule,
    RefSegRSDataModule,
    RRSISDDataModule,
    UAVidDataModule,
)
from rsseg.data.core.augment import (
    GEOSEG_SCALES,
    GeoSegRandomScale,
    GeoSegSmartCrop,
    MosaicMixin,
    build_train_transform,
    resolve_steps,
)
from rsseg.data.core.io import write_png
from rsseg.data.core.transforms import seeded_compose
from rsseg.data.datasets.chn6cug import CHN6CUGDataset
from rsseg.data.datasets.loveda import LoveDADataset
from rsseg.data.datasets.potsdam import PotsdamDataset
from rsseg.data.datasets.uavid.datamodule import UAVidDataset
from rsseg.data.datasets.uavid.prepare import prepare_uavid
from rsseg.data.refinement.coarse import CoarseMapDataset
from tests.data.chn6cug.data import write_chn6cug
from tests.data.loveda.data import write_loveda
from tests.data.uavid.data import write_uavid

IGNORE = 255
PALETTE = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)], np.uint8)
LOADER = {"num_workers": 0, "pin_memory": False, "persistent_workers": False}


def blocks(height: int, width: int) -> np.ndarray:
    """An asymmetric layout of four classes in blocks of 16 px, so flips or transposes show."""
    rows, cols = np.arange(height)[:, None] // 16, np.arange(width)[None, :] // 16
    return ((rows + 2 * cols + rows * cols) % 4).astype(np.uint8)


def run(transform: A.BasicTransform, seed: int, **targets: np.ndarray) -> dict[str, np.ndarray]:
    compose = A.Compose([transform], seed=seed)
    return compose(**targets)


# --------------------------------------------------------------------------------------------------
# random_scale (GeoSeg transform.py::RandomScale)


def test_random_scale_draws_each_scale_resizes_exactly_and_keeps_labels_and_alignment():
    mask = blocks(48, 64)
    image = PALETTE[mask]
    seen = set()
    for seed in range(40):
        out = run(GeoSegRandomScale(), seed, image=image, mask=mask)
        (scale,) = [s for s in GEOSEG_SCALES if int(s * 48) == out["mask"].shape[0]]
        seen.add(scale)
        assert out["mask"].shape == out["image"].shape[:2] == (int(scale * 48), int(scale * 64))
        assert set(np.unique(out["mask"])) <= set(np.unique(mask))  # nearest: no new labels
        # away from block edges (where bicubic blends colours), the colour is the label's colour
        label, colour = out["mask"], out["image"].astype(int)
        interior = (minimum_filter(label, 7) == label) & (minimum_filter(-label.astype(int), 7) == -label)
        assert interior.mean() > 0.05  # the check below covers a fair share of pixels
        assert np.abs(colour[interior] - PALETTE[label[interior]].astype(int)).max() <= 1
    assert seen == set(GEOSEG_SCALES)  # uniform over the list: all four drawn


def test_random_scale_moves_an_extra_mask_target_like_the_mask():
    mask = blocks(40, 40)
    compose = A.Compose([GeoSegRandomScale(scales=[0.5, 1.5])], seed=3, additional_targets={"coarse": "mask"})
    out = compose(image=PALETTE[mask], mask=mask, coarse=mask.copy())
    assert np.array_equal(out["coarse"], out["mask"]) and out["mask"].shape != (40, 40)


# --------------------------------------------------------------------------------------------------
# smart_crop (GeoSeg transform.py::SmartCropV1)


def positions(height: int, width: int) -> np.ndarray:
    """An image whose pixels hold their own (y, x), to see which window a crop took."""
    y, x = np.mgrid[:height, :width]
    return np.stack([y, x, np.zeros_like(y)], axis=-1).astype(np.uint8)


def test_smart_crop_finds_a_balanced_crop_where_most_crops_are_one_class():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 27:36] = 1  # a road 9 px wide: most 24² crops hold less than a quarter of it
    crop = GeoSegSmartCrop(24, max_ratio=0.75)
    windows = [mask[y : y + 24, x : x + 24] for y in range(41) for x in range(41)]
    assert np.mean([crop.balanced(w) for w in windows]) < 0.5  # a plain random crop mostly fails
    for seed in range(20):
        out = run(GeoSegSmartCrop(24, max_ratio=0.75), seed, image=positions(64, 64), mask=mask)
        counts = np.bincount(out["mask"].ravel(), minlength=2)
        assert out["mask"].shape == (24, 24) and counts.max() / counts.sum() < 0.75
        y0, x0 = out["image"][0, 0, :2]
        assert np.array_equal(out["image"][..., 0], y0 + np.arange(24)[:, None] + 0 * np.arange(24))
        assert np.array_equal(out["image"][..., 1], x0 + np.arange(24)[None, :] + 0 * np.arange(24)[:, None])
        assert np.array_equal(out["mask"], mask[y0 : y0 + 24, x0 : x0 + 24])  # image and mask aligned


@pytest.mark.parametrize(("mask", "tries", "expected"), [
    (np.zeros((40, 40), np.uint8), 11, 11),  # never balanced: GeoSeg stops after its 11th crop (count > 10)
    (np.zeros((40, 40), np.uint8), 3, 3),
    (np.full((40, 40), IGNORE, np.uint8), 11, 11),  # ignore is not a class
    (np.indices((40, 40)).sum(axis=0).astype(np.uint8) % 2, 11, 1),  # a checkerboard: the first crop is fine
])
def test_smart_crop_retry_limit(mask, tries, expected):
    crop = GeoSegSmartCrop(16, max_tries=tries)
    calls = []
    check = crop.balanced
    crop.balanced = lambda window: calls.append(1) or check(window)
    run(crop, 0, image=positions(40, 40), mask=mask)
    assert len(calls) == expected


def test_smart_crop_pads_a_small_input_as_geoseg_does():
    mask = np.ones((20, 20), np.uint8)
    image = np.full((20, 20, 3), 7, np.uint8)
    out = run(GeoSegSmartCrop(24), 0, image=image, mask=mask)  # padded by (24 - 20) // 2 + 1 = 3 a side: 26²
    assert out["mask"].shape == (24, 24)
    assert np.array_equal(out["mask"] == IGNORE, out["image"][..., 0] == 0)
    assert (out["mask"] == IGNORE).sum() == 24 * 24 - 20 * 20  # any 24² window of the 26² pad holds all 20²
    assert set(np.unique(out["mask"])) == {1, IGNORE}


# --------------------------------------------------------------------------------------------------
# mosaic (GeoSeg potsdam_dataset.py::load_mosaic_img_and_mask)


class Toy(MosaicMixin, Dataset):
    """Sample i: label i everywhere, colour ``(40 i, y, x)`` (where in the sample a pixel came from)."""

    def __init__(self, n: int = 6, size: tuple[int, int] = (40, 48), mosaic_ratio: float = 1.0) -> None:
        self.n, self.size, self.mosaic_ratio = n, size, mosaic_ratio

    def __len__(self) -> int:
        return self.n

    def sample_id(self, index: int) -> str:
        return f"s{index}"

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = positions(*self.size)
        image[..., 2] = 40 * index
        return image, np.full(self.size, index, np.uint8)


def test_mosaic_is_four_windows_of_four_samples_meeting_at_one_point():
    toy = Toy()
    for seed in range(50):  # the three others are drawn with replacement: take a seed where all differ
        torch.manual_seed(seed)
        image, mask, meta = toy.training_pair(2)
        if len(set(meta["mosaic_ids"])) == 4:
            break
    assert len(set(meta["mosaic_ids"])) == 4
    assert meta["mosaic"] is True and meta["mosaic_ids"][0] == "s2"
    assert mask.shape == image.shape[:2] == (40, 48)
    cx = int(np.argmax(mask[0] != mask[0, 0]))
    cy = int(np.argmax(mask[:, 0] != mask[0, 0]))
    assert 40 // 4 <= cy <= 40 - 40 // 4 and 48 // 4 <= cx <= 48 - 48 // 4
    quadrants = [(slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, 48)),
                 (slice(cy, 40), slice(0, cx)), (slice(cy, 40), slice(cx, 48))]
    for (rows, cols), sample_id in zip(quadrants, meta["mosaic_ids"], strict=True):
        piece, colour = mask[rows, cols], image[rows, cols]
        label = int(sample_id[1:])
        assert (piece == label).all() and (colour[..., 2] == 40 * label).all()  # aligned with the mask
        h, w = piece.shape  # a contiguous window of that sample
        assert np.array_equal(colour[..., 0], colour[0, 0, 0] + np.arange(h)[:, None] + 0 * np.arange(w))
        assert np.array_equal(colour[..., 1], colour[0, 0, 1] + np.arange(w)[None, :] + 0 * np.arange(h)[:, None])
        assert colour[-1, -1, 0] < 40 and colour[-1, -1, 1] < 48


def test_mosaic_is_reproducible_and_ratio_zero_never_mosaics_nor_draws():
    toy = Toy()
    torch.manual_seed(7)
    first = toy.training_pair(1)
    torch.manual_seed(7)
    second = toy.training_pair(1)
    assert np.array_equal(first[0], second[0]) and first[2] == second[2]

    plain = Toy(mosaic_ratio=0.0)
    state = torch.get_rng_state()
    image, mask, meta = plain.training_pair(1)
    assert torch.equal(state, torch.get_rng_state()) and meta == {}  # the default stream is untouched
    assert (mask == 1).all()


def test_mosaic_ratio_half_mixes_both_with_one_meta_schema():
    toy = Toy(mosaic_ratio=0.5)
    torch.manual_seed(0)
    metas = [toy.training_pair(i % 6)[2] for i in range(40)]
    kinds = [meta["mosaic"] for meta in metas]
    assert 5 < sum(kinds) < 35
    assert all(meta.keys() == {"mosaic", "mosaic_ids"} and len(meta["mosaic_ids"]) == 4 for meta in metas)
    batch = default_collate(metas)
    assert batch["mosaic"].tolist() == kinds


# --------------------------------------------------------------------------------------------------
# config forms


def kinds(steps, **kwargs) -> list[tuple[str, float]]:
    return [(type(t).__name__, t.p) for t in resolve_steps(steps, kwargs.pop("crop_size", 32), **kwargs)]


def test_every_config_form_builds_its_transforms():
    assert kinds(["flips", "rot90", "hflip"]) == [
        ("HorizontalFlip", 0.5), ("VerticalFlip", 0.5), ("RandomRotate90", 1.0), ("HorizontalFlip", 0.5)]
    assert kinds(["d4"]) == kinds(["flips", "rot90"])
    assert kinds([{"recipe": "rot90", "p": 0.5}]) == [("RandomRotate90", 0.5)]
    (scale,) = resolve_steps([{"recipe": "random_scale", "scales": [0.5, 1.0, 2.0]}], 32)
    assert isinstance(scale, GeoSegRandomScale) and scale.scales == (0.5, 1.0, 2.0)
    (smart,) = resolve_steps([{"recipe": "smart_crop", "size": 512, "max_ratio": 0.6}], None, ignore_index=6)
    assert isinstance(smart, GeoSegSmartCrop) and (smart.size, smart.max_ratio, smart.ignore_index) == (512, 0.6, 6)
    assert resolve_steps(["smart_crop"], 48)[0].size == 48 and resolve_steps(["smart_crop"], 48)[0].max_tries == 11
    (crop,) = resolve_steps(["random_crop"], 40, ignore_index=7)
    assert isinstance(crop, A.RandomCrop) and (crop.height, crop.width, crop.fill_mask, crop.pad_if_needed) == (
        40, 40, 7, True)
    (jitter,) = resolve_steps(["photometric"], 32)  # GeoSeg uavid/loveda get_training_transform
    assert isinstance(jitter, A.RandomBrightnessContrast) and jitter.p == 0.25
    assert tuple(jitter.brightness_limit) == (-0.25, 0.25) and tuple(jitter.contrast_limit) == (-0.25, 0.25)
    assert kinds([{"__class_fullname__": "HorizontalFlip", "p": 0.3}]) == [("HorizontalFlip", 0.3)]
    assert kinds([A.to_dict(A.VerticalFlip(p=0.2))["transform"]]) == [("VerticalFlip", 0.2)]
    class_path = {"class_path": "albumentations.HorizontalFlip", "init_args": {"p": 0.2}}
    assert kinds([class_path]) == [("HorizontalFlip", 0.2)]
    assert kinds(["random_scale", "default"]) == [
        ("GeoSegRandomScale", 1.0), ("RandomCrop", 1.0), ("HorizontalFlip", 0.5), ("VerticalFlip", 0.5),
        ("RandomRotate90", 1.0)]
    assert kinds(["default"], augment=False) == [("RandomCrop", 1.0)]  # augment=False: no flips in the default
    assert kinds(["flips"], augment=False) == [("HorizontalFlip", 0.5), ("VerticalFlip", 0.5)]  # asked for
    assert kinds(None, crop_size=None, augment=False) == [] and build_train_transform([], 32) is None


@pytest.mark.parametrize(("steps", "named"), [
    (["nope"], "nope"),
    ([{"recipe": "warp"}], "warp"),
    ([{"recipe": "random_scale", "bogus": 1}], "bogus"),
    ([{"class_path": "torch.nn.Linear", "init_args": {}}], "torch.nn.Linear"),
    ([{"class_path": "albumentations.Compose"}], "albumentations.Compose"),
    ([{"class_path": "albumentations.NoSuchThing"}], "NoSuchThing"),
    ([{"__class_fullname__": "NoSuchThing", "p": 1.0}], "NoSuchThing"),
    ([{"p": 0.5}], "'p'"),
    ([3], "3"),
    ("flips", "flips"),
])
def test_bad_items_are_value_errors_naming_them_and_the_recipes(steps, named):
    with pytest.raises(ValueError, match=named) as error:
        resolve_steps(steps, 32)
    if steps != "flips":
        assert "random_scale" in str(error.value) and "smart_crop" in str(error.value)


def test_crops_without_a_size_say_how_to_give_one():
    with pytest.raises(ValueError, match="smart_crop needs a size"):
        resolve_steps(["smart_crop"], None)
    with pytest.raises(ValueError, match="random_crop needs a size"):
        resolve_steps(["random_crop"], None)


# --------------------------------------------------------------------------------------------------
# defaults unchanged, dataset by dataset


def old_nadir(crop: int | None, augment: bool) -> A.Compose:
    """Today's ``transforms.train_transform`` before recipes, written out."""
    steps = [A.RandomCrop(crop, crop, pad_if_needed=True, fill=0, fill_mask=IGNORE)] if crop else []
    return seeded_compose(steps + ([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
                                   if augment else []))


def old_uavid(crop: int) -> A.Compose:
    """Today's ``uavid_train_transform``, written out."""
    return seeded_compose([A.RandomCrop(crop, crop, pad_if_needed=True, fill=0, fill_mask=IGNORE),
                           A.HorizontalFlip(p=0.5)])


@pytest.fixture(scope="module")
def roots(tmp_path_factory, tiny_potsdam):
    work = tmp_path_factory.mktemp("augment")
    write_loveda(work / "loveda")
    write_chn6cug(work / "chn6cug")
    write_uavid(work / "uavid_raw" / "uavid_v1.5_official_release_image")
    with pytest.warns(Warning):
        prepare_uavid(work / "uavid_raw", work / "uavid", patch_size=32, stride=24, progress=False)
    return {"potsdam": tiny_potsdam, "loveda": work / "loveda", "chn6cug": work / "chn6cug", "uavid": work / "uavid"}


CASES = {
    "potsdam": (PotsdamDataModule, 48, True, lambda root, t: PotsdamDataset(root, "train", transform=t)),
    "potsdam_no_augment": (PotsdamDataModule, 48, False, lambda root, t: PotsdamDataset(root, "train", transform=t)),
    "loveda": (LoveDADataModule, 24, True, lambda root, t: LoveDADataset(root, "train", transform=t)),
    "chn6cug": (CHN6CUGDataModule, 32, True, lambda root, t: CHN6CUGDataset(root, "train", transform=t)),
}


def samples(dataset: Dataset, n: int = 5, repeats: int = 3) -> list[dict]:
    return [dataset[i % len(dataset)] for i in range(n * repeats)]


def assert_same(new: list[dict], old: list[dict]) -> None:
    for a, b in zip(new, old, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["meta"] == b["meta"]


@pytest.mark.parametrize("case", CASES)
def test_default_pipeline_is_todays_for_each_nadir_dataset(roots, case):
    cls, crop, augment, plain = CASES[case]
    root = roots[case.split("_")[0]]
    data = cls(str(root), batch_size=2, crop_size=crop, augment=augment, **LOADER)
    torch.manual_seed(0)
    data.setup("fit")
    torch.manual_seed(0)
    reference = plain(root, old_nadir(crop, augment))
    assert_same(samples(data.train_dataset), samples(reference))
    assert "mosaic" not in data.train_dataset[0]["meta"]


def test_default_pipeline_is_todays_for_uavid(roots):
    data = UAVidDataModule(str(roots["uavid"]), batch_size=2, crop_size=24, **LOADER)
    torch.manual_seed(0)
    data.setup("fit")
    torch.manual_seed(0)
    reference = UAVidDataset(roots["uavid"], "train", transform=old_uavid(24))
    assert_same(samples(data.train_dataset), samples(reference))
    assert [type(t).__name__ for t in data.train_dataset.transform] == ["RandomCrop", "HorizontalFlip"]


# --------------------------------------------------------------------------------------------------
# datamodules


def test_fit_with_random_scale_default_and_mosaic_yields_reproducible_batches(roots):
    def batch():
        lightning.seed_everything(3)
        data = PotsdamDataModule(str(roots["potsdam"]), batch_size=2, crop_size=64, mosaic_ratio=1.0,
                                 train_transforms=["random_scale", "default"], **LOADER)
        data.setup("fit")
        return next(iter(data.train_dataloader()))

    first, second = batch(), batch()
    assert first["image"].shape == (2, 3, 64, 64) and first["mask"].shape == (2, 64, 64)
    assert first["meta"]["mosaic"].tolist() == [True, True]
    assert len(first["meta"]["mosaic_ids"]) == 4 and list(first["meta"]["mosaic_ids"][0]) == list(first["meta"]["id"])
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])


@pytest.mark.parametrize("cls", [LoveDADataModule, CHN6CUGDataModule, UAVidDataModule])
def test_mosaic_reaches_every_semantic_datamodule(roots, cls):
    name = {LoveDADataModule: "loveda", CHN6CUGDataModule: "chn6cug", UAVidDataModule: "uavid"}[cls]
    data = cls(str(roots[name]), batch_size=2, crop_size=24, mosaic_ratio=1.0, train_transforms=["smart_crop"],
               **LOADER)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["meta"]["mosaic"].tolist() == [True, True]


def test_datamodule_options_are_checked_at_construction(roots):
    root = str(roots["potsdam"])
    with pytest.raises(ValueError, match="nope"):
        PotsdamDataModule(root, train_transforms=["nope"])
    for ratio in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="mosaic_ratio"):
            PotsdamDataModule(root, mosaic_ratio=ratio)
    for referring in (RefSegRSDataModule, RRSISDDataModule):
        with pytest.raises(ValueError, match="on the left"):
            referring(root, mosaic_ratio=0.5)
        with pytest.raises(ValueError, match="on the left"):
            referring(root, train_transforms=["photometric"])


# --------------------------------------------------------------------------------------------------
# coarse maps (IDGBR's training data)

FILL = 3


def test_coarse_map_follows_the_mask_through_random_scale_and_smart_crop(roots, tmp_path):
    dataset = PotsdamDataset(roots["potsdam"], "train")
    for index in range(len(dataset)):
        mask = dataset[index]["mask"].numpy().astype(np.uint8)
        write_png(tmp_path / f"{dataset.sample_id(index)}.png", np.where(mask == IGNORE, FILL, mask).astype(np.uint8))
    dataset.transform = build_train_transform(["random_scale", {"recipe": "smart_crop", "size": 96}, "d4"], None)
    wrapped = CoarseMapDataset(dataset, tmp_path, 6, "hint")
    torch.manual_seed(0)
    for index in range(len(dataset)):
        sample = wrapped[index]
        mask, coarse = sample["mask"], sample["coarse"]
        assert mask.shape == coarse.shape == (96, 96)
        labelled = mask != IGNORE
        assert torch.equal(coarse[labelled], mask[labelled])
        assert set(coarse[~labelled].unique().tolist()) <= {FILL, IGNORE}


def test_coarse_maps_refuse_mosaic(roots, tmp_path):
    with pytest.raises(ValueError, match="mosaic"):
        CoarseMapDataModule(PotsdamDataModule(str(roots["potsdam"]), mosaic_ratio=0.5), "gt")
    dataset = PotsdamDataset(roots["potsdam"], "train")
    dataset.mosaic_ratio = 0.5
    with pytest.raises(ValueError, match="mosaic"):
        CoarseMapDataset(dataset, tmp_path, 6, "hint")
