"""Write a tiny RefSegRS in the official layout (``RefSegRS.zip``), with the awkward cases of real copies.

Layout::

    images/<id>.tif                   RGB uint8 TIFF
    masks/<id>.tif                    the referred object's mask
    output_phrase_{train,val,test}.txt   "<id> <referring expression>" per line

Awkward cases: object 1 has three sentences on non-adjacent lines; mask 0 is "0/255-ish" with values on
both sides of the > 50 threshold; mask 2 is saved as RGB; mask 3 holds 0/1; the val file has CRLF line
ends, a UTF-8 BOM and blank lines. Tiles are 60×72 (non-square, so height/width swaps show). ``write_refsegrs``
returns the ground truth it encoded (binary masks as the test expects them), so tests never compare the
code with itself. Malformed lines and missing pairs are made by the tests on copies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

HEIGHT, WIDTH = 60, 72

# split -> lines of (id, sentence), in file order
PHRASES = {
    "train": [
        ("0", "the road on the left"),
        ("1", "vehicle in the parking lot"),
        ("2", "building at the top"),
        ("1", "the cars near the building"),
        ("3", "low vegetation along the road"),
        ("1", "vehicles"),
    ],
    "val": [("4", "the trees"), ("5", "road marking on the right side of the road")],
    "test": [("6", "water"), ("6", "the water on the right"), ("7", "sidewalk at the bottom")],
}
MULTI_SENTENCE_ID = "1"
RGB_MASK_ID = "2"
ZERO_ONE_MASK_ID = "3"
LOSSY_MASK_ID = "0"
# values a "0/255-ish" mask holds: background ≤ 50, foreground > 50
LOSSY_BACKGROUND = (0, 7, 50)
LOSSY_FOREGROUND = (51, 128, 255)


def object_mask(index: int) -> np.ndarray:
    """A rectangle at a different place per object (rows/cols chosen so that no two are equal)."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    top, left = 3 + 5 * index, 2 + 7 * index
    mask[top : top + 17 + index, left : left + 11 + 2 * index] = 1
    return mask


def encode_mask(ref_id: str, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The stored form of a {0,1} mask for this object (see the module docstring)."""
    if ref_id == ZERO_ONE_MASK_ID:
        return mask.copy()
    if ref_id == LOSSY_MASK_ID:
        background = rng.choice(LOSSY_BACKGROUND, size=mask.shape)
        foreground = rng.choice(LOSSY_FOREGROUND, size=mask.shape)
        return np.where(mask == 1, foreground, background).astype(np.uint8)
    grey = (mask * 255).astype(np.uint8)
    if ref_id == RGB_MASK_ID:
        return np.repeat(grey[..., None], 3, axis=2)
    return grey


def write_refsegrs(root: str | Path, seed: int = 0) -> dict:
    """Write the fixture under ``root``; return ``{"objects": {id: {"image", "mask", "sentences", "lines",
    "split"}}}`` with the expected {0,1} masks and the 1-based line numbers of each sentence."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    objects: dict[str, dict] = {}
    for split, lines in PHRASES.items():
        text_lines = []
        for ref_id, sentence in lines:
            if ref_id not in objects:
                mask = object_mask(int(ref_id))
                image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
                tifffile.imwrite(root / "images" / f"{ref_id}.tif", image, photometric="rgb")
                stored = encode_mask(ref_id, mask, rng)
                photometric = "rgb" if stored.ndim == 3 else "minisblack"
                tifffile.imwrite(root / "masks" / f"{ref_id}.tif", stored, photometric=photometric)
                objects[ref_id] = {"image": image, "mask": mask, "sentences": [], "lines": [], "split": split}
            text_lines.append(f"{ref_id} {sentence}")
        if split == "val":  # Windows line ends, a BOM and blank lines
            content = "\ufeff" + "\r\n".join(text_lines[:1] + [""] + text_lines[1:]) + "\r\n\r\n"
            numbers = [1] + list(range(3, len(text_lines) + 2))
        else:
            content = "\n".join(text_lines) + "\n"
            numbers = list(range(1, len(text_lines) + 1))
        for (ref_id, sentence), number in zip(lines, numbers, strict=True):
            objects[ref_id]["sentences"].append(sentence)
            objects[ref_id]["lines"].append(number)
        (root / f"output_phrase_{split}.txt").write_text(content, encoding="utf-8", newline="")
    return {"objects": objects}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "refsegrs_fixture")
    write_refsegrs(out)
    print(f"wrote a RefSegRS fixture to {out}")
