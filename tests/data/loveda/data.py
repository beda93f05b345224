"""Write a tiny LoveDA in the official on-disk layout (torchgeo ``tests/data/*/data.py`` pattern).

Layout, as Train.zip, Val.zip and Test.zip extract::

    {Train,Val}/{Urban,Rural}/images_png/<id>.png   RGB uint8
    {Train,Val}/{Urban,Rural}/masks_png/<id>.png    raw values: 0 no-data, 1..7 = class + 1
    Test/{Urban,Rural}/images_png/<id>.png          no masks

Every mask holds all seven classes and a no-data strip (raw 0, black in the image). Odd cases: the
ids of Train/Rural sort differently as text and as numbers (8, 9, 10), mask 9 is a palette-mode PNG
(its indices are the raw values), and ``Thumbs.db`` / ``.DS_Store`` sit among the Train/Urban images.
``write_loveda`` returns the ground truth it encoded (training indices, 255 = no-data), so tests
compare against values that did not pass through the code under test. Run
``python tests/data/loveda/data.py DIR`` to look at the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (32, 40)  # height, width: not square, so transposed reads show up
IGNORE = 255
CLASS_RGB = np.array(
    [(200, 200, 200), (180, 40, 40), (120, 120, 120), (30, 60, 150), (150, 120, 90), (30, 110, 30), (190, 170, 90)],
    dtype=np.uint8,
)

IDS = {
    ("Train", "Rural"): (8, 9, 10),
    ("Train", "Urban"): (11, 12),
    ("Val", "Rural"): (20,),
    ("Val", "Urban"): (21, 22),
    ("Test", "Rural"): (30, 31),
    ("Test", "Urban"): (32,),
}
PALETTE_MASK_ID = 9
STRAY_FILES = (("Train", "Urban", "Thumbs.db"), ("Train", "Urban", ".DS_Store"))


def class_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blocky regions of all seven classes with a no-data strip (255) along one side."""
    cell = int(rng.integers(4, 8))
    coarse = rng.integers(0, 7, size=(height // cell + 1, width // cell + 1)).astype(np.uint8)
    coarse.flat[coarse.shape[1] : coarse.shape[1] + 7] = np.arange(7)  # every class, from row 1: below the strip
    mask = np.kron(coarse, np.ones((cell, cell), np.uint8))[:height, :width]
    mask[: int(rng.integers(1, 4))] = IGNORE  # georegistration border
    return mask


def write_loveda(root: str | Path, seed: int = 0, size: tuple[int, int] = SIZE) -> dict[str, dict]:
    """Write the fixture under ``root``; return ``{id: {"split", "scene", "image", "mask"}}`` where
    ``mask`` is the expected training mask (0..6, 255 = no-data), None for Test images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    truth: dict[str, dict] = {}
    for (split, scene), ids in IDS.items():
        image_dir = root / split / scene / "images_png"
        image_dir.mkdir(parents=True, exist_ok=True)
        if split != "Test":
            (root / split / scene / "masks_png").mkdir(parents=True, exist_ok=True)
        for sample_id in ids:
            mask = class_mask(*size, rng)
            nodata = mask == IGNORE
            noise = rng.integers(0, 50, size=(*size, 3))
            image = (CLASS_RGB[np.where(nodata, 0, mask)] // 2 + noise).astype(np.uint8)
            image[nodata] = 0
            Image.fromarray(image).save(image_dir / f"{sample_id}.png")
            if split != "Test":
                raw = np.where(nodata, 0, mask + 1).astype(np.uint8)
                mask_image = Image.fromarray(raw)
                if sample_id == PALETTE_MASK_ID:
                    mask_image = mask_image.convert("P")  # same indices, stored with a palette
                mask_image.save(root / split / scene / "masks_png" / f"{sample_id}.png")
            truth[str(sample_id)] = {
                "split": split,
                "scene": scene,
                "image": image,
                "mask": mask if split != "Test" else None,
            }
    for split, scene, name in STRAY_FILES:
        (root / split / scene / "images_png" / name).write_bytes(b"not an image")
    return truth


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "loveda_fixture")
    write_loveda(out)
    print(f"wrote {sum(map(len, IDS.values()))} LoveDA images to {out}")
