"""A small synthetic ISPRS Vaihingen in the official on-disk layout.

``make bench DATASET=vaihingen`` must run without the real data, so rsseg writes a few synthetic areas
where and how the three ISPRS Vaihingen archives put them::

    dst/top/top_mosaic_09cm_area{N}.tif                    IR-R-G false colour uint8 GeoTIFF
    dst/top_mosaic_09cm_area{N}.tif                        RGB colour labels, flat, same name as the image
    dst/ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/top_mosaic_09cm_area{N}_noBoundary.tif
    dst/README_SYNTHETIC.txt

and ``rsseg prepare vaihingen --src dst`` then treats it like the real download.

Each area is the suburban scene of ``scene.py`` (5 cm GSD) rendered 1.8× larger than the area and
shrunk to the area size, which gives Vaihingen's 9 cm GSD (area averaging for the image, nearest
pixel centre for the labels). The false colour is made from the rendered RGB: a near-infrared band
from the pixel's brightness times a per-material NIR gain (vegetation reflects strongly, water hardly
at all, shadows stay dark), stacked as IR-R-G like the real tiles, so vegetation shows bright red.
Areas have different odd sizes, as the real ones do. Everything random comes from one generator per
area seeded from ``(seed, area)``, so files are byte-identical for a given seed and environment.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from rsseg.data.datasets.isprs.labels import ISPRS_CLASSES, ISPRS_PALETTE, encode_isprs_label
from rsseg.data.synthetic.files import write_text_atomically
from rsseg.data.synthetic.potsdam import BOUNDARY_RADIUS, erode_label, geotiff_tags, write_geotiff
from rsseg.data.synthetic.scene import MATERIAL_ISPRS_CLASS, MATERIAL_NAMES, render_scene

__all__ = ["SYNTH_VAIHINGEN_AREAS", "render_synthetic_area", "write_synthetic_vaihingen"]

# area -> (height, width): odd sizes, all different, as the real areas (≈2000×2500) are.
SYNTH_VAIHINGEN_AREAS: dict[str, tuple[int, int]] = {
    # UNetFormer-protocol training areas (official: training)
    "1": (947, 713),
    "3": (761, 1013),
    "5": (883, 827),
    "7": (659, 971),
    # UNetFormer-protocol validation area (official: training)
    "30": (829, 877),
    # official test areas
    "2": (1009, 653),
    "4": (701, 919),
    "6": (617, 853),
}

IMAGE_DIR = "top"
ERODED_DIR = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
GSD = 0.09  # metres per pixel
SCENE_GSD = 0.05  # the scene generator's pixel size
EPSG = 32632  # WGS 84 / UTM zone 32N
# Near-infrared gain per material, applied to the rendered brightness (MATERIAL_NAMES order).
_NIR_GAIN = {
    "asphalt": 0.9, "sidewalk": 1.0, "yard": 1.0, "parking lot": 0.9, "roof": 1.15, "lawn": 2.4,
    "verge": 2.2, "tree": 2.6, "car": 1.0, "soil": 1.25, "rubble": 1.05, "water": 0.35, "bin": 1.0,
}  # fmt: skip
NIR_GAIN = np.array([_NIR_GAIN[name] for name in MATERIAL_NAMES], dtype=np.float32)
_LUMA = np.array((0.299, 0.587, 0.114), dtype=np.float32)


def false_colour(rgb: np.ndarray, materials: np.ndarray) -> np.ndarray:
    """IR-R-G false colour of a rendered RGB scene: IR = brightness × the material's NIR gain."""
    ir = (rgb.astype(np.float32) @ _LUMA) * NIR_GAIN[materials]
    ir = np.clip(np.rint(ir), 0, 255).astype(np.uint8)
    return np.dstack([ir, rgb[..., 0], rgb[..., 1]])


def render_synthetic_area(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic area at 9 cm: ``(image uint8 H×W×3 IR-R-G, label uint8 H×W with ISPRS classes 0–5)``."""
    scale = GSD / SCENE_GSD
    rgb, materials = render_scene(round(height * scale), round(width * scale), rng)
    irrg = false_colour(rgb, materials)
    image = cv2.resize(irrg, (width, height), interpolation=cv2.INTER_AREA)
    materials = cv2.resize(materials, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, MATERIAL_ISPRS_CLASS[materials]


def _geotags(area: str) -> list[tuple]:
    """A tie point per area on a 250 m grid near Vaihingen an der Enz (the real CRS is not the point)."""
    index = int(area) - 1
    return geotiff_tags(496_000.0 + (index % 8) * 250.0, 5_421_000.0 - (index // 8) * 250.0, GSD, EPSG)


def _readme(seed: int, areas: dict[str, tuple[int, int]]) -> str:
    lines = [
        "SYNTHETIC DATA - NOT ISPRS VAIHINGEN",
        "",
        "Written by rsseg (rsseg.data.synthetic.vaihingen.write_synthetic_vaihingen) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        "layout (official ISPRS Vaihingen names):",
        f"  {IMAGE_DIR}/top_mosaic_09cm_area{{N}}.tif            IR-R-G uint8 GeoTIFF, 9 cm, EPSG:{EPSG}",
        "  top_mosaic_09cm_area{N}.tif                RGB colour labels (same name as the image)",
        f"  {ERODED_DIR}/top_mosaic_09cm_area{{N}}_noBoundary.tif",
        f"                                             labels, boundary (r={BOUNDARY_RADIUS} px) black",
        "colour code (RGB): " + ", ".join(f"{n} {rgb}" for n, rgb in zip(ISPRS_CLASSES, ISPRS_PALETTE, strict=True))
        + ", boundary (0, 0, 0)",
        "areas (N: height x width):",
    ]
    lines += [f"  {area}: {h} x {w}" for area, (h, w) in areas.items()]
    return "\n".join(lines) + "\n"


def _check_areas(areas: dict) -> dict[str, tuple[int, int]]:
    checked = {}
    for area, size in areas.items():
        if not str(area).isdigit() or int(area) < 1:
            raise ValueError(f"area id {area!r} is not a positive number (e.g. 30 or '30')")
        if len(size) != 2 or min(int(size[0]), int(size[1])) < 32:
            raise ValueError(f"area {area}: size must be (height, width) of at least 32 px, got {size!r}")
        checked[str(int(area))] = (int(size[0]), int(size[1]))
    return checked


def write_synthetic_vaihingen(dst: str | Path, seed: int = 0, tiles: dict | None = None) -> list[Path]:
    """Write a synthetic ISPRS Vaihingen under ``dst`` in the official layout; return the written files.

    ``tiles`` maps area numbers (``30`` or ``"30"``) to ``(height, width)`` (default
    ``SYNTH_VAIHINGEN_AREAS``). The returned list holds, per area in order, the IRRG image, the full
    label and the eroded label, then ``README_SYNTHETIC.txt``. Files are written atomically; the same
    ``seed`` gives byte-identical files.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    areas = _check_areas(SYNTH_VAIHINGEN_AREAS if tiles is None else tiles)
    dst = Path(dst)
    for sub in (IMAGE_DIR, ERODED_DIR):
        (dst / sub).mkdir(parents=True, exist_ok=True)

    def write_area(area: str, size: tuple[int, int]) -> list[Path]:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(f"area{area}".encode())]))
        image, label = render_synthetic_area(size[0], size[1], rng)
        tags = _geotags(area)
        name = f"top_mosaic_09cm_area{area}"
        files = (
            (dst / IMAGE_DIR / f"{name}.tif", image, False),
            (dst / f"{name}.tif", encode_isprs_label(label), True),
            (dst / ERODED_DIR / f"{name}_noBoundary.tif", encode_isprs_label(erode_label(label)), True),
        )
        for path, array, compress in files:
            write_geotiff(path, array, tags, compress)
        return [path for path, _, _ in files]

    # Areas are independent (one generator each), so threads change nothing in the output.
    workers = max(1, min(len(areas), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_area = list(pool.map(write_area, areas.keys(), areas.values()))
    written = [path for paths in per_area for path in paths]
    readme = dst / "README_SYNTHETIC.txt"
    write_text_atomically(readme, _readme(int(seed), areas))
    written.append(readme)
    return written
