"""Cutting large tiles into fixed-size patches that cover every pixel.

The grid starts at 0 and steps by ``stride`` until a window reaches the bottom/right edge, so the stride
really applies (mmseg#2811 stepped by the patch size) and no remainder is dropped (torchgeo's patch
extraction does). Two ways to cover the edge: ``edge="pad"`` lets the last window run past it and pads
(images with 0, masks with the ignore index, never a class value: GeoSeg's padding became "impervious
surface"); ``edge="align"`` moves the last window back to end at the edge, so windows only overlap
more and nothing is padded unless the raster is smaller than one window.

``prepare`` checks its window arguments before anything is written (:func:`check_prepare_window`,
:func:`check_patch_fits`, the sizes read from file headers by :func:`raster_size`) and estimates the
size of what it will write (:func:`patched_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from rsseg.data.core.errors import DataError
from rsseg.data.core.io import TIFF_SUFFIXES, write_png
from rsseg.grid import axis_starts, axis_starts_aligned


def check_window(size: int, stride: int) -> None:
    """ValueError unless 1 ≤ stride ≤ size: a larger stride would skip pixels."""
    for name, value in (("size", size), ("stride", stride)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if stride > size:
        raise ValueError(
            f"stride ({stride}) must not exceed the patch size ({size}): pixels would be skipped"
        )


def patch_grid(height: int, width: int, size: int, stride: int, edge: str = "pad") -> list[tuple[int, int]]:
    """Origins (y, x), row-major, of ``size``×``size`` windows covering a ``height``×``width`` raster."""
    check_window(size, stride)
    if min(height, width) < 1:
        raise ValueError(f"raster size must be positive, got {height}×{width}")
    if edge not in ("pad", "align"):
        raise ValueError(f"edge must be 'pad' or 'align', got {edge!r}")
    starts = axis_starts if edge == "pad" else axis_starts_aligned
    return [(y, x) for y in starts(height, size, stride) for x in starts(width, size, stride)]


def split_grid(height: int, width: int, size: int, stride: int, overlapping: bool) -> list[tuple[int, int]]:
    """The windows ``prepare`` cuts for one split.

    ``overlapping`` splits (training; predictions that are stitched back) step by ``stride`` and align
    the last window with the edge, so a patch is padded only when the raster is smaller than a window.
    Evaluated splits never overlap, so each pixel is scored once: stride = size, edges padded with ignore.
    """
    if overlapping:
        return patch_grid(height, width, size, stride, edge="align")
    return patch_grid(height, width, size, size, edge="pad")


def valid_extent(height: int, width: int, y: int, x: int, size: int) -> tuple[int, int]:
    """Height and width of the part of the window at (y, x) that lies inside the raster."""
    return min(size, height - y), min(size, width - x)


def extract_patch(array: np.ndarray, y: int, x: int, size: int, fill: int) -> np.ndarray:
    """The ``size``×``size`` window at (y, x) of an H×W or H×W×C array, padded bottom/right with ``fill``."""
    window = array[y : y + size, x : x + size]
    if window.shape[:2] == (size, size):
        return window.copy()
    patch = np.full((size, size, *array.shape[2:]), fill, dtype=array.dtype)
    patch[: window.shape[0], : window.shape[1]] = window
    return patch


def write_patches(
    split_dir: Path,
    image: np.ndarray,
    mask: np.ndarray | None,
    origins: list[tuple[int, int]],
    size: int,
    name: Callable[[int, int], str],
    meta: dict,
    image_fill: int = 0,
    mask_fill: int = 255,
) -> list[dict]:
    """Write the windows at ``origins`` to ``split_dir/{images,masks}/<name(y, x)>.png``; return their records.

    Each record holds the patch id, ``meta`` (e.g. the tile), the origin, the valid (unpadded) size and
    the source size: what stitching and evaluation need. ``mask`` None writes images only (private labels).
    """
    height, width = image.shape[:2]
    records = []
    for y, x in origins:
        pid = name(y, x)
        write_png(split_dir / "images" / f"{pid}.png", extract_patch(image, y, x, size, image_fill))
        if mask is not None:
            write_png(split_dir / "masks" / f"{pid}.png", extract_patch(mask, y, x, size, mask_fill))
        valid_h, valid_w = valid_extent(height, width, y, x, size)
        records.append({"id": pid, **meta, "y": y, "x": x, "height": valid_h, "width": valid_w,
                        "tile_height": height, "tile_width": width})
    return records


# --------------------------------------------------------------------------------------------------
# Checks before preparing


def check_prepare_window(patch_size: object, stride: object) -> int:
    """The stride to use (``None``: the patch size); DataErrors in the CLI's words for bad values."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer) or patch_size < 1:
        raise DataError(f"--patch-size must be a positive integer, got {patch_size!r}")
    if stride is None:
        return int(patch_size)
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or not 1 <= stride <= patch_size:
        raise DataError(
            f"--stride must be between 1 and --patch-size ({patch_size}), got {stride!r}: a larger stride "
            "would skip pixels; leave it out to cut without overlap"
        )
    return int(stride)


def raster_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` of an image file from its header, without decoding the pixels.

    None when the header cannot be read: reading the pixels later reports the damaged file.
    """
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tiff:
                series = tiff.series[0]
                axes, shape = series.axes, series.shape
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        with Image.open(path) as image:
            width, height = image.size
        return int(height), int(width)
    except Exception:  # noqa: BLE001 — any failure: the decoder reports it in order
        return None


DEFAULT_PATCH_SIZE = 1024  # rsseg prepare's default: accepted whatever the tiles (small subsets, synthetic twins)


def _largest(sizes: Mapping[Path, tuple[int, int] | None]) -> tuple[Path, tuple[int, int]] | None:
    """The raster with the longest side (ties: by path), among those whose size is known."""
    known = [(path, size) for path, size in sizes.items() if size is not None]
    return max(known, key=lambda item: (max(item[1]), str(item[0])), default=None)


def check_patch_fits(sizes: Mapping[Path, tuple[int, int] | None], patch_size: int, word: str = "tile") -> None:
    """DataError when ``patch_size`` exceeds the longest side of every source raster (``sizes``: path →
    size from the header, None when unreadable) and the default patch size.

    Such patches would be mostly padding, and padding one costs ``patch_size``² per band (27.9 GiB of
    image for ``--patch-size 100000``), so it is refused before anything is allocated or written. The
    default (1024) stays accepted on small sources (test fixtures, synthetic twins of about 1000 px):
    a few padded MiB, and a command that works everywhere without arguments.
    """
    largest = _largest(sizes)
    if largest is None or patch_size <= max(*largest[1], DEFAULT_PATCH_SIZE):
        return
    path, (height, width) = largest
    raise DataError(
        f"--patch-size {patch_size} is larger than the largest source {word}, {path} ({height}×{width}): "
        f"every patch would be mostly padding; choose --patch-size {max(height, width)} or less"
    )


def patched_bytes(
    source_bytes: int, height: int, width: int, size: int, stride: int, overlapping: bool
) -> int:
    """Estimated bytes of the patches ``split_grid`` cuts from a raster whose files take ``source_bytes``.

    The patches are compressed like the sources, so they take the sources' bytes per pixel times the
    area they cover: every window in full (padding and overlap included) over the raster's area.
    """
    windows = len(split_grid(height, width, size, stride, overlapping))
    return int(source_bytes * windows * size * size / (height * width))
