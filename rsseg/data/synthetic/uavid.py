"""A small synthetic UAVid in the official release layout.

``make bench DATASET=uavid`` must run without the real data, so rsseg writes a few synthetic frames
exactly where and how the UAVid release puts them::

    dst/uavid_train/seq1/Images/000000.png   dst/uavid_train/seq1/Labels/000000.png   RGB, colour labels
    dst/uavid_val/seq16/Images/...           dst/uavid_val/seq16/Labels/...
    dst/uavid_test/seq21/Images/...                                                   no labels (private)
    dst/README_SYNTHETIC.txt

Sequence numbers are the release's (train seq1–15, 31–35; val seq16–20, 36, 37; test seq21–30,
38–42) and frames are named like its frames (000000, 000100, …). Each frame is a nadir suburban scene
from ``scene.py`` (UAVid is oblique, low-altitude video; a nadir scene keeps the generator shared),
with its materials mapped to UAVid classes: asphalt → road, roofs → building, tree crowns → tree,
lawns and verges → low vegetation, and sidewalks, paved yards, parking lots, soil, rubble, water and
bins → clutter. Cars become *moving* on a road and *static* in a parking lot; since lots are rare,
a few road cars are also copied, with a fresh shadow, into yards, lots or onto sidewalks as parked
(static) cars, so that motion is a matter of context, as in UAVid. People (human) are drawn as small
figures with shadows on sidewalks and yards.

Frames with a short side under 540 px are rendered at 540 px and shrunk (INTER_AREA for the image,
nearest for the labels), so a small frame still shows a street scene at a coarser GSD. Every frame
has its own generator seeded from ``(seed, release folder, sequence, frame)``: byte-identical files
for a seed.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from rsseg.data.core.io import write_png
from rsseg.data.datasets.uavid.labels import (
    BUILDING,
    CLUTTER,
    HUMAN,
    LOW_VEGETATION,
    MOVING_CAR,
    OFFICIAL_SEQUENCES,
    RELEASE_FOLDERS,
    ROAD,
    STATIC_CAR,
    TREE,
    UAVID_CLASSES,
    UAVID_PALETTE,
    encode_uavid_label,
)
from rsseg.data.synthetic.files import write_atomically, write_text_atomically
from rsseg.data.synthetic.scene import MATERIAL_NAMES, render_scene

__all__ = ["MATERIAL_UAVID_CLASS", "render_synthetic_frame", "synthetic_frame_name", "write_synthetic_uavid"]

_M = {name: index for index, name in enumerate(MATERIAL_NAMES)}
_MATERIAL_CLASS = {
    "asphalt": ROAD,
    "sidewalk": CLUTTER,
    "yard": CLUTTER,
    "parking lot": CLUTTER,
    "roof": BUILDING,
    "lawn": LOW_VEGETATION,
    "verge": LOW_VEGETATION,
    "tree": TREE,
    "car": MOVING_CAR,  # refined per car below
    "soil": CLUTTER,
    "rubble": CLUTTER,
    "water": CLUTTER,
    "bin": CLUTTER,
}
MATERIAL_UAVID_CLASS = np.array([_MATERIAL_CLASS[name] for name in MATERIAL_NAMES], dtype=np.uint8)

MIN_RENDER_SIDE = 540  # px at the scene's 5 cm GSD: about one street with houses on both sides
FRAME_STEP = 100  # the release names every 100th video frame: 000000, 000100, …
PARKED_ALLOWED = (_M["yard"], _M["parking lot"], _M["sidewalk"])
PERSON_ALLOWED = (_M["sidewalk"], _M["yard"])
_CLOTHES = ((200, 40, 40), (40, 70, 170), (230, 230, 225), (35, 35, 38), (230, 190, 40), (60, 140, 70),
            (150, 60, 140), (240, 120, 30), (120, 120, 125), (90, 60, 40))  # fmt: skip
_HAIR = ((40, 30, 25), (90, 60, 35), (20, 20, 20), (160, 130, 80), (200, 160, 130))
_SHADOW = np.array((0.5, 0.53, 0.62), dtype=np.float32)  # multiplicative, bluish, like scene.py's shadows


def synthetic_frame_name(index: int) -> str:
    return f"{index * FRAME_STEP:06d}"


def _allowed(mat: np.ndarray, materials) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[list(materials)] = True
    return lut[mat]


def _classify_cars(mat: np.ndarray, label: np.ndarray) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """Cars in a parking lot become static; the others (on the road) stay moving.

    Returns the moving cars that lie fully inside the frame, as (bounding box, mask) for parking copies.
    """
    h, w = mat.shape
    cars = (mat == _M["car"]).astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(cars, connectivity=8)
    ring_kernel = np.ones((11, 11), np.uint8)
    road_cars = []
    for index in range(1, count):
        x, y, bw, bh = stats[index, :4]
        pad = 6
        y0, x0, y1, x1 = max(y - pad, 0), max(x - pad, 0), min(y + bh + pad, h), min(x + bw + pad, w)
        car = components[y0:y1, x0:x1] == index
        ring = cv2.dilate(car.astype(np.uint8), ring_kernel).astype(bool) & (cars[y0:y1, x0:x1] == 0)
        around = mat[y0:y1, x0:x1][ring]
        if np.count_nonzero(around == _M["parking lot"]) > np.count_nonzero(around == _M["asphalt"]):
            label[y0:y1, x0:x1][car] = STATIC_CAR
        elif x > 0 and y > 0 and x + bw < w and y + bh < h:
            box = (slice(y, y + bh), slice(x, x + bw))
            road_cars.append((box, components[box] == index))
    return road_cars


def _park_copies(image, mat, label, road_cars, rng: np.random.Generator) -> None:
    """Copy a few road cars, with a fresh shadow, into yards, lots or sidewalks as static cars."""
    if not road_cars:
        return
    h, w = mat.shape
    allowed = _allowed(mat, PARKED_ALLOWED)
    ys, xs = np.nonzero(allowed)
    if ys.size == 0:
        return
    per_area = h * w / (MIN_RENDER_SIDE * MIN_RENDER_SIDE * 16 / 9)  # counts grow with the ground area
    target, placed = int(rng.integers(2, 5) * per_area), 0
    margin = np.ones((7, 7), np.uint8)
    for _ in range(40 * target):
        if placed >= target:
            break
        (sy, sx), car = road_cars[int(rng.integers(len(road_cars)))]
        bh, bw = car.shape
        k = int(rng.integers(ys.size))
        y0, x0 = int(ys[k]) - bh // 2, int(xs[k]) - bw // 2
        if y0 < 4 or x0 < 4 or y0 + bh + 8 > h or x0 + bw + 8 > w:
            continue
        grown = cv2.dilate(np.pad(car, 4).astype(np.uint8), margin).astype(bool)
        area = (slice(y0 - 4, y0 + bh + 4), slice(x0 - 4, x0 + bw + 4))
        if not allowed[area][grown].all():
            continue
        dst = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        padded = np.pad(car, 4)
        shadow = np.zeros_like(padded)
        shadow[3:, 3:] = padded[:-3, :-3]
        shadow &= ~padded
        under = image[area].astype(np.float32)
        under[shadow] *= _SHADOW
        image[area] = np.clip(np.rint(under), 0, 255).astype(np.uint8)
        image[dst][car] = image[sy, sx][car]
        label[dst][car] = STATIC_CAR
        mat[dst][car] = _M["car"]
        allowed[area] &= ~grown
        placed += 1


def _add_people(image, mat, label, rng: np.random.Generator) -> None:
    """Small figures seen from above and a little from the side: body, head and a cast shadow."""
    h, w = mat.shape
    allowed = _allowed(mat, PERSON_ALLOWED)
    ys, xs = np.nonzero(allowed)
    if ys.size == 0:
        return
    per_area = h * w / (MIN_RENDER_SIDE * MIN_RENDER_SIDE * 16 / 9)
    target, placed = int(rng.integers(5, 11) * per_area), 0
    size = 24
    for _ in range(40 * target):
        if placed >= target:
            break
        k = int(rng.integers(ys.size))
        cy, cx = int(ys[k]), int(xs[k])
        y0, x0 = cy - size // 2, cx - size // 2
        if y0 < 0 or x0 < 0 or y0 + size > h or x0 + size > w:
            continue
        body = np.zeros((size, size), np.uint8)
        angle = float(rng.normal(90, 15))
        centre = (size // 2, size // 2)
        axes = (int(rng.integers(6, 9)), int(rng.integers(3, 5)))
        cv2.ellipse(body, centre, axes, angle, 0, 360, 1, -1)
        head = np.zeros_like(body)
        lift = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]) * (axes[0] - 1)
        head_centre = (int(round(centre[0] - lift[0])), int(round(centre[1] - lift[1])))
        cv2.circle(head, head_centre, int(rng.integers(2, 4)), 1, -1)
        person = (body | head).astype(bool)
        region = (slice(y0, y0 + size), slice(x0, x0 + size))
        grown = cv2.dilate(person.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if not allowed[region][grown].all():
            continue
        shadow = np.zeros_like(person)
        shadow[3:, 4:] = person[:-3, :-4]
        patch = image[region].astype(np.float32)
        patch[shadow & ~person] *= _SHADOW
        clothes = np.array(_CLOTHES[int(rng.integers(len(_CLOTHES)))], np.float32)
        hair = np.array(_HAIR[int(rng.integers(len(_HAIR)))], np.float32)
        noise = rng.normal(0, 6, (size, size, 1)).astype(np.float32)
        patch[body.astype(bool)] = (clothes + noise)[body.astype(bool)]
        patch[head.astype(bool)] = (hair + noise)[head.astype(bool)]
        image[region] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
        label[region][person] = HUMAN
        allowed[region] &= ~grown
        placed += 1


def render_synthetic_frame(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frame: ``(image uint8 H×W×3 RGB, label uint8 H×W with UAVid classes 0–7)``."""
    scale = max(1.0, MIN_RENDER_SIDE / min(height, width))
    render_h, render_w = round(height * scale), round(width * scale)
    image, mat = render_scene(render_h, render_w, rng)
    label = MATERIAL_UAVID_CLASS[mat]
    road_cars = _classify_cars(mat, label)
    _park_copies(image, mat, label, road_cars, rng)
    _add_people(image, mat, label, rng)
    if (render_h, render_w) != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def _readme(seed: int, frame_size: tuple[int, int], layout: list[tuple[str, str, list[str]]]) -> str:
    lines = [
        "SYNTHETIC DATA - NOT UAVid",
        "",
        "Written by rsseg (rsseg.data.synthetic.uavid.write_synthetic_uavid) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        f"frame size (height x width): {frame_size[0]} x {frame_size[1]}",
        "layout (official UAVid release names):",
        "  uavid_{train,val}/seqN/Images/<frame>.png   RGB uint8",
        "  uavid_{train,val}/seqN/Labels/<frame>.png   RGB colour labels",
        "  uavid_test/seqN/Images/<frame>.png          no labels (the real test labels are private)",
        "colour code (RGB, UAVidToolKit order): "
        + ", ".join(f"{i} {n} {rgb}" for i, (n, rgb) in enumerate(zip(UAVID_CLASSES, UAVID_PALETTE, strict=True))),
        "frames:",
    ]
    lines += [f"  {folder}/{seq}: {', '.join(frames)}" for folder, seq, frames in layout]
    return "\n".join(lines) + "\n"


def write_synthetic_uavid(
    dst: str | Path,
    seed: int = 0,
    frame_size: tuple[int, int] = (1080, 1920),
    sequences: tuple[int, int, int] = (2, 1, 1),
    frames_per_seq: int = 2,
) -> list[Path]:
    """Write a synthetic UAVid under ``dst`` in the release layout and return the written files.

    ``sequences`` gives the number of (train, val, test) sequences, numbered as in the release (at
    least one train sequence; 0 val or test sequences leave that folder out); ``frames_per_seq`` the
    frames of each (000000, 000100, …); ``frame_size`` is (height, width). The returned list holds, per frame in
    order, the image and (train/val) the label, followed by ``README_SYNTHETIC.txt``. Each file is
    written under a temporary name and renamed into place; the same ``seed`` gives byte-identical files.
    """
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(frame_size) != 2 or min(int(frame_size[0]), int(frame_size[1])) < 64:
        raise ValueError(f"frame_size must be (height, width) of at least 64 px, got {frame_size!r}")
    if len(sequences) != 3:
        raise ValueError(f"sequences must give (train, val, test) counts, got {sequences!r}")
    for folder, count, least in zip(RELEASE_FOLDERS, sequences, (1, 0, 0), strict=True):
        if not least <= int(count) <= len(OFFICIAL_SEQUENCES[folder]):
            raise ValueError(
                f"{folder}: between {least} and {len(OFFICIAL_SEQUENCES[folder])} sequences (as in the release), "
                f"got {count}"
            )
    if not 1 <= int(frames_per_seq) <= 10:
        raise ValueError(f"frames_per_seq must be 1–10 (the release has 10), got {frames_per_seq!r}")
    height, width = int(frame_size[0]), int(frame_size[1])
    dst = Path(dst)
    layout = [
        (folder, seq, [synthetic_frame_name(i) for i in range(int(frames_per_seq))])
        for folder, count in zip(RELEASE_FOLDERS, sequences, strict=True)
        for seq in OFFICIAL_SEQUENCES[folder][: int(count)]
    ]
    jobs = [(folder, seq, frame) for folder, seq, frames in layout for frame in frames]
    for folder, seq, _ in layout:
        (dst / folder / seq / "Images").mkdir(parents=True, exist_ok=True)
        if folder != "uavid_test":
            (dst / folder / seq / "Labels").mkdir(parents=True, exist_ok=True)

    def write_frame(job: tuple[str, str, str]) -> list[Path]:
        folder, seq, frame = job
        key = zlib.crc32(f"{folder}/{seq}/{frame}".encode())
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), key]))
        image, label = render_synthetic_frame(height, width, rng)
        paths = [dst / folder / seq / "Images" / f"{frame}.png"]
        write_atomically(paths[0], lambda tmp: write_png(tmp, image))
        if folder != "uavid_test":
            paths.append(dst / folder / seq / "Labels" / f"{frame}.png")
            colours = encode_uavid_label(label)
            write_atomically(paths[1], lambda tmp: write_png(tmp, colours))
        return paths

    # Frames are independent (one generator each), so threads change nothing in the output; numpy and
    # OpenCV release the GIL for the heavy array work.
    workers = max(1, min(len(jobs), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_frame = list(pool.map(write_frame, jobs))
    written = [path for paths in per_frame for path in paths]
    readme = dst / "README_SYNTHETIC.txt"
    write_text_atomically(readme, _readme(int(seed), (height, width), layout))
    written.append(readme)
    return written
