"""Write a tiny CHN6-CUG in the official layout, with the awkward cases of real copies.

Layout::

    {train,val}/images/<id>_sat.jpg    RGB JPEG
    {train,val}/gt/<id>_mask.png       0/255 road mask (road white)

Awkward cases: one mask saved as RGB, one holding 0/1 values (already converted), one "lossy" mask with
values on both sides of the ≥ 128 threshold, one tile with no road at all. Tiles are 40×48
(non-square). ``write_chn6cug`` returns the ground truth it encoded; missing pairs are made by the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 40, 48
TILES = {
    "train": ("am100001", "am100002", "bj100010", "cz100003", "gz100007", "sh100004"),
    "val": ("am100900", "bj100901", "sz100902"),
}
RGB_MASK_ID = "am100002"
ZERO_ONE_MASK_ID = "bj100010"
LOSSY_MASK_ID = "cz100003"
EMPTY_ID = "gz100007"
LOSSY_BACKGROUND = (0, 3, 127)
LOSSY_FOREGROUND = (128, 200, 255)


def road_mask(index: int) -> np.ndarray:
    """A horizontal and a vertical road, at places that differ per tile."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    row, col = 4 + 3 * index, 5 + 4 * index
    mask[row : row + 4, :] = 1
    mask[:, col : col + 3 + index % 3] = 1
    return mask


def write_chn6cug(root: str | Path, seed: int = 0) -> dict:
    """Write the fixture; return ``{folder: {id: {"mask": expected {0,1} mask}}}``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    truth: dict[str, dict] = {}
    index = 0
    for folder, tiles in TILES.items():
        (root / folder / "images").mkdir(parents=True, exist_ok=True)
        (root / folder / "gt").mkdir(parents=True, exist_ok=True)
        truth[folder] = {}
        for tile in tiles:
            mask = np.zeros((HEIGHT, WIDTH), np.uint8) if tile == EMPTY_ID else road_mask(index)
            index += 1
            image = np.where(mask[..., None] == 1, 90, 160) + rng.integers(0, 40, size=(HEIGHT, WIDTH, 3))
            Image.fromarray(image.astype(np.uint8)).save(root / folder / "images" / f"{tile}_sat.jpg", quality=95)
            if tile == ZERO_ONE_MASK_ID:
                stored = mask.copy()
            elif tile == LOSSY_MASK_ID:
                stored = np.where(
                    mask == 1, rng.choice(LOSSY_FOREGROUND, mask.shape), rng.choice(LOSSY_BACKGROUND, mask.shape)
                ).astype(np.uint8)
            else:
                stored = mask * np.uint8(255)
            if tile == RGB_MASK_ID:
                stored = np.repeat(stored[..., None], 3, axis=2)
            Image.fromarray(stored).save(root / folder / "gt" / f"{tile}_mask.png")
            truth[folder][tile] = {"mask": mask}
    return truth


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "chn6cug_fixture")
    write_chn6cug(out)
    print(f"wrote a CHN6-CUG fixture to {out}")
