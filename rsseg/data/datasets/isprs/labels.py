"""What Potsdam and Vaihingen share: the ISPRS 2D labelling colour code, bands and metric convention.

Labels ship as RGB colour images. Decoding uses an exact-match table in RGB order (never BGR reads);
the black boundary of the eroded ``noBoundary`` labels and any unknown colour become ``ignore_index``
and never a class (torchgeo#1727: an overlay image silently decoded as all clutter).

Bands (docs/datasets.md §8.9): Potsdam ships RGB, IRRG (IR-R-G false colour) and RGBIR (4 bands); Vaihingen
only IRRG. Images are normalised per band with the ImageNet statistics of the band's own colour, and the
near-infrared band borrows the red statistics (ImageNet has no IR; red is its nearest neighbour in
wavelength). RGB therefore gets exactly the ImageNet mean/std.

Metric convention per protocol: ``unetformer`` (GeoSeg papers) leaves clutter out of mIoU/mF1 (it is
still trained and counted in OA); ``official`` (ISPRS tile lists, as mmseg evaluates) includes it.
"""

from __future__ import annotations

import numpy as np

from rsseg.data.core.palette import decode_colours, pack_rgb
from rsseg.data.core.prepare import SplitProtocol
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec

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


def decode_isprs_label(rgb: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, int, int]:
    """Map an H×W×3 RGB label to class indices.

    Returns ``(mask, n_boundary, n_unknown)``: ``mask`` is uint8 with classes 0–5 and ``ignore_index``
    for boundary black and unknown colours; the counts let callers warn about unknown colours.
    """
    mask, known, codes = decode_colours(rgb, ISPRS_PALETTE, ignore_index)
    boundary = codes == pack_rgb(ISPRS_BOUNDARY_RGB)
    n_boundary = int(boundary.sum())
    n_unknown = int((~known & ~boundary).sum())
    return mask, n_boundary, n_unknown


def encode_isprs_label(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Class indices back to the official RGB colours; ignore becomes boundary black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(ISPRS_PALETTE)] = np.array(ISPRS_PALETTE, dtype=np.uint8)
    lut[ignore_index] = ISPRS_BOUNDARY_RGB
    return lut[mask]


# --------------------------------------------------------------------------------------------------
# Bands

BANDS: dict[str, tuple[str, ...]] = {
    "RGB": ("R", "G", "B"),
    "IRRG": ("IR", "R", "G"),
    "RGBIR": ("R", "G", "B", "IR"),
}
# ImageNet mean/std per colour (0–1 scale); IR borrows red's.
BAND_STATISTICS: dict[str, tuple[float, float]] = {
    "R": (0.485, 0.229),
    "G": (0.456, 0.224),
    "B": (0.406, 0.225),
    "IR": (0.485, 0.229),
}


def check_bands(bands: str, allowed: tuple[str, ...] = tuple(BANDS)) -> str:
    """``bands`` if it is one of ``allowed``, else a ValueError listing them."""
    if bands not in allowed:
        raise ValueError(f"bands must be one of {', '.join(allowed)}, got {bands!r}")
    return bands


def band_statistics(bands: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band ``(mean, std)`` on the 0–1 scale, in the band order of ``bands``."""
    order = BANDS[check_bands(bands)]
    return (
        tuple(BAND_STATISTICS[band][0] for band in order),
        tuple(BAND_STATISTICS[band][1] for band in order),
    )


# --------------------------------------------------------------------------------------------------
# Label and metric convention

TEST_LABEL_KINDS = ("eroded", "full")
CLUTTER_EXCLUDED_PROTOCOLS = ("unetformer",)


def isprs_spec(name: str, protocol: SplitProtocol, test_labels: str = "eroded") -> DatasetSpec:
    """Label and metric convention of an ISPRS dataset under ``protocol``.

    Clutter is excluded from mIoU/mF1 under ``unetformer`` (GeoSeg) and included under ``official``
    (mmseg, mmsegmentation#3816); it is trained and counted in OA either way.
    """
    if test_labels not in TEST_LABEL_KINDS:
        raise ValueError(f"test_labels must be one of {TEST_LABEL_KINDS}, got {test_labels!r}")
    excluded = protocol.name in CLUTTER_EXCLUDED_PROTOCOLS
    metrics = (
        "clutter is trained and counted in OA, left out of mIoU/mF1 (UNetFormer convention)"
        if excluded
        else "all six classes, clutter included, enter mIoU/mF1 and OA (mmseg convention)"
    )
    return DatasetSpec(
        name=name,
        classes=ISPRS_CLASSES,
        palette=ISPRS_PALETTE,
        protocol=protocol.name,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(CLUTTER,) if excluded else (),
        eroded_test_labels=test_labels == "eroded",
        notes={
            "splits": protocol.description,
            "metrics": metrics,
            "labels": f"train/val full labels; test {test_labels} labels",
        },
    )
