"""A small synthetic ISPRS Potsdam in the official on-disk layout.

``make bench DATASET=potsdam`` must run on a fresh machine without the real data, so rsseg writes
a handful of synthetic tiles exactly where and how the ISPRS archives put them::

    dst/2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.tif                               RGB uint8 GeoTIFF
    dst/5_Labels_all/top_potsdam_{r}_{c}_label.tif                            RGB colour labels
    dst/5_Labels_all_noBoundary/top_potsdam_{r}_{c}_label_noBoundary.tif      eroded labels (black edges)
    dst/README_SYNTHETIC.txt

and ``rsseg prepare potsdam --src dst`` then treats it like the real download.

Each tile is a small suburban scene at 5 cm GSD (``scene.py``), drawn first as a *material* map (asphalt, sidewalk,
paved yard, parking lot, roof, lawn, verge, tree crown, car, soil, rubble, water, bins), which fixes
the label (material → ISPRS class) before any pixel colour exists. The image is then rendered from
that map: a per-object base colour (roof colours, car colours and crown tones vary), per-material
texture from multi-scale noise, geometric shading (roof facets lit by the sun, crowns shaded as
domes, car windows), lane marks, cast shadows of buildings, trees and cars on the ground, and mild
global illumination, blur and sensor noise. Labels and image therefore agree pixel for pixel, classes
are separable by colour + texture + shape, but not by colour alone (grey roofs vs asphalt, shadows,
red cars vs red roofs vs soil).

Everything random comes from one ``numpy.random.Generator`` per tile, seeded from ``(seed, tile id)``,
so the files are byte-identical for a given seed and environment.
"""

from __future__ import annotations

import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import tifffile

from rsseg.data.datasets.isprs.labels import ISPRS_CLASSES, ISPRS_PALETTE, encode_isprs_label
from rsseg.data.synthetic.files import write_atomically, write_text_atomically
from rsseg.data.synthetic.scene import MATERIAL_ISPRS_CLASS, render_scene

__all__ = [
    "SYNTH_POTSDAM_TILES", "erode_label", "geotiff_tags", "render_synthetic_tile", "write_geotiff",
    "write_synthetic_potsdam",
]

# tile id -> (height, width). Sizes are deliberately not multiples of 256/512 and differ per tile so
# that tiling, padding and edge coverage are exercised.
SYNTH_POTSDAM_TILES: dict[str, tuple[int, int]] = {
    # UNetFormer-protocol training tiles
    "2_11": (1100, 1337),
    "3_10": (1213, 1061),
    "4_10": (1297, 1153),
    "6_7": (1031, 1409),
    "6_8": (1187, 1279),
    # UNetFormer-protocol validation tile
    "2_10": (1061, 1187),
    # official test tiles
    "2_13": (1153, 1297),
    "3_13": (1259, 1109),
    "4_14": (1009, 1381),
    # excluded by the UNetFormer protocol ("error annotations" in the real data)
    "7_10": (1019, 1063),
}

IMAGE_DIR = "2_Ortho_RGB"
LABEL_DIR = "5_Labels_all"
ERODED_DIR = "5_Labels_all_noBoundary"
BOUNDARY_RADIUS = 3  # px, disk, as the ISPRS eroded labels
GSD = 0.05  # metres per pixel
EPSG = 25832  # ETRS89 / UTM zone 32N
_TILE_ID = re.compile(r"^(\d+)_(\d+)$")
def render_synthetic_tile(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: ``(image uint8 H×W×3 RGB, label uint8 H×W with ISPRS classes 0–5)``."""
    image, materials = render_scene(height, width, rng)
    return image, MATERIAL_ISPRS_CLASS[materials]


def erode_label(label: np.ndarray, radius: int = BOUNDARY_RADIUS, ignore_index: int = 255) -> np.ndarray:
    """ISPRS-style eroded labels: pixels within ``radius`` px (disk) of a class boundary become ignore."""
    r = np.arange(-radius, radius + 1)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)
    lo = cv2.erode(label, disk, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(label, disk, borderType=cv2.BORDER_REPLICATE)
    return np.where(lo == hi, label, np.uint8(ignore_index)).astype(np.uint8)


def geotiff_tags(easting: float, northing: float, gsd: float, epsg: int) -> list[tuple]:
    """Minimal GeoTIFF tags for tifffile's ``extratags``: square ``gsd`` pixels, the upper-left corner
    at (``easting``, ``northing``), a projected CRS ``epsg`` in metres."""
    geokeys = (1, 1, 0, 4,  # version 1.1.0, 4 keys
               1024, 0, 1, 1,  # GTModelTypeGeoKey = ModelTypeProjected
               1025, 0, 1, 1,  # GTRasterTypeGeoKey = RasterPixelIsArea
               3072, 0, 1, epsg,  # ProjectedCSTypeGeoKey
               3076, 0, 1, 9001)  # ProjLinearUnitsGeoKey = metre
    return [
        (33550, 12, 3, (gsd, gsd, 0.0), True),  # ModelPixelScaleTag
        (33922, 12, 6, (0.0, 0.0, 0.0, easting, northing, 0.0), True),  # ModelTiepointTag
        (34735, 3, len(geokeys), geokeys, True),  # GeoKeyDirectoryTag
    ]


def _geotags(tile_id: str) -> list[tuple]:
    """Potsdam's tags: 5 cm pixels, a tie point per tile, ETRS89 / UTM 32N."""
    r, c = (int(x) for x in tile_id.split("_"))
    easting = 776_000.0 + (c - 7) * 6000 * GSD  # the real tiles are 6000 px = 300 m apart
    northing = 5_813_000.0 - (r - 2) * 6000 * GSD
    return geotiff_tags(easting, northing, GSD, EPSG)


def write_geotiff(path: Path, array: np.ndarray, tags: list[tuple], compress: bool) -> None:
    """A contiguous 3-band uint8 (Geo)TIFF, written atomically; zlib-compressed if ``compress``."""
    write_atomically(path, lambda tmp: tifffile.imwrite(
        tmp, np.ascontiguousarray(array), photometric="rgb", planarconfig="contig",
        compression="zlib" if compress else None, metadata=None, extratags=tags))


def _readme(seed: int, tiles: dict[str, tuple[int, int]]) -> str:
    lines = [
        "SYNTHETIC DATA - NOT ISPRS POTSDAM",
        "",
        "Written by rsseg (rsseg.data.synthetic.potsdam.write_synthetic_potsdam) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        "layout (official ISPRS Potsdam names):",
        f"  {IMAGE_DIR}/top_potsdam_{{r}}_{{c}}_RGB.tif                       RGB uint8 GeoTIFF, 5 cm, EPSG:{EPSG}",
        f"  {LABEL_DIR}/top_potsdam_{{r}}_{{c}}_label.tif                    RGB colour labels",
        f"  {ERODED_DIR}/top_potsdam_{{r}}_{{c}}_label_noBoundary.tif  labels, boundary (r={BOUNDARY_RADIUS} px) black",
        "colour code (RGB): " + ", ".join(f"{n} {rgb}" for n, rgb in zip(ISPRS_CLASSES, ISPRS_PALETTE, strict=True))
        + ", boundary (0, 0, 0)",
        "tiles (id: height x width):",
    ]
    lines += [f"  {tid}: {h} x {w}" for tid, (h, w) in tiles.items()]
    return "\n".join(lines) + "\n"


def write_synthetic_potsdam(dst: str | Path, seed: int = 0, tiles: dict | None = None) -> list[Path]:
    """Write a synthetic ISPRS Potsdam under ``dst`` in the official layout and return the written files.

    ``tiles`` maps tile ids ``"{r}_{c}"`` to ``(height, width)`` (default ``SYNTH_POTSDAM_TILES``).
    The returned list holds, per tile in order, the RGB image, the full label and the eroded label,
    followed by ``README_SYNTHETIC.txt``. Each file is written under a hidden temporary name and
    renamed into place, so an interrupted run never leaves a partial file under its final name.
    The same ``seed`` gives byte-identical files.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tiles = dict(SYNTH_POTSDAM_TILES if tiles is None else tiles)
    for tile_id, size in tiles.items():
        if not _TILE_ID.match(str(tile_id)):
            raise ValueError(f"tile id {tile_id!r} is not of the form '<row>_<col>' (e.g. '2_10')")
        if len(size) != 2 or min(int(size[0]), int(size[1])) < 32:
            raise ValueError(f"tile {tile_id}: size must be (height, width) of at least 32 px, got {size!r}")
    dst = Path(dst)
    for sub in (IMAGE_DIR, LABEL_DIR, ERODED_DIR):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    def write_tile(tile_id: str, size: tuple[int, int]) -> list[Path]:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(tile_id.encode())]))
        image, label = render_synthetic_tile(int(size[0]), int(size[1]), rng)
        tags = _geotags(tile_id)
        stem = f"top_potsdam_{tile_id}"
        files = (
            (dst / IMAGE_DIR / f"{stem}_RGB.tif", image, False),
            (dst / LABEL_DIR / f"{stem}_label.tif", encode_isprs_label(label), True),
            (dst / ERODED_DIR / f"{stem}_label_noBoundary.tif", encode_isprs_label(erode_label(label)), True),
        )
        for path, array, compress in files:
            write_geotiff(path, array, tags, compress)
        return [f[0] for f in files]

    # Tiles are independent (one generator each), so threads change nothing in the output; numpy and
    # OpenCV release the GIL for the heavy array work.
    workers = max(1, min(len(tiles), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_tile = list(pool.map(write_tile, tiles.keys(), tiles.values()))
    written: list[Path] = [path for paths in per_tile for path in paths]
    readme = dst / "README_SYNTHETIC.txt"
    write_text_atomically(readme, _readme(int(seed), tiles))
    written.append(readme)
    return written
