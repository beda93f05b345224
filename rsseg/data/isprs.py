"""The ISPRS 2D labelling colour code shared by Potsdam and Vaihingen.

Labels ship as RGB colour images. Decoding uses an exact-match table in RGB order (never BGR reads);
the black boundary of the eroded ``noBoundary`` labels and any unknown colour become ``ignore_index``
and never a class (torchgeo#1727: an overlay image silently decoded as all clutter).
"""

from __future__ import annotations

import numpy as np

from rsseg.data.spec import IGNORE_INDEX

ISPRS_CLASSES = ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")
ISPRS_PALETTE = (
    (255, 255, 255),  # 0 impervious surfaces
    (0, 0, 255),  # 1 building
    (0, 255, 255),  # 2 low vegetation
    (0, 255, 0),  # 3 tree
    (255, 255, 0),  # 4 car
    (255, 0, 0),  # 5 clutter / background
)
ISPRS_BOUNDARY_RGB = (0, 0, 0)
CLUTTER = 5


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_isprs_label(rgb: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, int, int]:
    """Map an H×W×3 RGB label to class indices.

    Returns ``(mask, n_boundary, n_unknown)``: ``mask`` is uint8 with classes 0–5 and ``ignore_index``
    for boundary black and unknown colours; the counts let callers warn about unknown colours.
    """
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an H×W×3 RGB label, got shape {rgb.shape}")
    codes = _pack(rgb[..., :3])
    mask = np.full(codes.shape, ignore_index, dtype=np.uint8)
    known = np.zeros(codes.shape, dtype=bool)
    for index, colour in enumerate(ISPRS_PALETTE):
        hit = codes == _pack(np.array(colour))
        mask[hit] = index
        known |= hit
    boundary = codes == _pack(np.array(ISPRS_BOUNDARY_RGB))
    n_boundary = int(boundary.sum())
    n_unknown = int((~known & ~boundary).sum())
    return mask, n_boundary, n_unknown


def encode_isprs_label(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Class indices back to the official RGB colours; ignore becomes boundary black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(ISPRS_PALETTE)] = np.array(ISPRS_PALETTE, dtype=np.uint8)
    lut[ignore_index] = ISPRS_BOUNDARY_RGB
    return lut[mask]
