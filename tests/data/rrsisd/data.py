"""Write a tiny RRSIS-D in the official layout (RMSIN README), with hand-computed masks.

Layout::

    rrsisd/refs(unc).p                 pickled list of ref dicts (protocol 2, as a Python 2-era file)
    rrsisd/instances.json              COCO images and annotations
    images/rrsisd/JPEGImages/<name>    flat-colour RGB JPEGs, 12×16 (non-square, so swaps show)
    images/rrsisd/ann_split/           empty

Refs (file order): 0 train, two sentences, a rectangle polygon; 1 train, uncompressed RLE counts;
2 val, a triangle polygon; 3 test, a compressed RLE string (with a negative delta); 4 split "testB" (test
by containment, ``REFER.getRefIds``), two overlapping rectangles whose overlap is background
(``ref_mask == 1``). ``MASKS`` holds the masks worked out by hand from the COCO rules (see each entry),
so tests never compare the decoder with itself.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 12, 16


def _mask(cells: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for row, col in cells:
        mask[row, col] = 1
    return mask


def _block(rows: range, cols: range) -> list[tuple[int, int]]:
    return [(r, c) for r in rows for c in cols]


# ann_id -> (segmentation, hand-computed mask)
ANNOTATIONS = {
    # rectangle x 2..7, y 1..5: pixel centres strictly inside -> rows 1-4, cols 2-6
    10: ([[2, 1, 7, 1, 7, 5, 2, 5]], _mask(_block(range(1, 5), range(2, 7)))),
    # column-major runs: 13 background, 3 target (col 1, rows 1-3), 9 background, 3 target (col 2, rows 1-3)
    12: ([{"size": [HEIGHT, WIDTH], "counts": [13, 3, 9, 3, 164]}], _mask(_block(range(1, 4), range(1, 3)))),
    # triangle (0,0) (8,0) (0,8): centre (X+.5, Y+.5) inside iff X + Y <= 6
    11: ([[0, 0, 8, 0, 0, 8]], _mask([(r, c) for r in range(HEIGHT) for c in range(WIDTH) if r + c <= 6])),
    # "d0:2Ki4" = runs 20, 10, 2, 5 (stored as 5 - 10 = -5), 155: target at column-major 20-29 and 32-36
    13: ([{"size": [HEIGHT, WIDTH], "counts": "d0:2Ki4"}],
         _mask([(i % HEIGHT, i // HEIGHT) for i in [*range(20, 30), *range(32, 37)]])),
    # rows/cols 0-3 and 2-5: the 2×2 overlap is covered twice, so background
    14: ([[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]],
         _mask([cell for cell in set(_block(range(0, 4), range(0, 4))) ^ set(_block(range(2, 6), range(2, 6)))])),
}
IMAGES = {1: ("P0001_a.jpg", (200, 40, 40)), 2: ("P0002_b.jpg", (40, 160, 60)), 3: ("P0003_c.jpg", (30, 60, 200))}
# ref_id, split, image_id, ann_id, sentences
REFS = [
    (0, "train", 1, 10, ["The red roof on the left", "red building near the top"]),
    (1, "train", 1, 12, ["the small vehicle"]),
    (2, "val", 2, 11, ["green field at the upper left"]),
    (3, "test", 3, 13, ["the blue ship"]),
    (4, "testB", 2, 14, ["two storage tanks"]),
]
SPLIT_REFS = {"train": [0, 1], "val": [2], "test": [3, 4]}


def refs() -> list[dict]:
    """The refs(unc).p content: the keys of the real file (ref_id, ann_id, image_id, split, sentences …)."""
    out = []
    for ref_id, split, image_id, ann_id, texts in REFS:
        sent_ids = [100 * ref_id + k for k in range(len(texts))]
        sentences = [{"raw": t, "sent": t.lower(), "tokens": t.lower().split(), "sent_id": s}
                     for t, s in zip(texts, sent_ids, strict=True)]
        out.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
                    "sentences": sentences, "sent_ids": sent_ids, "file_name": IMAGES[image_id][0]})
    return out


def instances() -> dict:
    images = [{"id": i, "file_name": name, "height": HEIGHT, "width": WIDTH} for i, (name, _) in IMAGES.items()]
    image_of = {ann_id: image_id for _, _, image_id, ann_id, _ in REFS}
    annotations = [{"id": a, "image_id": image_of[a], "category_id": 1, "segmentation": seg, "iscrowd": 0}
                   for a, (seg, _) in ANNOTATIONS.items()]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def write_rrsisd(root: Path) -> Path:
    """Write the fixture under ``root``; return ``root``."""
    (root / "rrsisd").mkdir(parents=True, exist_ok=True)
    (root / "images" / "rrsisd" / "ann_split").mkdir(parents=True, exist_ok=True)
    (root / "images" / "rrsisd" / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "rrsisd" / "refs(unc).p").write_bytes(pickle.dumps(refs(), protocol=2))
    (root / "rrsisd" / "instances.json").write_text(json.dumps(instances()))
    for name, colour in IMAGES.values():
        image = np.broadcast_to(np.array(colour, np.uint8), (HEIGHT, WIDTH, 3))
        Image.fromarray(np.ascontiguousarray(image)).save(root / "images" / "rrsisd" / "JPEGImages" / name, quality=95)
    return root
