"""A small synthetic RefSegRS in the official on-disk layout (``RefSegRS.zip``).

Written where and how the real archive puts its files::

    dst/images/<id>.tif                    RGB uint8 TIFF, size×size
    dst/masks/<id>.tif                     uint8 0/255 mask of the referred object
    dst/output_phrase_{train,val,test}.txt  "<id> <referring expression>" per line
    dst/README_SYNTHETIC.txt

so ``RefSegRSDataModule(dst)`` reads it like the real data. Scenes come from the shared suburban
renderer (``scene.py``), drawn at ``RENDER_SCALE``× the tile size and downsampled (area for the image,
nearest for the material map) to about 7.5 cm GSD (RefSegRS/SkyScapes: 13 cm). Several objects are
referred in each scene, as in RefSegRS (285 scenes, 4,420 expressions); each object has its own id and a
copy of the scene image, like the real tiles. An object is one material category (road, sidewalk,
building, low vegetation, tree, vehicle, parking lot, water) either everywhere in the tile or restricted
to one half (left/right/top/bottom), and its sentences say exactly that ("the vehicles on the left",
"buildings at the top", "all trees in the image"), so the text decides the mask and a model that ignores
it cannot score well. Every third object has two or three sentences (lines sharing an id).
Everything random comes from generators seeded from ``(seed, split, scene)``: same seed, same bytes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import tifffile

from rsseg.data.synthetic.files import write_atomically, write_text_atomically
from rsseg.data.synthetic.scene import MATERIAL_NAMES, render_scene

__all__ = ["CATEGORIES", "write_synthetic_refsegrs"]

SPLITS = ("train", "val", "test")
RENDER_SCALE = 1.5  # scene pixels per tile pixel (scene.py draws at 5 cm)
OBJECTS_PER_SCENE = 6
MIN_TARGET_SHARE = 0.004  # an object covers at least 0.4% of the tile
MULTI_SENTENCE_EVERY = 3  # every third object of a split has two sentences, every ninth three

# category -> (singular, plural, scene materials)
CATEGORIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "road": ("road", "roads", ("asphalt",)),
    "sidewalk": ("sidewalk", "sidewalks", ("sidewalk",)),
    "building": ("building", "buildings", ("roof",)),
    "low vegetation": ("low vegetation", "low vegetation", ("lawn", "verge")),
    "tree": ("tree", "trees", ("tree",)),
    "vehicle": ("vehicle", "vehicles", ("car",)),
    "parking lot": ("parking lot", "parking lots", ("parking lot",)),
    "water": ("water", "water", ("water",)),
}
_WHERE = {
    "left": ("on the left", "in the left part of the image", "on the left side"),
    "right": ("on the right", "in the right part of the image", "on the right side"),
    "top": ("at the top", "in the upper part of the image", "along the top of the image"),
    "bottom": ("at the bottom", "in the lower part of the image", "along the bottom of the image"),
}
_WHOLE = ("the {p}", "all {p} in the image", "{p}", "every {s} in the scene")
_PART = ("the {p} {w}", "{p} {w}", "{s} {w}")
_REGIONS = ("all", *_WHERE)


def _category_luts() -> dict[str, np.ndarray]:
    luts = {}
    for name, (_, _, materials) in CATEGORIES.items():
        lut = np.zeros(256, dtype=bool)
        lut[[MATERIAL_NAMES.index(m) for m in materials]] = True
        luts[name] = lut
    return luts


_LUTS = _category_luts()


def _region(region: str, size: int) -> np.ndarray:
    keep = np.zeros((size, size), dtype=bool)
    half = size // 2
    if region == "all":
        keep[:] = True
    elif region == "left":
        keep[:, :half] = True
    elif region == "right":
        keep[:, half:] = True
    elif region == "top":
        keep[:half] = True
    else:
        keep[half:] = True
    return keep


def _sentences(category: str, region: str, count: int, rng: np.random.Generator) -> list[str]:
    singular, plural, _ = CATEGORIES[category]
    if region == "all":
        templates = list(_WHOLE) if singular != plural else [t for t in _WHOLE if "{s}" not in t]
        options = [t.format(s=singular, p=plural) for t in templates]
    else:
        options = [t.format(s=singular, p=plural, w=w) for t in _PART for w in _WHERE[region]]
        options = list(dict.fromkeys(options))  # "low vegetation" is singular and plural
    picks = rng.choice(len(options), size=min(count, len(options)), replace=False)
    return [options[i] for i in picks]


def render_objects(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[np.ndarray, str, str]]]:
    """One scene: ``(image uint8 size×size×3, [(mask uint8 0/255, category, region), …])`` with up to
    ``OBJECTS_PER_SCENE`` objects of different categories, each covering ≥ ``MIN_TARGET_SHARE``."""
    big = int(round(size * RENDER_SCALE))
    image, materials = render_scene(big, big, rng)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    materials = cv2.resize(materials, (size, size), interpolation=cv2.INTER_NEAREST)
    min_pixels = MIN_TARGET_SHARE * size * size
    candidates = []
    for category, lut in _LUTS.items():
        present = lut[materials]
        for region in _REGIONS:
            target = present & _region(region, size)
            if target.sum() >= min_pixels and (~target).any():
                candidates.append((category, region, target))
    objects: list[tuple[np.ndarray, str, str]] = []
    used: set[str] = set()
    for k in rng.permutation(len(candidates)):
        category, region, target = candidates[k]
        if category in used:
            continue
        used.add(category)
        objects.append((target.astype(np.uint8) * np.uint8(255), category, region))
        if len(objects) == OBJECTS_PER_SCENE:
            break
    return image, objects


def _write_tiff(path: Path, array: np.ndarray, compress: bool) -> None:
    photometric = "rgb" if array.ndim == 3 else "minisblack"
    write_atomically(path, lambda tmp: tifffile.imwrite(
        tmp, np.ascontiguousarray(array), photometric=photometric, compression="zlib" if compress else None,
        metadata=None))


def _readme(seed: int, counts: dict[str, int], size: int, lines: dict[str, int]) -> str:
    return "\n".join([
        "SYNTHETIC DATA - NOT RefSegRS",
        "",
        "Written by rsseg (rsseg.data.synthetic.refsegrs.write_synthetic_refsegrs) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        f"tiles: {size} x {size} px, about {5 * RENDER_SCALE:.1f} cm GSD (real RefSegRS: 512 px, 13 cm)",
        "layout (official RefSegRS.zip names):",
        "  images/<id>.tif                     RGB uint8 TIFF",
        "  masks/<id>.tif                      referred object, uint8 0 (background) / 255 (target)",
        "  output_phrase_{train,val,test}.txt  '<id> <referring expression>' per line; several lines",
        "                                      with one id are several sentences for one object",
        "objects (ids) and expressions (lines) per split: "
        + ", ".join(f"{s} {counts[s]} / {lines[s]}" for s in SPLITS),
        "categories: " + ", ".join(CATEGORIES) + "; each in the whole tile or in one half (left/right/top/bottom)",
        "",
    ])


def write_synthetic_refsegrs(
    dst: str | Path, seed: int = 0, counts: tuple[int, int, int] = (40, 10, 20), size: int = 512
) -> list[Path]:
    """Write a synthetic RefSegRS under ``dst``; return the written files.

    ``counts`` is the number of referred objects (ids) in train, val and test; each has one to three
    sentences. Returned: per split, each object's image and mask, then the three phrase files and
    ``README_SYNTHETIC.txt``. Files are written atomically; the same ``seed`` gives identical bytes.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(counts) != len(SPLITS) or min(counts) < 1:
        raise ValueError(f"counts must give at least one object for each of {SPLITS}, got {counts!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    dst = Path(dst)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    workers = max(1, min(os.cpu_count() or 1, 4))

    def scene(split_index: int, index: int):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_index, index]))
        return render_objects(size, rng)

    written: list[Path] = []
    next_id = 0
    expressions: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split_index, (split, wanted) in enumerate(zip(SPLITS, counts, strict=True)):
            objects: list[tuple[np.ndarray, np.ndarray, str, str]] = []
            rendered = 0
            while len(objects) < wanted:  # scenes in order, so the output does not depend on threads
                if rendered > 4 * wanted + 8:
                    raise RuntimeError(f"synthetic RefSegRS: {rendered} scenes gave only {len(objects)} objects")
                batch = max(1, -(-(wanted - len(objects)) // OBJECTS_PER_SCENE))
                scenes = pool.map(scene, [split_index] * batch, range(rendered, rendered + batch))
                rendered += batch
                for image, found in scenes:
                    objects += [(image, *obj) for obj in found]
            lines = []
            for k, (image, mask, category, region) in enumerate(objects[:wanted]):
                ref_id = str(next_id)
                next_id += 1
                count = 1 + (k % MULTI_SENTENCE_EVERY == 0) + (k % (3 * MULTI_SENTENCE_EVERY) == 0)
                text_rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_index, k, 1]))
                sentences = _sentences(category, region, count, text_rng)
                image_path, mask_path = dst / "images" / f"{ref_id}.tif", dst / "masks" / f"{ref_id}.tif"
                _write_tiff(image_path, image, compress=False)
                _write_tiff(mask_path, mask, compress=True)
                written += [image_path, mask_path]
                lines += [f"{ref_id} {sentence}" for sentence in sentences]
            expressions[split] = len(lines)
            path = dst / f"output_phrase_{split}.txt"
            write_text_atomically(path, "\n".join(lines) + "\n")
            written.append(path)
    phrase_files = [p for p in written if p.suffix == ".txt"]
    written = [p for p in written if p.suffix != ".txt"] + phrase_files
    readme = dst / "README_SYNTHETIC.txt"
    write_text_atomically(readme, _readme(int(seed), dict(zip(SPLITS, counts, strict=True)), size, expressions))
    return [*written, readme]
