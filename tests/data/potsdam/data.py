"""Write a tiny ISPRS Potsdam in the official on-disk layout (torchgeo ``tests/data/*/data.py`` pattern).

Layout, as the official zips extract::

    2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.tif                           RGB uint8 TIFF, in a folder
    top_potsdam_{r}_{c}_label.tif                                     full colour labels, flat
    5_Labels_all_noBoundary/top_potsdam_{r}_{c}_label_noBoundary.tif  eroded labels, boundaries black

Tiles have odd sizes, one per split of both protocols plus 7_10, and one full label holds a block of
an unknown colour. ``write_potsdam`` returns the ground truth it encoded, so tests compare against
values that did not pass through the code under test. Run ``python tests/data/potsdam/data.py DIR``
to look at the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

ISPRS_RGB = np.array(
    [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], dtype=np.uint8
)
BOUNDARY_RGB = (0, 0, 0)
IGNORE = 255

# tile id -> (height, width); splits under "unetformer" (and "official")
TILES = {
    "2_10": (53, 70),  # val (official: train)
    "2_11": (70, 53),  # train
    "3_10": (64, 97),  # train; its full label has an unknown-colour block
    "7_10": (40, 45),  # excluded (official: train)
    "2_13": (70, 53),  # test
    "4_15": (64, 97),  # test
}
UNKNOWN_TILE = "3_10"
UNKNOWN_COLOUR = (128, 64, 32)
UNKNOWN_BLOCK = (slice(5, 8), slice(10, 14))  # 3 × 4 = 12 pixels
UNKNOWN_PIXELS = 12


def class_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blocky regions of all six classes (cells of 6–11 px), so boundaries exist inside each tile."""
    cell = int(rng.integers(6, 12))
    coarse = rng.integers(0, 6, size=(height // cell + 1, width // cell + 1)).astype(np.uint8)
    coarse.flat[:6] = np.arange(6)  # every class present
    return np.kron(coarse, np.ones((cell, cell), np.uint8))[:height, :width]


def boundary_of(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another class: what the noBoundary labels paint black."""
    edge = np.zeros(mask.shape, bool)
    vertical = mask[1:] != mask[:-1]
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def write_potsdam(root: str | Path, tiles: dict[str, tuple[int, int]] | None = None, seed: int = 0) -> dict:
    """Write the tiles under ``root``; return ``{tile: {"image", "full", "eroded"}}`` with the expected
    decoded masks (unknown colour and boundaries → 255)."""
    root = Path(root)
    tiles = TILES if tiles is None else tiles
    rng = np.random.default_rng(seed)
    (root / "2_Ortho_RGB").mkdir(parents=True, exist_ok=True)
    (root / "5_Labels_all_noBoundary").mkdir(parents=True, exist_ok=True)
    truth = {}
    for tile, (height, width) in tiles.items():
        mask = class_mask(height, width, rng)
        noise = rng.integers(0, 64, size=(height, width, 3))
        image = (ISPRS_RGB[mask] // 2 + noise).astype(np.uint8)
        full_rgb = ISPRS_RGB[mask]
        full = mask.copy()
        if tile == UNKNOWN_TILE:
            full_rgb[UNKNOWN_BLOCK] = UNKNOWN_COLOUR
            full[UNKNOWN_BLOCK] = IGNORE
        edge = boundary_of(mask)
        eroded_rgb = ISPRS_RGB[mask]
        eroded_rgb[edge] = BOUNDARY_RGB
        eroded = np.where(edge, IGNORE, mask).astype(np.uint8)
        tifffile.imwrite(root / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", image, photometric="rgb")
        tifffile.imwrite(root / f"top_potsdam_{tile}_label.tif", full_rgb, photometric="rgb")
        tifffile.imwrite(
            root / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif",
            eroded_rgb,
            photometric="rgb",
        )
        truth[tile] = {"image": image, "full": full, "eroded": eroded}
    return truth


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "potsdam_fixture")
    write_potsdam(out)
    print(f"wrote {len(TILES)} Potsdam tiles to {out}")
