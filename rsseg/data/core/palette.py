"""Exact RGB colour-label decoding, shared by the datasets that ship colour labels (ISPRS, UAVid).

Colours are matched exactly, in RGB order (never BGR reads); a pixel whose colour is not in the
palette is reported as unmatched so the caller can ignore, count and warn about it — never a class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_rgb(rgb: np.ndarray | Sequence) -> np.ndarray:
    """One uint32 code per colour (…×3 → …), so colours compare as integers."""
    rgb = np.asarray(rgb).astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_colours(
    rgb: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class indices of an H×W×3 colour label: ``(mask uint8, matched bool H×W, packed codes H×W)``.

    ``mask`` holds the palette index of every matched pixel and ``ignore_index`` elsewhere.
    """
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an H×W×3 RGB label, got shape {rgb.shape}")
    codes = pack_rgb(rgb[..., :3])
    mask = np.full(codes.shape, ignore_index, dtype=np.uint8)
    matched = np.zeros(codes.shape, dtype=bool)
    for index, code in enumerate(pack_rgb(palette)):
        hit = codes == code
        mask[hit] = index
        matched |= hit
    return mask, matched, codes
