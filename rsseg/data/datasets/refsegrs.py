"""RefSegRS referring segmentation (zhu-xlab RRSIS, TGRS 2024): expressions, masks, tokens, datamodule.

Official layout (``RefSegRS.zip`` from huggingface.co/datasets/JessicaYuan/RefSegRS; the HF preview has
no masks or text, zhu-xlab/rrsis#1; docs/datasets.md §5)::

    root/images/<id>.tif              RGB aerial tile, 512×512
    root/masks/<id>.tif               the referred object's mask, 0 / 255-ish
    root/output_phrase_train.txt      2,172 expressions
    root/output_phrase_val.txt          431
    root/output_phrase_test.txt       1,817

Phrase files: one expression per line, ``<id> <referring expression>``: the id is everything before the
first whitespace and names ``images/<id>.tif`` and ``masks/<id>.tif``; the rest of the line, stripped,
is the sentence. Blank lines are skipped; a line with an id but no sentence, or an id that is not a
plain file name, is a DataError naming the file and line. Lines sharing an id are several sentences for
one object (same image, same mask), grouped in order of first appearance.

Samples (docs/architecture.md, the batch contract): ``image`` float32 3×S×S (ImageNet-normalised), ``mask`` int64 S×S in
{0,1} (no ignore: every pixel is target or not), ``text`` (the raw sentence), ``input_ids`` and
``attention_mask`` int64 of length ``max_tokens``, and ``meta`` with ``id`` (image = object id),
``sentence_index`` (which of the object's sentences), ``num_sentences``, ``line`` (in the phrase file)
and the native ``height``/``width``.

* Masks: foreground = value > 50 (the LAVT-lineage loaders; another uses > 0); RGB-saved masks count a
  pixel when any channel is > 50, and 0/1 masks are kept as they are (``chn6cug.binarise_mask``).
* Resolution: ``image_size=480`` resizes image (bilinear) and mask (nearest) to 480×480 with PIL, as the
  LAVT/RMSIN transforms do, so metrics on ``mask`` follow the LAVT protocol (evaluated at 480², not native).
  ``image_size=None`` keeps the native 512². ``native_mask=True`` adds ``mask_native`` (int64, native size)
  so a task can upsample its logits and score at native resolution while the model still sees 480².
* Tokens: ``transformers.AutoTokenizer`` by hub name or local folder (default ``bert-base-uncased``),
  ``max_tokens=20``, padded with [PAD] and truncated by the tokenizer, so a long sentence keeps its final
  [SEP] (LAVT slices the encoding instead and can drop it; the two agree for every sentence of at most
  ``max_tokens - 2`` word pieces, and RefSegRS expressions are short rule-generated phrases). All sentences
  are tokenised once when the dataset is built, so workers never load the tokenizer.
* Training (``eval_mode=False``): one item per object with one of its sentences drawn at random on each
  access (torch RNG, seeded per worker). Evaluation (``eval_mode=True``): one item per (object, sentence),
  every sentence, so every expression is scored once.
* No geometric augmentation: flips and rotations would contradict "on the left" / "at the top";
  ``augment=True`` only jitters brightness and contrast.

Tokens, resize, sampling and the datamodule are shared with RRSIS-D (``referring.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsseg.data.core.errors import DataError
from rsseg.data.core.io import read_image
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.datasets.chn6cug import binarise_mask
from rsseg.data.datasets.referring import (
    ReferringDataModule,
    ReferringDataset,
    as_rgb,
    load_tokenizer,
    resize_pair,
    tokenize,
)

DATASET = "refsegrs"
CLASSES = ("background", "target")
PALETTE = ((0, 0, 0), (255, 255, 255))
SPLITS = ("train", "val", "test")
MASK_THRESHOLD = 51  # foreground = value > 50, as the LAVT-lineage RefSegRS loaders
PROTOCOL = "official"
_BAD_ID = re.compile(r"[/\\]|^\.\.?$")


def phrase_file(root: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / f"output_phrase_{split}.txt"


def refsegrs_spec(protocol: str = PROTOCOL) -> DatasetSpec:
    """Label and metric convention of RefSegRS: binary target/background, LAVT-style referring metrics."""
    if protocol != PROTOCOL:
        raise ValueError(f"unknown RefSegRS protocol {protocol!r}; the only one is {PROTOCOL!r}")
    return DatasetSpec(
        name=DATASET,
        classes=CLASSES,
        palette=PALETTE,
        protocol=protocol,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(),
        notes={
            "task": "referring segmentation: (image, sentence) -> binary mask of the referred object",
            "splits": "official phrase files: train 2,172 / val 431 / test 1,817 expressions; select on val",
            "labels": "target = mask value > 50 (0/1 masks kept); no ignore pixels",
            "metrics": "per expression: mIoU (IoU = 0 when the union is empty), oIoU = sum I / sum U, Pr@0.5..0.9; "
            "LAVT scores at 480x480 with nearest-resized masks",
        },
    )


# --------------------------------------------------------------------------------------------------
# Phrase files


@dataclass(frozen=True)
class Expression:
    """One line of a phrase file."""

    id: str
    sentence: str
    line: int  # 1-based


@dataclass(frozen=True)
class RefObject:
    """One referred object (image + mask) with all its sentences and their line numbers."""

    id: str
    sentences: tuple[str, ...]
    lines: tuple[int, ...]


def read_phrases(path: str | Path) -> list[Expression]:
    """Parse a phrase file (see the module docstring); DataError names the file and the bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: phrase file not found (RefSegRS.zip has output_phrase_{{train,val,test}}.txt)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error})") from error
    expressions = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # universal newlines, as open()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split(maxsplit=1)
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected '<id> <referring expression>', got {line.strip()!r}")
        ref_id, sentence = fields[0], fields[1].strip()
        if _BAD_ID.search(ref_id):
            raise DataError(f"{path}:{number}: {ref_id!r} is not a plain file id")
        expressions.append(Expression(ref_id, sentence, number))
    if not expressions:
        raise DataError(f"{path}: no expressions (empty phrase file)")
    return expressions


def group_objects(expressions: list[Expression]) -> list[RefObject]:
    """One RefObject per id, sentences in file order, objects in order of first appearance."""
    grouped: dict[str, list[Expression]] = {}
    for expression in expressions:
        grouped.setdefault(expression.id, []).append(expression)
    return [
        RefObject(ref_id, tuple(e.sentence for e in group), tuple(e.line for e in group))
        for ref_id, group in grouped.items()
    ]


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule


class RefSegRSDataset(ReferringDataset):
    """One split of RefSegRS; see the module docstring for the sample, resolution and sampling rules, and
    ``ReferringDataset`` for the options."""

    def list_objects(self) -> list[RefObject]:
        check_root(self.root)
        objects = group_objects(read_phrases(phrase_file(self.root, self.split)))
        self._check_files(objects)
        return objects

    def _check_files(self, objects: list[RefObject]) -> None:
        for obj in objects:
            for path in (self.image_path(obj.id), self.mask_path(obj.id)):
                if not path.is_file():
                    raise DataError(
                        f"{path}: file not found (id {obj.id!r}, {phrase_file(self.root, self.split).name} "
                        f"line {obj.lines[0]})"
                    )

    def image_path(self, ref_id: str) -> Path:
        return self.root / "images" / f"{ref_id}.tif"

    def mask_path(self, ref_id: str) -> Path:
        return self.root / "masks" / f"{ref_id}.tif"

    def read_object(self, obj: RefObject) -> tuple[np.ndarray, np.ndarray]:
        return self.read_pair(obj.id)

    def extra_meta(self, obj: RefObject, sentence_index: int) -> dict[str, Any]:
        return {"line": obj.lines[sentence_index]}

    def read_pair(self, ref_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Native-resolution RGB uint8 image and {0,1} uint8 mask of one object, checked for size."""
        image_path, mask_path = self.image_path(ref_id), self.mask_path(ref_id)
        image = as_rgb(read_image(image_path))  # PIL convert('RGB') of a grey tile
        mask = binarise_mask(read_image(mask_path), MASK_THRESHOLD)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"size mismatch: {image_path} is {image.shape[0]}×{image.shape[1]} but "
                f"{mask_path} is {mask.shape[0]}×{mask.shape[1]}"
            )
        return image, mask


def check_root(root: Path) -> None:
    """Explain the usual wrong roots: a missing folder, the HF preview without masks, a parent folder."""
    if not root.is_dir():
        raise DataError(f"{root}: RefSegRS folder does not exist")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            nested = root / "RefSegRS"
            hint = (
                f"; the dataset seems to be in {nested}, use that as root"
                if (nested / sub).is_dir()
                else "; download RefSegRS.zip (the Hugging Face preview has no masks or text, zhu-xlab/rrsis#1)"
            )
            raise DataError(f"{root / sub}: folder not found{hint}")



class RefSegRSDataModule(ReferringDataModule):
    """RefSegRS for fit/validate/test/predict, read straight from the official layout (no preparation).

    Training draws one sentence per object per epoch; val/test/predict score every expression.
    ``image_size=480`` is the LAVT protocol (None: native 512²); ``native_masks=True`` adds ``mask_native``
    to evaluation samples for native-resolution metrics. Model selection uses val, never test (zhu-xlab
    ``train.py`` selects on test). ``augment`` only jitters brightness/contrast (see the module docstring).
    ``predict_split`` ("test", "val" or "train") is scored like val/test: every expression, no jitter.
    Options: ``rsseg.data.datasets.referring.ReferringDataModule``.
    """

    default_protocol = PROTOCOL
    dataset_class = RefSegRSDataset
    splits = SPLITS

    def make_spec(self, protocol: str) -> DatasetSpec:
        return refsegrs_spec(protocol)


__all__ = [
    "MASK_THRESHOLD",
    "RefSegRSDataModule",
    "RefSegRSDataset",
    "group_objects",
    "load_tokenizer",
    "read_phrases",
    "refsegrs_spec",
    "resize_pair",
    "tokenize",
]
