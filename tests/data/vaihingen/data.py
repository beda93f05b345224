"""Write a tiny ISPRS Vaihingen in the official on-disk layout (torchgeo ``tests/data/*/data.py`` pattern).

Layout, as the three official zips extract::

    top/top_mosaic_09cm_area{N}.tif              IRRG uint8 TIFF (ISPRS_semantic_labeling_Vaihingen.zip)
    top_mosaic_09cm_area{N}.tif                  full colour labels, flat, same name as the image
    ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/top_mosaic_09cm_area{N}_noBoundary.tif

Every area has a different odd size; there is one area of each split of both protocols (30 is the
UNetFormer val area), plus area 9, which no protocol lists; one full label holds a block of an unknown
colour. ``write_vaihingen`` returns the ground truth it encoded, so tests compare against values that
did not pass through the code under test. Run ``python tests/data/vaihingen/data.py DIR`` to look at it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

from tests.data.potsdam.data import BOUNDARY_RGB, IGNORE, ISPRS_RGB, boundary_of, class_mask

ERODED_DIR = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"

# area -> (height, width); splits under "unetformer" (and "official")
AREAS = {
    "1": (53, 70),  # train
    "3": (64, 97),  # train; its full label has an unknown-colour block
    "30": (45, 61),  # val (official: train)
    "2": (70, 53),  # test
    "4": (59, 83),  # test
    "9": (37, 41),  # in no protocol: found but unused
}
UNKNOWN_AREA = "3"
UNKNOWN_COLOUR = (200, 100, 50)
UNKNOWN_BLOCK = (slice(20, 25), slice(30, 33))  # 5 × 3 = 15 pixels
UNKNOWN_PIXELS = 15


def image_path(root: Path, area: str) -> Path:
    return root / "top" / f"top_mosaic_09cm_area{area}.tif"


def label_path(root: Path, area: str) -> Path:
    return root / f"top_mosaic_09cm_area{area}.tif"


def eroded_path(root: Path, area: str) -> Path:
    return root / ERODED_DIR / f"top_mosaic_09cm_area{area}_noBoundary.tif"


def write_vaihingen(root: str | Path, areas: dict[str, tuple[int, int]] | None = None, seed: int = 0) -> dict:
    """Write the areas under ``root``; return ``{area: {"image", "full", "eroded"}}`` with the IRRG image
    as written and the expected decoded masks (unknown colour and boundaries → 255)."""
    root = Path(root)
    areas = AREAS if areas is None else areas
    rng = np.random.default_rng(seed)
    (root / "top").mkdir(parents=True, exist_ok=True)
    (root / ERODED_DIR).mkdir(parents=True, exist_ok=True)
    truth = {}
    for area, (height, width) in areas.items():
        mask = class_mask(height, width, rng)
        noise = rng.integers(0, 64, size=(height, width, 3))
        rgb = ISPRS_RGB[mask] // 2 + noise
        image = np.stack([255 - rgb[..., 1], rgb[..., 0], rgb[..., 1]], axis=-1).astype(np.uint8)  # "IR", R, G
        full_rgb = ISPRS_RGB[mask]
        full = mask.copy()
        if area == UNKNOWN_AREA:
            full_rgb[UNKNOWN_BLOCK] = UNKNOWN_COLOUR
            full[UNKNOWN_BLOCK] = IGNORE
        edge = boundary_of(mask)
        eroded_rgb = ISPRS_RGB[mask]
        eroded_rgb[edge] = BOUNDARY_RGB
        eroded = np.where(edge, IGNORE, mask).astype(np.uint8)
        tifffile.imwrite(image_path(root, area), image, photometric="rgb")
        tifffile.imwrite(label_path(root, area), full_rgb, photometric="rgb")
        tifffile.imwrite(eroded_path(root, area), eroded_rgb, photometric="rgb")
        truth[area] = {"image": image, "full": full, "eroded": eroded}
    return truth


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "vaihingen_fixture")
    write_vaihingen(out)
    print(f"wrote {len(AREAS)} Vaihingen areas to {out}")
