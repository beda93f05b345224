"""A small synthetic CHN6-CUG in the official on-disk layout.

Written where and how the official release puts its files::

    dst/train/images/<id>_sat.jpg    RGB JPEG, size×size, about 0.5 m GSD
    dst/train/gt/<id>_mask.png       8-bit grey PNG, road 255, background 0
    dst/val/images/<id>_sat.jpg      (val = the split papers report on)
    dst/val/gt/<id>_mask.png
    dst/README_SYNTHETIC.txt

so ``CHN6CUGDataModule(dst)`` reads it like the real data. The suburban renderer used by the other
synthetic datasets draws at 5 cm; at 0.5 m a tile would need 5120² of it, so this module has its own
small renderer of a Chinese-city-like tile at 0.25 m (2× the tile size) that is then area-downsampled to
0.5 m: land-cover zones (dense urban fabric, vegetation, farmland stripes, bare soil, water), a road
network (arterials 14–26 m wide with lane marks, a rotated street grid 6–10 m wide, a winding minor
road 4–6 m wide), buildings with roofs in typical colours and cast shadows, street trees that partly
hide road edges (still labelled road, as in the real masks), cars on the roads, haze, blur, sensor
noise and JPEG compression. The mask is the road footprint at 0.25 m, area-downsampled and
thresholded at half coverage, so image and label agree at 0.5 m. Roads are separable by shape
(long, thin, connected) more than by colour: grey roofs and concrete yards look like asphalt.

Everything random comes from one generator per tile seeded from ``(seed, folder, index)``: same seed,
same bytes (JPEG via Pillow's libjpeg).
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from rsseg.data.synthetic.files import write_atomically, write_text_atomically

__all__ = ["write_synthetic_chn6cug", "render_road_tile"]

FOLDERS = ("train", "val")
CITIES = ("bj", "sh", "wh", "sz", "hk", "mc")  # the six CHN6-CUG cities, as id prefixes
RENDER_SCALE = 2  # render pixels per tile pixel
GSD = 0.5  # metres per tile pixel
JPEG_QUALITY = 90

_ASPHALT = ((82, 84, 88), (96, 96, 98), (110, 108, 104), (70, 72, 76))
_CONCRETE = ((188, 186, 178), (200, 196, 186))
_CARS = ((235, 235, 232), (190, 192, 196), (40, 40, 44), (120, 122, 126), (160, 40, 40), (50, 70, 140))
_ROOFS = ((176, 176, 172), (120, 122, 126), (92, 112, 150), (70, 110, 160), (150, 80, 60), (200, 196, 186),
          (130, 120, 105), (60, 62, 66))
_GROUND = {  # zone -> base RGB
    "urban": (150, 144, 132),
    "green": (66, 92, 52),
    "farm": (118, 132, 78),
    "soil": (160, 136, 104),
}


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth unit-variance noise with features of about ``scale`` px."""
    gh, gw = h // scale + 3, w // scale + 3
    f = cv2.resize(rng.standard_normal((gh, gw), dtype=np.float32), (gw * scale, gh * scale),
                   interpolation=cv2.INTER_CUBIC)[:h, :w]
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _line_across(n: int, angle: float, offset: float) -> tuple[tuple[int, int], ...]:
    """End points of a straight line at ``angle`` through the point ``offset`` px from the centre."""
    c = np.array([n / 2, n / 2]) + offset * np.array([-math.sin(angle), math.cos(angle)])
    d = np.array([math.cos(angle), math.sin(angle)]) * n * 1.5
    return tuple(np.round(c - d).astype(int)), tuple(np.round(c + d).astype(int))


def _sample(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` distinct elements of ``candidates`` (none when it is empty)."""
    if len(candidates) == 0:
        return candidates
    return rng.choice(candidates, size=min(len(candidates), count), replace=False)


def _zones(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zone index per pixel (0 urban, 1 green, 2 farm, 3 soil): argmax of weighted smooth fields,
    drawn at 1/8 resolution (the zones are hundreds of metres wide) and enlarged bilinearly."""
    weights = rng.dirichlet((3.0, 1.2, 1.0, 0.6)) * 2.0
    low = n // 8
    fields = [_noise(rng, low, low, max(2, low // 3)) + w for w in weights]
    return np.stack([cv2.resize(f, (n, n), interpolation=cv2.INTER_LINEAR) for f in fields]).argmax(0).astype(np.uint8)


def render_road_tile(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One tile: ``(image uint8 size×size×3 RGB, mask uint8 size×size with road 255)``."""
    n = size * RENDER_SCALE
    px = 1 / (GSD / RENDER_SCALE)  # render pixels per metre
    zones = _zones(rng, n)
    ground = np.array(list(_GROUND.values()), np.float32) + rng.normal(0, 6, (len(_GROUND), 3)).astype(np.float32)
    image = ground[zones]
    farm = zones == 2
    angle, period = rng.uniform(0, math.pi), rng.uniform(20, 60)
    if farm.any():  # field strips
        ys, xs = np.nonzero(farm)
        image[ys, xs] += (12 * np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)))[:, None]

    road = np.zeros((n, n), np.uint8)
    dashes: list[tuple[tuple[int, int], tuple[int, int]]] = []
    theta = rng.uniform(0, math.pi)

    def draw(points, width_m: float, rgb, marks: bool) -> None:
        width = max(2, int(round(width_m * px)))
        pts = np.array(points, np.int32).reshape(-1, 1, 2)
        shade = np.array(rgb, np.float64) + rng.normal(0, 4, 3)
        cv2.polylines(road, [pts], False, 1, thickness=width, lineType=cv2.LINE_8)
        cv2.polylines(image, [pts], False, tuple(shade.tolist()), thickness=width, lineType=cv2.LINE_8)
        if marks:  # dashed centre line, painted once all roads are down
            for a, b in zip(pts[:-1, 0], pts[1:, 0], strict=True):
                length = max(float(np.hypot(*(b - a))), 1.0)
                for t in np.arange(0, length, 12 * px):
                    p = a + (b - a) * t / length
                    q = a + (b - a) * min(t + 6 * px, length) / length
                    dashes.append((tuple(np.round(p).astype(int).tolist()), tuple(np.round(q).astype(int).tolist())))

    # arterials, then a rotated street grid over the urban zone, then a winding minor road
    for _ in range(int(rng.integers(1, 3))):
        a = theta + (rng.choice((0, math.pi / 2)) + rng.normal(0, 0.05))
        draw(_line_across(n, a, rng.uniform(-0.35, 0.35) * n), rng.uniform(14, 26),
             _ASPHALT[rng.integers(len(_ASPHALT))], marks=True)
    urban = zones == 0
    if urban.mean() > 0.2:
        spacing = rng.uniform(80, 140) * px
        for a in (theta, theta + math.pi / 2):
            for offset in np.arange(-n, n, spacing) + rng.uniform(0, spacing):
                start, end = _line_across(n, a, offset)
                if rng.random() < 0.75:
                    rgb = _ASPHALT[rng.integers(len(_ASPHALT))] if rng.random() < 0.8 else _CONCRETE[0]
                    draw((start, end), rng.uniform(6, 10), rgb, marks=False)
    if rng.random() < 0.7:
        p = rng.uniform(0, n, 2)
        heading = rng.uniform(0, 2 * math.pi)
        points = [p.copy()]
        for _ in range(12):
            heading += rng.normal(0, 0.35)
            p = p + 40 * px * np.array([math.cos(heading), math.sin(heading)])
            points.append(p.copy())
        draw(np.round(points).astype(int), rng.uniform(4, 6), _CONCRETE[rng.integers(len(_CONCRETE))], marks=False)

    # buildings in the urban zone, clear of roads, with shadows towards the sun
    sun = np.array([math.cos(rng.uniform(0, 2 * math.pi)), math.sin(rng.uniform(0, 2 * math.pi))])
    clear = cv2.erode((urban & (road == 0)).astype(np.uint8), np.ones((int(4 * px), int(4 * px)), np.uint8))
    shadow = np.zeros((n, n), np.uint8)
    roofs = np.zeros((n, n), np.uint8)
    for _ in range(int(400 * urban.mean()) + 4):
        y, x = rng.integers(0, n, 2)
        length, width = rng.uniform(12, 45) * px, rng.uniform(10, 22) * px
        height = rng.uniform(3, 12) * px
        roof = np.array(_ROOFS[rng.integers(len(_ROOFS))], np.float32) + rng.normal(0, 5, 3).astype(np.float32)
        if not clear[y, x]:
            continue
        box = cv2.boxPoints(((float(x), float(y)), (length, width), math.degrees(theta))).astype(np.int32)
        x0, y0 = np.maximum(box.min(0), 0)
        x1, y1 = np.minimum(box.max(0) + 1, n)
        footprint = np.zeros((y1 - y0, x1 - x0), np.uint8)  # rasterised in its bounding box only
        cv2.fillPoly(footprint, [box - (x0, y0)], 1)
        window = (slice(y0, y1), slice(x0, x1))
        if (footprint & (1 - clear[window])).any() or (footprint & roofs[window]).any():
            continue
        cv2.fillPoly(shadow, [(box + np.round(sun * height).astype(np.int32))], 1)
        roofs[window] |= footprint
        image[window][footprint > 0] = roof
    for p, q in dashes:
        cv2.line(image, p, q, (224.0, 222.0, 210.0), max(1, int(0.3 * px)))
    # cars on roads
    on_road = np.flatnonzero(cv2.erode(road, np.ones((int(3 * px), int(3 * px)), np.uint8)).ravel())
    for i in _sample(rng, on_road, int(rng.integers(5, 40))):
        y, x = divmod(int(i), n)
        box = cv2.boxPoints(((float(x), float(y)), (4.5 * px, 1.9 * px), math.degrees(theta))).astype(np.int32)
        rgb = np.array(_CARS[rng.integers(len(_CARS))], np.float64) + rng.normal(0, 6, 3)
        cv2.fillPoly(image, [box], tuple(rgb.tolist()))
    # shadows on everything but roofs, then street trees that partly hide road edges
    shade = (shadow > 0) & (roofs == 0)
    image[shade] *= 0.55
    edge = cv2.dilate(road, np.ones((int(5 * px), int(5 * px)), np.uint8)) & (1 - road)
    for i in _sample(rng, np.flatnonzero(edge.ravel()), int(rng.integers(20, 120))):
        y, x = divmod(int(i), n)
        radius = int(rng.uniform(2, 4) * px)
        cv2.circle(image, (x, y), radius, tuple(float(v) for v in rng.normal((52, 78, 44), 6)), -1)
    # texture, blur, downsample, haze and sensor noise
    image += (5 * _noise(rng, n, n, 12))[..., None]
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    small += (5 * cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), 0.7))[..., None]
    haze = np.float32(rng.uniform(0, 0.15))
    small = small * (1 - haze) + haze * np.float32(190) + rng.normal(0, 2.5, small.shape).astype(np.float32)
    coverage = cv2.resize(road.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    mask = np.where(coverage >= 0.5, 255, 0).astype(np.uint8)
    return np.clip(small, 0, 255).round().astype(np.uint8), mask


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _readme(seed: int, ids: dict[str, list[str]], size: int) -> str:
    return "\n".join([
        "SYNTHETIC DATA - NOT CHN6-CUG",
        "",
        "Written by rsseg (rsseg.data.synthetic.chn6cug.write_synthetic_chn6cug) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        f"tiles: {size} x {size} px at about {GSD} m GSD (rendered at {GSD / RENDER_SCALE} m, area-downsampled)",
        "layout (official CHN6-CUG names):",
        "  {train,val}/images/<id>_sat.jpg  RGB JPEG",
        "  {train,val}/gt/<id>_mask.png     8-bit grey PNG: road 255, background 0",
        "ids are <city><number> with made-up numbers; val is the split papers report on",
        "tiles per folder: " + ", ".join(f"{folder} {len(tiles)}" for folder, tiles in ids.items()),
        "",
    ])


def write_synthetic_chn6cug(
    dst: str | Path, seed: int = 0, counts: tuple[int, int] = (20, 6), size: int = 512
) -> list[Path]:
    """Write a synthetic CHN6-CUG under ``dst``; return the written files.

    ``counts`` is the number of tiles in ``train`` and ``val``. Returned: per folder, each tile's image
    and mask, then ``README_SYNTHETIC.txt``. Files are written atomically; same ``seed``, same bytes.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(counts) != len(FOLDERS) or min(counts) < 1:
        raise ValueError(f"counts must give at least one tile for each of {FOLDERS}, got {counts!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    dst = Path(dst)
    jobs = []
    ids: dict[str, list[str]] = {}
    number = 100001  # ids <city><number>, cycling through the six cities
    for folder_index, (folder, count) in enumerate(zip(FOLDERS, counts, strict=True)):
        (dst / folder / "images").mkdir(parents=True, exist_ok=True)
        (dst / folder / "gt").mkdir(parents=True, exist_ok=True)
        ids[folder] = []
        for index in range(count):
            tile = f"{CITIES[number % len(CITIES)]}{number}"
            number += 1
            ids[folder].append(tile)
            jobs.append((folder_index, folder, index, tile))

    def write_tile(job) -> list[Path]:
        folder_index, folder, index, tile = job
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), folder_index, index]))
        image, mask = render_road_tile(size, rng)
        image_path = dst / folder / "images" / f"{tile}_sat.jpg"
        mask_path = dst / folder / "gt" / f"{tile}_mask.png"
        data = _jpeg_bytes(image)
        write_atomically(image_path, lambda tmp: tmp.write_bytes(data))
        write_atomically(mask_path, lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))
        return [image_path, mask_path]

    workers = max(1, min(len(jobs), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = [path for paths in pool.map(write_tile, jobs) for path in paths]
    readme = dst / "README_SYNTHETIC.txt"
    write_text_atomically(readme, _readme(int(seed), ids, size))
    return [*written, readme]
