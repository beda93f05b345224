"""RRSIS-D referring segmentation (Liu et al., RMSIN, CVPR 2024): refs, COCO masks, tokens, datamodule.

Official layout (RMSIN ``README.md``; download from its Google Drive or Baidu Netdisk links)::

    root/rrsisd/refs(unc).p                  the referring expressions (a pickled list of dicts)
    root/rrsisd/instances.json               COCO images and annotations (the masks)
    root/images/rrsisd/JPEGImages/<file>     800×800 images, named by instances.json ``file_name``
    root/images/rrsisd/ann_split/            RSVGD XML boxes: not read (the loader never opens them)

How RMSIN reads it (``refer/refer.py`` ``REFER(data_root, 'rrsisd', 'unc')``, ``data/dataset_refer_bert.py``):

* ``refs(unc).p``: a list of refs ``{ref_id, ann_id, image_id, split, sentences: [{raw, sent, tokens,
  sent_id}, …], sent_ids, category_id, …}``. Split ``train``/``val`` keeps refs whose ``split`` equals
  it, ``test`` every ref whose ``split`` contains "test" (``REFER.getRefIds``); refs in file order.
  It is read with a restricted unpickler (``rsseg.data.core.plain_pickle``): plain containers only.
* Image: ``images/rrsisd/JPEGImages/<images[image_id].file_name>``, converted to RGB here (RMSIN
  ``Image.open`` without conversion).
* Mask: the ref's annotation ``annotations[ann_id].segmentation`` decoded like ``REFER.getMask``: one
  mask per part (polygon, or RLE), summed, and target = sum == 1 (``annot[ref_mask == 1] = 1``), so a
  pixel covered by two overlapping parts is background, as in RMSIN (parts of a real object do not
  overlap, so this is the union). Polygons are rasterised on the image record's ``height``×``width``.
* Sentences: each sentence's ``raw`` text is tokenised (BERT, 20 tokens). Train: one random sentence per
  ref; ``test.py`` (``eval_mode=True``) scores every sentence of every ref. RMSIN's ``train.py`` validates
  with one random sentence per ref (``eval_mode`` left False); here val scores every sentence.
* Resize 480×480 (image bilinear, mask nearest), ImageNet normalisation: evaluated at 480² (LAVT/RMSIN).
  ``native_mask`` adds the native 800² mask. RMSIN's 20 % random black boxes on training images
  (``add_random_boxes``) are not reproduced; ``augment`` only jitters brightness/contrast.

Samples follow ``referring.py``; ``meta`` adds ``ref_id``, ``image_id``, ``ann_id``, ``sent_id`` (-1 when a
sentence has none) and ``file_name``. Every problem with the files is a DataError naming the file.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsseg.data.core.errors import DataError
from rsseg.data.core.io import read_image
from rsseg.data.core.plain_pickle import load_plain_pickle
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.datasets.referring import (
    ReferringDataModule,
    ReferringDataset,
    as_rgb,
)

DATASET = "rrsisd"
CLASSES = ("background", "target")
PALETTE = ((0, 0, 0), (255, 255, 255))
SPLITS = ("train", "val", "test")
PROTOCOL = "official"
REFS_FILE = Path("rrsisd") / "refs(unc).p"
INSTANCES_FILE = Path("rrsisd") / "instances.json"
IMAGE_DIR = Path("images") / "rrsisd" / "JPEGImages"
DOWNLOAD = (
    "download RRSIS-D (links in the RMSIN README: Google Drive "
    "https://drive.google.com/drive/folders/1Xqi3Am2Vgm4a5tHqiV9tfaqKNovcuK3A or Baidu Netdisk "
    "https://pan.baidu.com/s/1yZatV2w_bSXIP9QBv2lCrA, code sjoe) and put refs(unc).p and instances.json in "
    "<root>/rrsisd/ and the images in <root>/images/rrsisd/JPEGImages/"
)
POLY_SCALE = 5  # pycocotools rleFrPoly upsamples the polygon 5× before finding the column crossings


def rrsisd_spec(protocol: str = PROTOCOL) -> DatasetSpec:
    """Label and metric convention of RRSIS-D: binary target/background, LAVT-style referring metrics."""
    if protocol != PROTOCOL:
        raise ValueError(f"unknown RRSIS-D protocol {protocol!r}; the only one is {PROTOCOL!r}")
    return DatasetSpec(
        name=DATASET,
        classes=CLASSES,
        palette=PALETTE,
        protocol=protocol,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(),
        notes={
            "task": "referring segmentation: (image, sentence) -> binary mask of the referred object",
            "splits": "refs(unc).p: train 12,181 / val 1,740 / test 3,481 triplets; select on val (RMSIN "
            "tests --split val or test)",
            "labels": "target = covered by exactly one part of the COCO annotation (REFER.getMask == 1)",
            "metrics": "per expression: mIoU (IoU = 0 when the union is empty), oIoU = sum I / sum U, Pr@0.5..0.9; "
            "RMSIN scores at 480x480 with nearest-resized masks",
        },
    )


# --------------------------------------------------------------------------------------------------
# COCO masks (pycocotools' decoding, without the dependency)


def polygon_mask(xy: list[float], height: int, width: int) -> np.ndarray:
    """uint8 {0,1} mask of one polygon ``[x0, y0, x1, y1, …]``, rasterised as pycocotools' ``rleFrPoly``.

    Same algorithm, so the same pixels (checked against pycocotools 2.0.11 on random polygons): vertices
    snapped to a 1/5-pixel grid, a dense boundary traced edge by edge, and column X toggled at each
    boundary step across its sample line (5X + 2 in the upsampled grid), the row rounded up. In effect a
    pixel is in when its centre is inside; a centre exactly on a left or top edge is out, on a right or
    bottom edge in (rectangle [x0, x1]×[y0, y1]: x0 < X + 0.5 ≤ x1 and y0 < Y + 0.5 ≤ y1). cv2.fillPoly
    would differ: it also fills every pixel the outline touches.
    """
    points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    x = np.trunc(POLY_SCALE * points[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(POLY_SCALE * points[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    traced = [_trace_edge(*edge) for edge in zip(x[:-1], y[:-1], x[1:], y[1:], strict=True)]
    u = np.concatenate([t[0] for t in traced])
    v = np.concatenate([t[1] for t in traced])
    step = u[1:] != u[:-1]
    u_now, u_before, v_now, v_before = u[1:][step], u[:-1][step], v[1:][step], v[:-1][step]
    xd = (np.where(u_now < u_before, u_now, u_now - 1) + 0.5) / POLY_SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.ceil(np.clip((np.minimum(v_now, v_before)[keep] + 0.5) / POLY_SCALE - 0.5, 0, height))
    return _toggles_to_mask(xd[keep].astype(np.int64) * height + yd.astype(np.int64), height, width)


def _trace_edge(xs: int, ys: int, xe: int, ye: int) -> tuple[np.ndarray, np.ndarray]:
    """The dense boundary points of one upsampled edge, start to end, as pycocotools traces them."""
    dx, dy = abs(xe - xs), abs(ye - ys)
    flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
    if flip:
        xs, xe, ys, ye = xe, xs, ye, ys
    if dx >= dy:
        t = np.arange(dx + 1)[::-1] if flip else np.arange(dx + 1)
        slope = (ye - ys) / dx if dx else 0.0  # a repeated vertex: one point, its row never used
        return t + xs, np.trunc(ys + slope * t + 0.5).astype(np.int64)
    t = np.arange(dy + 1)[::-1] if flip else np.arange(dy + 1)
    slope = (xe - xs) / dy
    return np.trunc(xs + slope * t + 0.5).astype(np.int64), t + ys


def _toggles_to_mask(positions: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask from its run boundaries: column-major positions where the value flips (COCO RLE order)."""
    flips = np.bincount(positions, minlength=height * width + 1)[: height * width]
    return (np.cumsum(flips) % 2).astype(np.uint8).reshape(width, height).T.copy()


def rle_string_counts(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools ``rleFrString``).

    Each count is a little-endian base-32 number, 5 bits per character ``chr(48 + bits)`` with 0x20 meaning
    "more follows" and 0x10 of the last character the sign; from the fourth count on, the value is stored
    as the difference to the count two places before.
    """
    runs: list[int] = []
    value, shift = 0, 0
    for char in counts:
        code = ord(char) - 48
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("the string ends inside a count")
    return runs


def rle_mask(rle: dict, height: int, width: int) -> np.ndarray:
    """uint8 {0,1} mask of a COCO RLE ``{"size": [h, w], "counts": [...] or "compressed"}``.

    Runs alternate background/target from background, column-major; they must cover h×w exactly.
    """
    size, counts = rle.get("size"), rle.get("counts")
    if list(size or ()) != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image's {height}×{width}")
    runs = rle_string_counts(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or any(not isinstance(r, int) or r < 0 for r in runs):
        raise ValueError("RLE counts must be a list of non-negative integers or a compressed string")
    if sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {height}×{width}")
    values = np.arange(len(runs), dtype=np.uint8) % 2
    return np.repeat(values, runs).reshape(width, height).T.copy()


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 {0,1} target of a COCO ``segmentation``, as ``REFER.getMask`` + RMSIN's ``== 1``.

    A list of polygons (4 numbers: a box ``[x, y, w, h]``, as pycocotools' ``frPyObjects``), a list of RLE
    dicts, or one RLE dict (COCO crowd style, which ``REFER.getMask`` cannot read). Parts are summed and
    target is where exactly one part lies. ValueError says what is malformed.
    """
    parts = [segmentation] if isinstance(segmentation, dict) else segmentation
    if not isinstance(parts, list) or not parts:
        raise ValueError(f"segmentation must be a non-empty list or an RLE dict, got {type(segmentation).__name__}")
    total = np.zeros((height, width), np.uint8)
    for part in parts:
        total += _part_mask(part, height, width)
    return (total == 1).astype(np.uint8)


def _part_mask(part: Any, height: int, width: int) -> np.ndarray:
    if isinstance(part, dict):
        return rle_mask(part, height, width)
    if not isinstance(part, list) or not all(isinstance(c, int | float) for c in part):
        raise ValueError("a polygon must be a list of numbers")
    if len(part) == 4:
        x, y, w, h = part
        part = [x, y, x, y + h, x + w, y + h, x + w, y]
    if len(part) < 6 or len(part) % 2:
        raise ValueError(f"a polygon needs an even number (at least 6) of coordinates, got {len(part)}")
    return polygon_mask(part, height, width)


# --------------------------------------------------------------------------------------------------
# refs(unc).p and instances.json


@dataclass(frozen=True)
class RRSISDRef:
    """One referred object: its ref, image and annotation records and its sentences."""

    id: str  # str(ref_id), the sample's meta id
    ref_id: int
    image_id: int
    ann_id: int
    sentences: tuple[str, ...]
    sent_ids: tuple[int, ...]
    file_name: str
    height: int
    width: int
    segmentation: Any


def check_root(root: Path) -> None:
    """The three official paths exist, or a DataError says which is missing and what to download."""
    if not root.is_dir():
        raise DataError(f"{root}: RRSIS-D folder does not exist; {DOWNLOAD}")
    for path, what in ((REFS_FILE, "file"), (INSTANCES_FILE, "file"), (IMAGE_DIR, "folder")):
        found = (root / path).is_file() if what == "file" else (root / path).is_dir()
        if not found:
            nested = next((p for p in (root / "refer" / "data", root.parent) if (p / REFS_FILE).is_file()), None)
            hint = f"; the dataset seems to be in {nested}, use that as root" if nested else f"; {DOWNLOAD}"
            raise DataError(f"{root / path}: {what} not found{hint}")


@functools.lru_cache(maxsize=1)
def _read_files(refs_path: Path, instances_path: Path, stamp: tuple) -> tuple[list, dict, dict]:
    """Parsed refs, images by id and annotations by id; cached so the splits of one setup parse once."""
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{refs_path}: expected a list of ref dicts, got {type(refs).__name__}")
    try:
        instances = json.loads(instances_path.read_text(encoding="utf-8"))
        images = {image["id"]: image for image in instances["images"]}
        annotations = {ann["id"]: ann for ann in instances["annotations"]}
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{instances_path}: not a COCO instances file with 'images' and 'annotations' that have ids "
            f"({type(error).__name__}: {error})"
        ) from error
    return refs, images, annotations


def read_files(root: Path) -> tuple[list, dict, dict]:
    """``(refs, images by id, annotations by id)`` of a checked root (re-read when a file changes)."""
    paths = root / REFS_FILE, root / INSTANCES_FILE
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return _read_files(*paths, stamp)


def in_split(ref_split: Any, split: str) -> bool:
    """``REFER.getRefIds``: train/val by equality, test by containment (testA, testB … count as test)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return "test" in ref_split if split == "test" else ref_split == split


def split_refs(root: Path, split: str) -> list[RRSISDRef]:
    """The refs of ``split`` in file order, joined with their image and annotation records."""
    refs, images, annotations = read_files(root)
    refs_path, instances_path = root / REFS_FILE, root / INSTANCES_FILE
    chosen = [(k, ref) for k, ref in enumerate(refs) if in_split(str(ref.get("split", "")), split)]
    if not chosen:
        present = sorted({str(ref.get("split")) for ref in refs})
        raise DataError(f"{refs_path}: no refs in split {split!r} (splits present: {', '.join(present) or 'none'})")
    return [_join(k, ref, images, annotations, refs_path, instances_path) for k, ref in chosen]


def _join(index: int, ref: dict, images: dict, annotations: dict, refs_path: Path, instances_path: Path) -> RRSISDRef:
    """One ref with its records; DataError names the file and the ref when something is missing."""
    where = f"{refs_path}: ref #{index} (ref_id {ref.get('ref_id')!r})"
    missing = [key for key in ("ref_id", "image_id", "ann_id", "sentences") if key not in ref]
    if missing:
        raise DataError(f"{where} has no {', '.join(missing)}")
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not sentences or not all(
        isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences
    ):
        raise DataError(f"{where}: 'sentences' must be a non-empty list of dicts with a 'raw' text")
    image = images.get(ref["image_id"])
    if image is None or not {"file_name", "height", "width"} <= image.keys():
        raise DataError(f"{instances_path}: no image record with id, file_name, height and width for "
                        f"image_id {ref['image_id']!r} ({where})")
    annotation = annotations.get(ref["ann_id"])
    if annotation is None or "segmentation" not in annotation:
        raise DataError(f"{instances_path}: no annotation with a segmentation for ann_id {ref['ann_id']!r} ({where})")
    return RRSISDRef(
        id=str(ref["ref_id"]),
        ref_id=int(ref["ref_id"]),
        image_id=int(ref["image_id"]),
        ann_id=int(ref["ann_id"]),
        sentences=tuple(s["raw"] for s in sentences),
        sent_ids=tuple(int(s.get("sent_id", -1)) for s in sentences),
        file_name=str(image["file_name"]),
        height=int(image["height"]),
        width=int(image["width"]),
        segmentation=annotation["segmentation"],
    )


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule


class RRSISDDataset(ReferringDataset):
    """One split of RRSIS-D; see the module docstring for files and masks, ``ReferringDataset`` for the
    options and samples."""

    def list_objects(self) -> list[RRSISDRef]:
        check_root(self.root)
        refs = split_refs(self.root, self.split)
        self._check_images(refs)
        return refs

    def _check_images(self, refs: list[RRSISDRef]) -> None:
        for ref in refs:
            if not self.image_path(ref).is_file():
                raise DataError(f"{self.image_path(ref)}: image not found (ref_id {ref.ref_id}, image_id "
                                f"{ref.image_id} in {self.root / INSTANCES_FILE})")

    def image_path(self, ref: RRSISDRef) -> Path:
        return self.root / IMAGE_DIR / ref.file_name

    def read_object(self, ref: RRSISDRef) -> tuple[np.ndarray, np.ndarray]:
        """Native RGB uint8 image and {0,1} uint8 mask of one ref, checked for size."""
        image_path = self.image_path(ref)
        image = as_rgb(read_image(image_path))
        try:
            mask = annotation_mask(ref.segmentation, ref.height, ref.width)
        except ValueError as error:
            raise DataError(f"{self.root / INSTANCES_FILE}: annotation {ref.ann_id} (ref_id {ref.ref_id}): "
                            f"{error}") from error
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"size mismatch: {image_path} is {image.shape[0]}×{image.shape[1]} but the mask of annotation "
                f"{ref.ann_id} in {self.root / INSTANCES_FILE} is {mask.shape[0]}×{mask.shape[1]}"
            )
        return image, mask

    def extra_meta(self, ref: RRSISDRef, sentence_index: int) -> dict[str, Any]:
        return {
            "ref_id": ref.ref_id,
            "image_id": ref.image_id,
            "ann_id": ref.ann_id,
            "sent_id": ref.sent_ids[sentence_index],
            "file_name": ref.file_name,
        }


class RRSISDDataModule(ReferringDataModule):
    """RRSIS-D for fit/validate/test/predict, read straight from the official layout (no preparation).

    Training draws one sentence per ref per epoch; val/test/predict score every expression (RMSIN
    ``test.py``). ``image_size=480`` is the RMSIN/LAVT protocol (None: native 800²); ``native_masks=True``
    adds ``mask_native`` to evaluation samples. Select on val; RMSIN reports val and test.
    Options: ``rsseg.data.datasets.referring.ReferringDataModule``.
    """

    default_protocol = PROTOCOL
    dataset_class = RRSISDDataset
    splits = SPLITS

    def make_spec(self, protocol: str) -> DatasetSpec:
        return rrsisd_spec(protocol)


__all__ = [
    "RRSISDDataModule",
    "RRSISDDataset",
    "RRSISDRef",
    "annotation_mask",
    "polygon_mask",
    "rle_mask",
    "rle_string_counts",
    "rrsisd_spec",
    "split_refs",
]
