"""Write a tiny UAVid in the official release layout (torchgeo ``tests/data/*/data.py`` pattern).

Layout, as the release extracts::

    uavid_train/seqN/Images/<frame>.png   RGB uint8
    uavid_train/seqN/Labels/<frame>.png   RGB colour labels (UAVidToolKit colours)
    uavid_val/seqN/{Images,Labels}/...
    uavid_test/seqN/Images/...            no labels

Frames are the real 2160×3840 and 2160×4096 frames shrunk 48× (45×80 and 45×85), so every patch grid
needs padding. Train has seq1, seq2 and seq10 (numeric order differs from string order), frames are
written to disk out of order, one label holds a block of an unknown colour, and each sequence
folder carries a stray video file and a non-PNG file, as downloads do. ``write_uavid`` returns the
ground truth it encoded (class masks, including the test frames' hidden ones), so tests compare
against values that never passed through the code under test. Run ``python tests/data/uavid/data.py
DIR`` to look at the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The official colour table, typed in from UAVidToolKit colorTransformer.py (docs/datasets.md §2.2), not
# imported from rsseg: index = trainId.
UAVID_RGB = np.array(
    [
        (0, 0, 0),  # 0 clutter
        (128, 0, 0),  # 1 building
        (128, 64, 128),  # 2 road
        (192, 0, 192),  # 3 static car
        (0, 128, 0),  # 4 tree
        (128, 128, 0),  # 5 low vegetation
        (64, 64, 0),  # 6 human
        (64, 0, 128),  # 7 moving car
    ],
    dtype=np.uint8,
)
IGNORE = 255
SMALL, WIDE = (45, 80), (45, 85)  # 2160×3840 and 2160×4096 divided by 48

# (release folder, sequence) -> [(frame name, (height, width)), ...], in the order they are written
FRAMES = {
    ("uavid_train", "seq10"): [("000000", WIDE)],
    ("uavid_train", "seq2"): [("000100", SMALL), ("000000", SMALL)],
    ("uavid_train", "seq1"): [("000900", WIDE), ("000000", WIDE), ("000100", SMALL)],
    ("uavid_val", "seq16"): [("000000", SMALL), ("000100", WIDE)],
    ("uavid_test", "seq21"): [("000000", WIDE), ("000100", SMALL)],
    ("uavid_test", "seq42"): [("000000", SMALL)],
}
LABELLED = ("uavid_train", "uavid_val")
UNKNOWN_FRAME = ("uavid_train", "seq2", "000100")
UNKNOWN_COLOUR = (255, 255, 255)  # GeoSeg's padding white: not a UAVid colour
UNKNOWN_BLOCK = (slice(3, 6), slice(7, 11))  # 3 × 4 = 12 pixels
UNKNOWN_PIXELS = 12


def class_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blocky regions of all eight classes (cells of 4–7 px)."""
    cell = int(rng.integers(4, 8))
    coarse = rng.integers(0, 8, size=(height // cell + 1, width // cell + 1)).astype(np.uint8)
    coarse.flat[:8] = rng.permutation(8)  # every class present in every frame
    return np.kron(coarse, np.ones((cell, cell), np.uint8))[:height, :width]


def write_uavid(root: str | Path, frames: dict | None = None, seed: int = 0) -> dict:
    """Write the frames under ``root``; return ``{(folder, seq, frame): {"image", "mask", "labelled"}}``
    where ``mask`` is the expected decoded label (unknown colour → 255; for test frames, the hidden
    truth that a perfect model would predict)."""
    root = Path(root)
    frames = FRAMES if frames is None else frames
    rng = np.random.default_rng(seed)
    truth = {}
    for (folder, seq), items in frames.items():
        labelled = folder in LABELLED
        seq_dir = root / folder / seq
        (seq_dir / "Images").mkdir(parents=True, exist_ok=True)
        if labelled:
            (seq_dir / "Labels").mkdir(parents=True, exist_ok=True)
        (seq_dir / "images.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # the release's video, ignored
        (seq_dir / "Images" / "Thumbs.db").write_bytes(b"\x00")
        for frame, (height, width) in items:
            mask = class_mask(height, width, rng)
            noise = rng.integers(0, 64, size=(height, width, 3))
            image = (UAVID_RGB[mask] // 2 + noise).astype(np.uint8)
            Image.fromarray(image).save(seq_dir / "Images" / f"{frame}.png")
            expected = mask.copy()
            if labelled:
                colours = UAVID_RGB[mask]
                if (folder, seq, frame) == UNKNOWN_FRAME:
                    colours[UNKNOWN_BLOCK] = UNKNOWN_COLOUR
                    expected[UNKNOWN_BLOCK] = IGNORE
                Image.fromarray(colours).save(seq_dir / "Labels" / f"{frame}.png")
            truth[(folder, seq, frame)] = {"image": image, "mask": expected, "labelled": labelled}
    return truth


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "uavid_fixture")
    write_uavid(out)
    print(f"wrote {sum(map(len, FRAMES.values()))} UAVid frames to {out}")
