"""A small synthetic RRSIS-D in the official on-disk layout (RMSIN README).

Written where and how the real release puts its files::

    dst/rrsisd/refs(unc).p                 pickled list of ref dicts (plain containers, protocol 2)
    dst/rrsisd/instances.json              COCO images, annotations (polygons and RLE), categories
    dst/images/rrsisd/JPEGImages/<n>.jpg   RGB JPEG, size×size
    dst/images/rrsisd/ann_split/           empty (the real one holds RSVGD XML boxes, never read)
    dst/README_SYNTHETIC.txt

so ``RRSISDDataModule(dst)`` reads it like the real data. Scenes and referred objects come from the
synthetic RefSegRS (``refsegrs.render_objects``): an object is one material category in the whole image
or in one half, and its sentences say which ("the vehicles on the left"), so the text decides the mask.
Several refs share an image, as in RRSIS-D. Annotations cycle through the three COCO encodings the loader
reads: polygons (outer contours), a compressed RLE string and uncompressed RLE counts; the mask a ref
refers to is what its annotation decodes to. Every fourth ref has two sentences. Everything random comes
from generators seeded from ``(seed, split, scene)``: same seed, same bytes.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from rsseg.data.synthetic.files import write_atomically, write_text_atomically
from rsseg.data.synthetic.refsegrs import CATEGORIES, OBJECTS_PER_SCENE, _sentences, render_objects

__all__ = ["write_synthetic_rrsisd"]

SPLITS = ("train", "val", "test")
TWO_SENTENCES_EVERY = 4
ENCODINGS = ("polygon", "rle_string", "rle_counts")
JPEG_QUALITY = 95


def mask_runs(mask: np.ndarray) -> list[int]:
    """COCO RLE run lengths of a {0,1} mask: column-major, alternating from background."""
    flat = mask.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def rle_string(runs: list[int]) -> str:
    """The compressed COCO string of ``runs`` (pycocotools ``rleToString``), which the loader decodes."""
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            code = value & 0x1F
            value >>= 5
            more = value != -1 if code & 0x10 else value != 0
            chars.append(chr(48 + (code | 0x20 if more else code)))
    return "".join(chars)


def segmentation(mask: np.ndarray, encoding: str) -> list | dict:
    """The COCO segmentation of a {0,1} mask in one of ``ENCODINGS``."""
    height, width = mask.shape
    if encoding == "polygon":
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if polygons:
            return polygons
    runs = mask_runs(mask)
    counts = rle_string(runs) if encoding == "rle_string" else runs
    return [{"size": [height, width], "counts": counts}]


def _readme(seed: int, size: int, counts: dict[str, tuple[int, int]]) -> str:
    return "\n".join([
        "SYNTHETIC DATA - NOT RRSIS-D",
        "",
        "Written by rsseg (rsseg.data.synthetic.rrsisd.write_synthetic_rrsisd) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        f"images: {size} x {size} px JPEG (real RRSIS-D: 800 px)",
        "layout (RMSIN README): rrsisd/refs(unc).p, rrsisd/instances.json, images/rrsisd/JPEGImages/",
        "refs / expressions per split: " + ", ".join(f"{s} {r} / {e}" for s, (r, e) in counts.items()),
        "categories: " + ", ".join(CATEGORIES) + "; each in the whole image or in one half",
        "",
    ])


def write_synthetic_rrsisd(
    dst: str | Path, seed: int = 0, counts: tuple[int, int, int] = (60, 20, 20), size: int = 128
) -> list[Path]:
    """Write a synthetic RRSIS-D under ``dst``; return the written files (images, then the two index
    files and ``README_SYNTHETIC.txt``).

    ``counts`` is the number of refs in train, val and test. Files are written atomically; the same
    ``seed`` gives identical bytes.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(counts) != len(SPLITS) or min(counts) < 1:
        raise ValueError(f"counts must give at least one ref for each of {SPLITS}, got {counts!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    dst = Path(dst)
    image_dir = dst / "images" / "rrsisd" / "JPEGImages"
    image_dir.mkdir(parents=True, exist_ok=True)
    (dst / "images" / "rrsisd" / "ann_split").mkdir(parents=True, exist_ok=True)
    (dst / "rrsisd").mkdir(parents=True, exist_ok=True)
    category_ids = {name: k + 1 for k, name in enumerate(CATEGORIES)}
    refs: list[dict] = []
    images: list[dict] = []
    annotations: list[dict] = []
    written: list[Path] = []
    summary: dict[str, tuple[int, int]] = {}
    for split_index, (split, wanted) in enumerate(zip(SPLITS, counts, strict=True)):
        made, expressions, scene = 0, 0, 0
        while made < wanted:
            if scene > 4 * wanted + 8:
                raise RuntimeError(f"synthetic RRSIS-D: {scene} scenes gave only {made} refs")
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_index, scene]))
            image, objects = render_objects(size, rng)
            scene += 1
            objects = objects[: min(OBJECTS_PER_SCENE, wanted - made)]
            if not objects:
                continue
            image_id = len(images) + 1
            path = image_dir / f"{image_id:05d}.jpg"
            write_atomically(path, lambda tmp, im=image: Image.fromarray(im).save(tmp, "JPEG", quality=JPEG_QUALITY))
            written.append(path)
            images.append({"id": image_id, "file_name": path.name, "height": size, "width": size})
            for mask, category, region in objects:
                ref_id = len(refs)
                encoding = ENCODINGS[ref_id % len(ENCODINGS)]
                binary = (mask > 0).astype(np.uint8)
                annotations.append({
                    "id": ref_id + 1, "image_id": image_id, "category_id": category_ids[category],
                    "segmentation": segmentation(binary, encoding), "area": int(binary.sum()), "iscrowd": 0,
                    "bbox": list(cv2.boundingRect(binary)),
                })
                text_rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_index, ref_id, 1]))
                texts = _sentences(category, region, 1 + (ref_id % TWO_SENTENCES_EVERY == 0), text_rng)
                sent_ids = [10 * ref_id + k for k in range(len(texts))]
                sentences = [{"raw": t, "sent": t, "tokens": t.split(), "sent_id": s} for t, s in zip(texts, sent_ids,
                                                                                                        strict=True)]
                refs.append({
                    "ref_id": ref_id, "ann_id": ref_id + 1, "image_id": image_id, "split": split,
                    "category_id": category_ids[category], "sentences": sentences, "sent_ids": sent_ids,
                    "file_name": path.name,
                })
                made += 1
                expressions += len(texts)
        summary[split] = (made, expressions)
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": i, "name": n} for n, i in category_ids.items()]}
    refs_path, instances_path = dst / "rrsisd" / "refs(unc).p", dst / "rrsisd" / "instances.json"
    write_atomically(refs_path, lambda tmp: tmp.write_bytes(pickle.dumps(refs, protocol=2)))
    write_text_atomically(instances_path, json.dumps(instances))
    readme = write_text_atomically(dst / "README_SYNTHETIC.txt", _readme(int(seed), size, summary))
    return [*written, refs_path, instances_path, readme]
