"""A small synthetic LoveDA in the official on-disk layout.

``make bench DATASET=loveda`` must run without the real data, so rsseg writes a few synthetic scenes
exactly where and how the LoveDA archives put them::

    dst/{Train,Val}/{Urban,Rural}/images_png/<id>.png   RGB uint8 PNG, size × size (1024 by default)
    dst/{Train,Val}/{Urban,Rural}/masks_png/<id>.png    single-band uint8, raw values 0 (no-data), 1–7
    dst/Test/{Urban,Rural}/images_png/<id>.png          no masks, as in the real release
    dst/README_SYNTHETIC.txt

Ids are consecutive integers over Train, Val and Test (Rural before Urban within a split), unique
across scenes and splits like the real ids, so Train and Val can be merged and the flat submission
zip works.

Each image is a suburban scene from ``scene.py`` whose materials map to LoveDA classes (asphalt,
parking lots and cars → road, roofs → building, trees → forest, soil and rubble → barren, water →
water, the rest → background). Rural scenes turn their lawns into agriculture, repainted as field
parcels with crop rows, so agriculture looks different from the Urban lawns that stay background;
every Rural scene (and every other Urban one) also gets a river or pond. Labels and pixels agree by
construction. About half the images get a no-data border (black pixels, raw mask 0), as after
georegistration in the real data (LoveDA#23), to exercise the ignore mapping.

Scale: the scene is drawn at ~5 cm GSD; real LoveDA is 0.3 m. Rendering 6× larger and downsampling
would cost minutes, so scenes of at least ``MIN_RENDER`` px are rendered at ``size`` and accepted as
is (objects look ~6× larger than in LoveDA); smaller sizes are rendered at twice their size, up to
``MIN_RENDER``, and downsampled (INTER_AREA for images, nearest for labels), so that 256 px images
still show whole houses and roads while the tiny sizes used in tests stay cheap.

Everything random comes from one ``numpy.random.Generator`` per image, seeded from ``(seed, id)``,
so the files are byte-identical for a given seed and environment.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from rsseg.data.core.io import PNG_COMPRESS_LEVEL
from rsseg.data.core.spec import IGNORE_INDEX
from rsseg.data.datasets.loveda import LOVEDA_CLASSES, LOVEDA_PALETTE, encode_loveda_mask
from rsseg.data.synthetic.files import write_atomically, write_text_atomically
from rsseg.data.synthetic.scene import MATERIAL_NAMES, render_scene

__all__ = ["SYNTH_LOVEDA_PER_SPLIT", "render_synthetic_loveda", "write_synthetic_loveda"]

SYNTH_LOVEDA_PER_SPLIT = (6, 2, 2)  # images in Train, Val, Test (each split: half Rural, half Urban)
SPLITS = ("Train", "Val", "Test")
SCENES_IN_ID_ORDER = ("Rural", "Urban")
MIN_RENDER = 512  # px; smaller scenes show few complete houses or roads
MIN_SIZE = 64

_CLASS = {name: index for index, name in enumerate(LOVEDA_CLASSES)}
_URBAN = {
    "asphalt": "road", "sidewalk": "background", "yard": "background", "parking lot": "road",
    "roof": "building", "lawn": "background", "verge": "background", "tree": "forest", "car": "road",
    "soil": "barren", "rubble": "barren", "water": "water", "bin": "background",
}  # fmt: skip
_RURAL = {**_URBAN, "lawn": "agriculture"}
MATERIAL_LOVEDA_CLASS = {
    scene: np.array([_CLASS[mapping[name]] for name in MATERIAL_NAMES], dtype=np.uint8)
    for scene, mapping in (("Urban", _URBAN), ("Rural", _RURAL))
}
_MAT = {name: index for index, name in enumerate(MATERIAL_NAMES)}

_CROP_COLOURS = (  # RGB of field parcels: young and ripe crops, stubble, ploughed soil, paddies
    (98, 138, 58), (126, 158, 72), (150, 160, 84), (186, 176, 104), (158, 126, 88), (84, 118, 88),
)  # fmt: skip
_WATER_RGB = (46, 78, 92)
# what a river passes under rather than over: bridges (roads, cars), houses, overhanging crowns
_ABOVE_WATER = tuple(_MAT[name] for name in ("asphalt", "parking lot", "car", "roof", "tree"))


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth unit-variance noise with features of about ``scale`` px."""
    small = rng.standard_normal((h // scale + 2, w // scale + 2), dtype=np.float32)
    field = cv2.resize(small, ((w // scale + 2) * scale, (h // scale + 2) * scale), interpolation=cv2.INTER_CUBIC)
    field = field[:h, :w]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _paint_fields(image: np.ndarray, fields: np.ndarray, rng: np.random.Generator) -> None:
    """Repaint ``fields`` pixels as rectangular parcels with crop rows and darker ridges between them."""
    h, w = fields.shape
    grain = _noise(rng, h, w, 32)[fields]
    ys, xs = np.nonzero(fields)
    ys, xs = ys.astype(np.float32), xs.astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    cell_u, cell_v = rng.uniform(0.18, 0.4) * h, rng.uniform(0.08, 0.2) * h
    cu, cv = np.floor(u / cell_u).astype(np.int64), np.floor(v / cell_v).astype(np.int64)
    if cu.size == 0:
        return
    cu, cv = cu - cu.min(), cv - cv.min()
    parcel = cu * (int(cv.max()) + 1) + cv  # index of the parcel on the rotated grid
    n = int(parcel.max()) + 1
    colours = np.array(_CROP_COLOURS, dtype=np.float32)[rng.integers(len(_CROP_COLOURS), size=n)]
    colours += rng.normal(0, 6, size=colours.shape).astype(np.float32)
    period = rng.uniform(7, 14, size=n).astype(np.float32)  # crop rows along each parcel's long side
    rows = np.sin(2 * np.pi * v / period[parcel])
    texture = colours[parcel] * (1 + 0.09 * rows + 0.05 * grain)[:, None]
    ridge = (np.mod(u, cell_u) < 3) | (np.mod(v, cell_v) < 3)
    texture[ridge] *= 0.78
    texture += 3.0 * rng.standard_normal(texture.shape, dtype=np.float32)
    image[fields] = np.clip(0.15 * image[fields] + 0.85 * texture, 0, 255)


def _water_body(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A meandering river across the scene, or a pond: a boolean mask."""
    h, w = shape
    mask = np.zeros((h, w), dtype=np.uint8)
    if rng.random() < 0.6:
        angle = rng.uniform(0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        centre = np.array([w, h]) * rng.uniform(0.3, 0.7, size=2)
        t = np.linspace(-1.5, 1.5, 80) * max(h, w)
        sway = rng.uniform(0.03, 0.08) * max(h, w) * np.sin(t / max(h, w) * rng.uniform(3, 7) + rng.uniform(0, 6.3))
        points = centre + t[:, None] * direction + sway[:, None] * normal
        width = int(rng.uniform(0.05, 0.1) * min(h, w))
        cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, thickness=max(width, 3))
    else:
        phi = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        radius = rng.uniform(0.08, 0.16) * min(h, w) * (1 + 0.15 * np.sin(3 * phi + rng.uniform(0, 6.3)))
        centre = np.array([w, h]) * rng.uniform(0.2, 0.8, size=2)
        ring = centre + radius[:, None] * np.stack([np.cos(phi) * rng.uniform(0.7, 1.4), np.sin(phi)], 1)
        cv2.fillPoly(mask, [np.round(ring).astype(np.int32)], 1)
    return mask.astype(bool)


def _paint_water(image: np.ndarray, water: np.ndarray, rng: np.random.Generator) -> None:
    h, w = water.shape
    base = np.array(_WATER_RGB, dtype=np.float32) + rng.normal(0, 6, size=3).astype(np.float32)
    ripple = 6 * _noise(rng, h, w, 48) + 2 * rng.standard_normal((h, w), dtype=np.float32)
    image[water] = np.clip(base + ripple[water][:, None], 0, 255)


def _nodata_region(size: int, rng: np.random.Generator) -> np.ndarray:
    """A black border as left by georegistration: a strip along one side or a corner wedge."""
    mask = np.zeros((size, size), dtype=np.uint8)
    depth = int(rng.uniform(0.04, 0.12) * size) + 1
    if rng.random() < 0.6:
        side = rng.integers(4)
        if side == 0:
            mask[:depth] = 1
        elif side == 1:
            mask[-depth:] = 1
        elif side == 2:
            mask[:, :depth] = 1
        else:
            mask[:, -depth:] = 1
    else:
        corner = np.array([(0, 0), (size, 0), (size, size), (0, size)][rng.integers(4)], dtype=np.float64)
        towards = np.array([size / 2, size / 2]) - corner
        a = corner + np.array([towards[0], 0]) * rng.uniform(0.3, 0.9)
        b = corner + np.array([0, towards[1]]) * rng.uniform(0.3, 0.9)
        cv2.fillPoly(mask, [np.round(np.stack([corner, a, b])).astype(np.int32)], 1)
    return mask.astype(bool)


def render_synthetic_loveda(
    size: int, scene: str, rng: np.random.Generator, nodata: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic LoveDA image: ``(RGB uint8 size×size×3, training mask uint8: 0–6, 255 = no-data)``."""
    render = max(size, min(2 * size, MIN_RENDER))
    image, materials = render_scene(render, render, rng)
    image = image.astype(np.float32)
    if scene == "Rural":
        _paint_fields(image, materials == _MAT["lawn"], rng)
    if scene == "Rural" or rng.random() < 0.5:
        water = _water_body(materials.shape, rng) & ~np.isin(materials, _ABOVE_WATER)
        _paint_water(image, water, rng)
        materials[water] = _MAT["water"]
    label = MATERIAL_LOVEDA_CLASS[scene][materials]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if render != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        label = cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)
    if nodata:
        region = _nodata_region(size, rng)
        image[region] = 0  # pure black, as the real no-data borders
        label[region] = IGNORE_INDEX
    return image, label


def _write_png(path: Path, array: np.ndarray) -> None:
    write_atomically(
        path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    )


def _plan(per_split: tuple[int, int, int]) -> list[tuple[str, str, int]]:
    """(split, scene, id) for every image: consecutive ids, Rural before Urban within a split."""
    plan, next_id = [], 0
    for split, count in zip(SPLITS, per_split, strict=True):
        rural = count // 2
        for scene, n in (("Rural", rural), ("Urban", count - rural)):
            for _ in range(n):
                plan.append((split, scene, next_id))
                next_id += 1
    return plan


def _readme(seed: int, size: int, plan: list[tuple[str, str, int]]) -> str:
    lines = [
        "SYNTHETIC DATA - NOT LOVEDA",
        "",
        "Written by rsseg (rsseg.data.synthetic.loveda.write_synthetic_loveda) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        f"image size: {size} x {size} (real LoveDA: 1024 x 1024 at 0.3 m; these scenes are ~5 cm-scale)",
        "layout (official LoveDA names):",
        "  {Train,Val}/{Urban,Rural}/images_png/<id>.png   RGB uint8",
        "  {Train,Val}/{Urban,Rural}/masks_png/<id>.png    uint8, 0 = no-data, k = class k-1",
        "  Test/{Urban,Rural}/images_png/<id>.png          no masks",
        "raw mask values: 0 no-data, " + ", ".join(f"{i + 1} {name}" for i, name in enumerate(LOVEDA_CLASSES)),
        "visualisation colours (RGB): "
        + ", ".join(f"{name} {rgb}" for name, rgb in zip(LOVEDA_CLASSES, LOVEDA_PALETTE, strict=True)),
        "images (split/scene: ids):",
    ]
    for split in SPLITS:
        for scene in SCENES_IN_ID_ORDER:
            ids = [str(i) for s, sc, i in plan if s == split and sc == scene]
            lines.append(f"  {split}/{scene}: {', '.join(ids)}")
    return "\n".join(lines) + "\n"


def write_synthetic_loveda(
    dst: str | Path, seed: int = 0, per_split: tuple[int, int, int] = SYNTH_LOVEDA_PER_SPLIT, size: int = 1024
) -> list[Path]:
    """Write a synthetic LoveDA under ``dst`` in the official layout and return the written files.

    ``per_split`` gives the number of images in Train, Val and Test (at least 2 each: half of them
    Rural, the rest Urban); ``size`` is the side of every image. The list holds, in id order, each
    image followed by its mask (Train/Val only), then ``README_SYNTHETIC.txt``. Files are written
    under hidden temporary names and renamed into place; the same ``seed`` gives byte-identical files.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(size, int | np.integer) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer of at least {MIN_SIZE} px, got {size!r}")
    per_split = tuple(per_split)
    if len(per_split) != len(SPLITS) or any(not isinstance(n, int | np.integer) or n < 2 for n in per_split):
        raise ValueError(f"per_split must give at least 2 images for each of Train, Val, Test, got {per_split!r}")
    dst = Path(dst)
    plan = _plan(per_split)  # type: ignore[arg-type]
    for split in SPLITS:
        for scene in SCENES_IN_ID_ORDER:
            (dst / split / scene / "images_png").mkdir(parents=True, exist_ok=True)
            if split != "Test":
                (dst / split / scene / "masks_png").mkdir(parents=True, exist_ok=True)

    def write_one(item: tuple[str, str, int]) -> list[Path]:
        split, scene, sample_id = item
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), sample_id]))
        image, label = render_synthetic_loveda(int(size), scene, rng, nodata=sample_id % 2 == 0)
        folder = dst / split / scene
        paths = [folder / "images_png" / f"{sample_id}.png"]
        _write_png(paths[0], image)
        if split != "Test":
            paths.append(folder / "masks_png" / f"{sample_id}.png")
            _write_png(paths[1], encode_loveda_mask(label))
        return paths

    # Images are independent (one generator each), so threads change nothing in the output; numpy and
    # OpenCV release the GIL for the heavy array work.
    workers = max(1, min(len(plan), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = [path for paths in pool.map(write_one, plan) for path in paths]
    readme = dst / "README_SYNTHETIC.txt"
    write_text_atomically(readme, _readme(int(seed), int(size), plan))
    written.append(readme)
    return written
