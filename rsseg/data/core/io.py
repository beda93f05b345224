"""Reading and writing raster files with the failure modes of real downloads turned into DataErrors.

Real archives arrive truncated or half-extracted; tifffile then raises, or quietly returns an empty
array. Both become a ``DataError`` that names the file, instead of a numpy error three calls later.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from rsseg.data.core.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 writes several times faster than the default 6


# The fix read_image suggests for a damaged raw file; a prepared patch is repaired by rebuilding its
# root instead, so readers of prepared patches drop this and say that (see ``PreparedPatchDataset``).
RAW_FILE_FIX = ", re-extract it from the archive"


def read_image(path: str | Path) -> np.ndarray:
    """Read a raster as uint8, H×W×C (bands last) or H×W for a single band.

    1-bit masks and 16-bit files whose values fit in 8 bits are converted losslessly (LAVT-lineage
    loaders read such masks). Raises DataError naming ``path`` when the file is missing, unreadable,
    truncated, empty or holds values beyond 8 bits.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + PIL_SUFFIXES:
        raise DataError(
            f"{path}: unsupported image format {suffix!r} (expected one of "
            f"{', '.join(TIFF_SUFFIXES + PIL_SUFFIXES)})"
        )
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if suffix in TIFF_SUFFIXES:
            array = _read_tiff(path)
        else:
            with Image.open(path) as image:
                image.load()  # decode now, so a truncated file fails here and not later
                array = np.array(image)  # a writable copy: asarray of a PIL image is read-only
    except Exception as error:  # any decoder failure means an unusable file
        raise DataError(
            f"{path}: cannot read image ({type(error).__name__}: {error}); "
            f"the file may be corrupt or truncated{RAW_FILE_FIX}"
        ) from error
    if array.ndim not in (2, 3) or array.size == 0:
        raise DataError(
            f"{path}: cannot read image (decoded shape {array.shape}); "
            f"the file may be corrupt or truncated{RAW_FILE_FIX}"
        )
    if array.dtype == np.bool_ or (array.dtype == np.uint16 and array.max(initial=0) <= 255):
        array = array.astype(np.uint8)  # 1-bit masks and 16-bit files holding 8-bit values: lossless
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected 8-bit pixels, found {array.dtype} (values up to {array.max()})")
    return array


def _read_tiff(path: Path) -> np.ndarray:
    """First image of a TIFF, bands last (planar files decode as S×Y×X)."""
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        array = series.asarray()
        axes = series.axes
    if array.ndim == 3 and axes[0] in "SC" and axes[1:] == "YX":
        array = np.moveaxis(array, 0, -1)
    return array


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write an H×W (index mask) or H×W×3 (RGB) uint8 array as a lossless PNG."""
    if array.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8, got {array.dtype}")
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
