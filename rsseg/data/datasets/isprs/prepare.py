"""Preparation shared by the ISPRS datasets (Potsdam, Vaihingen): raw tiles into a prepared root.

Both datasets ship large image tiles plus RGB colour labels (full and eroded ``noBoundary``), split by
tile id. A dataset module describes its file names in an :class:`IsprsLayout` and classifies the files
it finds; everything else is the same and lives here: walking ``--src`` (any folder layout, duplicates
are errors), pairing each protocol tile's image with the label its split needs, cutting tiles into
patches (in parallel processes if asked), checking each label (unknown colours, a boundary share that
leaves nothing to score, BGR channel order), and the manifest summary. Window sizes, the patch size
against the largest tile and the free space are checked before anything is written.

Images with 4 bands (Potsdam RGBIR) are stored as RGBA PNG patches: lossless, one format for every
band set, readable by ``read_image``; the 4th channel is the IR band, not transparency (viewers will
show IR-weighted transparency). The manifest's ``image_bands`` entry records the band order.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsseg.data.core.errors import DataError, DataWarning
from rsseg.data.core.io import read_image
from rsseg.data.core.prepare import (
    SplitProtocol,
    count_pixels,
    file_fingerprint,
    is_synthetic_root,
    map_jobs,
    prepare_once,
)
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.core.tiling import (
    check_patch_fits,
    check_prepare_window,
    patched_bytes,
    raster_size,
    split_grid,
    write_patches,
)
from rsseg.data.core.walk import check_not_broken, walk_source
from rsseg.data.datasets.isprs.labels import BANDS, ISPRS_CLASSES, decode_isprs_label

logger = logging.getLogger(__name__)

IMAGE_FILL = 0
LABEL_KEYS = {"full": "label", "eroded": "label_noBoundary"}  # label kind → file kind


@dataclass(frozen=True)
class IsprsLayout:
    """How one ISPRS dataset names its raw files and its patches.

    ``file_names`` and ``archives`` map the file kinds ``image``, ``label`` and ``label_noBoundary`` to a
    file-name template with ``{tile}`` and to the official archive the file comes from; ``patch_stem``
    is the template patch ids start with (``<stem>_<y>_<x>``).
    """

    dataset: str
    display_name: str
    bands: str
    file_names: Mapping[str, str]
    archives: Mapping[str, str]
    patch_stem: str
    tile_sort_key: Callable[[str], Any]
    tile_word: str = "tile"
    tile_placeholder: str = "<id>"  # how messages spell "any tile id" in a file name

    def file_name(self, tile: str, kind: str) -> str:
        return self.file_names[kind].format(tile=tile)

    def stem(self, tile: str) -> str:
        return self.patch_stem.format(tile=tile)


# --------------------------------------------------------------------------------------------------
# Source discovery


def walk_isprs_files(
    src: Path,
    layout: IsprsLayout,
    classify: Callable[[Path, str], tuple[str, str] | None],
    duplicate_hint: Callable[[str, str], str] = lambda tile, kind: "",
) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Files under ``src`` by tile id and kind, plus the names of any archives seen.

    ``classify(folder, name)`` returns ``(tile, kind)`` for a file of the dataset, else None. The walk
    (``walk.walk_source``: linked folders followed, never twice or up to ``/``) is sorted, so the result
    does not depend on the file system's listing order; a second file of the same tile and kind is a
    DataError naming both, and so is a dataset file that is a broken link.
    """
    if not src.is_dir():
        raise DataError(f"{src}: {layout.display_name} source folder does not exist")
    found: dict[str, dict[str, Path]] = {}
    archives: list[str] = []
    for folder, _, names in walk_source(src):
        for name in names:
            if name.lower().endswith(".zip"):
                archives.append(name)
            hit = classify(Path(folder), name)
            if hit is None:
                continue
            tile, kind = hit
            path = folder / name
            check_not_broken(path)
            if kind in found.setdefault(tile, {}):
                raise DataError(
                    f"duplicate {layout.display_name} {kind} files for {layout.tile_word} {tile}: "
                    f"{found[tile][kind]} and {path}; keep only one of them under {src}"
                    f"{duplicate_hint(tile, kind)}"
                )
            found[tile][kind] = path
    return found, archives


def require_images(
    found: dict[str, dict[str, Path]], archives: list[str], src: Path, layout: IsprsLayout, hint: str = ""
) -> None:
    """DataError when no image was found, pointing at unextracted archives."""
    if any("image" in kinds for kinds in found.values()):
        return
    extract = f"; found archives {', '.join(sorted(archives))}: extract them first" if archives else ""
    example = layout.file_name(layout.tile_placeholder, "image")
    raise DataError(f"{src}: no {layout.display_name} images ({example}) found{extract}{hint}")


# --------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class TileJob:
    """One tile to cut: where it comes from, which split/labels it goes to, how its patches are named."""

    tile: str
    split: str
    image: Path
    label: Path
    label_kind: str  # "full" or "eroded"
    patch_stem: str
    bands: str = "RGB"

    @property
    def channels(self) -> int:
        return len(BANDS[self.bands])


def label_kind_for(split: str, test_labels: str) -> str:
    return test_labels if split == "test" else "full"


def plan_tiles(
    files: dict[str, dict[str, Path]],
    protocol: SplitProtocol,
    test_labels: str,
    src: Path,
    layout: IsprsLayout,
) -> tuple[list[TileJob], dict[str, list[str]]]:
    """Pair each protocol tile's image with the label its split needs; also return missing tiles.

    A protocol tile with neither image nor label is missing (allowed: subsets and the synthetic data
    have a few tiles, recorded in the manifest); an image without its label and a label without its
    image are errors naming the file found and the one expected; every split needs a tile.
    """
    jobs: list[TileJob] = []
    missing: dict[str, list[str]] = {}
    for split, tiles in protocol.splits.items():
        kind = label_kind_for(split, test_labels)
        label_key = LABEL_KEYS[kind]
        missing[split] = []
        orphans: list[tuple[str, Path]] = []  # (tile, a label file) of tiles without an image
        for tile in sorted(tiles, key=layout.tile_sort_key):
            paths = files.get(tile, {})
            if "image" not in paths:
                missing[split].append(tile)
                labels = [paths[key] for key in (label_key, *LABEL_KEYS.values()) if key in paths]
                if labels:
                    orphans.append((tile, labels[0]))
                continue
            if label_key not in paths:
                raise DataError(
                    f"{src}: missing label file {layout.file_name(tile, label_key)} for "
                    f"{layout.tile_word} {tile} ({split} split, {kind} labels; from "
                    f"{layout.archives[label_key]}); its image is {paths['image']}"
                )
            jobs.append(
                TileJob(tile, split, paths["image"], paths[label_key], kind, layout.stem(tile), layout.bands)
            )
        if len(missing[split]) == len(tiles):
            found = f"; {orphan_hint(orphans, src, layout)}" if orphans else ""
            raise DataError(
                f"{src}: none of the {len(tiles)} {split} {layout.tile_word}s of the {protocol.name!r} "
                f"protocol was found (e.g. {layout.file_name(tiles[0], 'image')}){found}"
            )
        if orphans:
            raise DataError(orphan_hint(orphans, src, layout))
    return jobs, missing


def orphan_hint(orphans: list[tuple[str, Path]], src: Path, layout: IsprsLayout) -> str:
    """What to say about labels whose image is missing: the first one's expected image and archive."""
    tile, label = orphans[0]
    more = ""
    if len(orphans) > 1:
        more = f"; {len(orphans) - 1} more {layout.tile_word}s have labels but no image: " + ", ".join(
            t for t, _ in orphans[1:]
        )
    return (
        f"{label}: label of {layout.tile_word} {tile} found, but not its image "
        f"{layout.file_name(tile, 'image')} (from {layout.archives['image']}) under {src}; extract the image, "
        f"or remove the label to leave the {layout.tile_word} out{more}"
    )


# --------------------------------------------------------------------------------------------------
# Preparation


def prepare_isprs(
    src: Path,
    dst: str | Path,
    *,
    layout: IsprsLayout,
    protocol: SplitProtocol,
    spec: DatasetSpec,
    files: dict[str, dict[str, Path]],
    patch_size: int,
    stride: int | None,
    test_labels: str,
    force: bool,
    progress: bool,
    workers: int,
    strict: bool = False,
) -> dict[str, Any]:
    """Cut the planned tiles into ``dst/{split}/{images,masks}/<patch_id>.png`` through ``prepare_once``.

    Before anything is written: the window arguments are checked, the patch size against the largest
    tile (sizes from the file headers), and the estimated output size against the free space.
    """
    stride = check_prepare_window(patch_size, stride)
    jobs, missing = plan_tiles(files, protocol, test_labels, src, layout)
    sizes = {job.image: raster_size(job.image) for job in jobs}
    check_patch_fits(sizes, patch_size, layout.tile_word)
    sources = sorted(
        (file_fingerprint(path, src) for job in jobs for path in (job.image, job.label)),
        key=lambda source: source["path"],
    )
    parameters = {
        "protocol": protocol.name,
        "patch_size": patch_size,
        "stride": stride,
        "test_labels": test_labels,
        "bands": layout.bands,
        "image_fill": IMAGE_FILL,
        "mask_fill": IGNORE_INDEX,
    }

    def build(out: Path) -> dict[str, Any]:
        report_missing(src, protocol, missing)
        for split in protocol.splits:
            (out / split / "images").mkdir(parents=True)
            (out / split / "masks").mkdir(parents=True)
        results = cut_tiles(jobs, out, patch_size, stride, progress, workers, f"{layout.dataset} tiles", strict)
        return summarise(results, src, protocol, spec, test_labels, missing, files, layout)

    return prepare_once(
        dst, dataset=layout.dataset, parameters=parameters, sources=sources, build=build, force=force,
        expected_bytes=estimate_output_bytes(jobs, sizes, patch_size, stride),
        synthetic_source=is_synthetic_root(src),
    )


def estimate_output_bytes(
    jobs: list[TileJob], sizes: Mapping[Path, tuple[int, int] | None], patch_size: int, stride: int
) -> int:
    """Estimated size of the prepared root: per tile, its image + label bytes scaled by the patched area
    (``tiling.patched_bytes``); a tile whose header could not be read counts its source bytes."""
    total = 0
    for job in jobs:
        source = job.image.stat().st_size + job.label.stat().st_size
        size = sizes.get(job.image)
        total += source if size is None else patched_bytes(source, *size, patch_size, stride, job.split == "train")
    return total


def report_missing(src: Path, protocol: SplitProtocol, missing: dict[str, list[str]]) -> None:
    absent = {split: tiles for split, tiles in missing.items() if tiles}
    if absent:
        total = sum(len(tiles) for tiles in protocol.splits.values())
        listing = "; ".join(f"{split}: {', '.join(tiles)}" for split, tiles in absent.items())
        logger.warning(
            "%s: %d of %d tiles of the %r protocol are missing and will not be used (%s)",
            src,
            sum(map(len, absent.values())),
            total,
            protocol.name,
            listing,
        )


def cut_tiles(
    jobs: list[TileJob],
    out: Path,
    patch_size: int,
    stride: int,
    progress: bool,
    workers: int,
    description: str = "tiles",
    strict: bool = False,
) -> list[dict[str, Any]]:
    """``cut_tile`` for every job, serially or in ``workers`` processes; results in job order."""
    return map_jobs(
        functools.partial(cut_tile, out=out, patch_size=patch_size, stride=stride), jobs,
        workers=workers, progress=progress, description=description, label=lambda job: job.tile,
        on_result=functools.partial(check_tile_labels, strict=strict),
    )


def read_tile_image(path: Path, bands: str) -> np.ndarray:
    """The tile image with exactly the bands of ``bands`` (extra trailing bands, e.g. alpha, dropped)."""
    channels = len(BANDS[bands])
    image = read_image(path)
    if image.ndim != 3 or image.shape[2] < channels:
        raise DataError(f"{path}: expected a {channels}-band {bands} image, got shape {image.shape}")
    return image[..., :channels]


def cut_tile(job: TileJob, out: Path, patch_size: int, stride: int) -> dict[str, Any]:
    """Read, check and decode one tile, write its patches; return its statistics and patch list."""
    image = read_tile_image(job.image, job.bands)
    colours = read_image(job.label)
    if colours.ndim != 3 or colours.shape[2] < 3:
        raise DataError(f"{job.label}: expected an RGB colour label, got shape {colours.shape}")
    height, width = image.shape[:2]
    if colours.shape[:2] != (height, width):
        raise DataError(
            f"size mismatch for tile {job.tile}: {job.image} is {height}×{width} but "
            f"{job.label} is {colours.shape[0]}×{colours.shape[1]}"
        )
    mask, n_boundary, n_unknown = decode_isprs_label(colours, IGNORE_INDEX)
    origins = split_grid(height, width, patch_size, stride, overlapping=job.split == "train")
    patches = write_patches(out / job.split, image, mask, origins, patch_size,
                            name=lambda y, x: f"{job.patch_stem}_{y:05d}_{x:05d}", meta={"tile": job.tile},
                            image_fill=IMAGE_FILL, mask_fill=IGNORE_INDEX)
    return {
        "job": job,
        "height": height,
        "width": width,
        "pixels_per_class": count_pixels(mask, len(ISPRS_CLASSES)),
        "boundary_pixels": n_boundary,
        "unknown_pixels": n_unknown,
        "patches": patches,
    }


def report_unknown_colours(result: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """Unknown colours became ignore; say so loudly (torchgeo#1727: an overlay silently became clutter).

    ``strict`` turns the warning into a DataError, for users who want no label silently ignored.
    """
    count = result["unknown_pixels"]
    if count:
        share = 100 * count / (result["height"] * result["width"])
        hint = "; this does not look like a colour label at all" if share > 50 else ""
        message = f"{result['job'].label}: {count} pixels ({share:.2f}%) have colours outside the ISPRS colour code"
        if strict:
            raise DataError(f"{message}{hint} (strict mode)")
        warnings.warn(f"{message}; they are set to ignore ({IGNORE_INDEX}){hint}", DataWarning, stacklevel=2)
    return result


# Label sanity checks on the decoded statistics of each tile (``cut_tile``'s result).

MIN_CLASS_SHARE = 0.01  # fewer class pixels (the rest boundary black or unknown): nothing left to score
BOUNDARY_WARNING_SHARE = 0.50  # more than this: not an eroded ISPRS label (synthetic twins ≤ 16 %)
BGR_MIN_SHARE = 0.10  # car and clutter each at least this share of the class pixels …
BGR_MIN_RATIO = 3.0  # … and at least this many times low vegetation and building respectively
BUILDING, LOW_VEGETATION, CAR, CLUTTER = (
    ISPRS_CLASSES.index(name) for name in ("building", "low_vegetation", "car", "clutter")
)


def check_tile_labels(result: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """All checks of one cut tile's label, in order: unknown colours, boundary share, BGR order."""
    report_unknown_colours(result, strict)
    check_boundary_share(result, strict)
    report_bgr_order(result, strict)
    return result


def check_boundary_share(result: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """A label that leaves (nearly) nothing to score is a DataError; a large boundary share a warning.

    Eroded ``noBoundary`` labels paint class borders black (ignore). A label with no class pixel at
    all, or with fewer than 1 % (the rest boundary black or unknown colours, e.g. an all-black eroded
    label), would make its whole tile silently vanish from training or scoring: always a DataError.
    Black on more than half of the pixels is implausible: the synthetic twins' eroded labels (3-px
    disk, as ISPRS) have 7–10 % (Potsdam) and 12–16 % (Vaihingen), their small tiles up to 23 %, the
    blocky test fixtures (6–11 px cells) up to 40 %, and full labels none; a DataWarning, a DataError
    under ``strict``.
    """
    label = result["job"].label
    total = result["height"] * result["width"]
    boundary = result["boundary_pixels"]
    classified = sum(result["pixels_per_class"])
    share = boundary / total
    kind = f"{result['job'].label_kind} label"
    if classified == 0 or classified < MIN_CLASS_SHARE * total:
        raise DataError(
            f"{label}: only {classified} of its {total} pixels carry an ISPRS class ({boundary} are boundary "
            f"black, {result['unknown_pixels']} unknown colours), so tile {result['job'].tile} would silently "
            f"drop out of training and scoring; re-extract this {kind} from its archive"
        )
    if share > BOUNDARY_WARNING_SHARE:
        message = (
            f"{label}: {100 * share:.1f}% of its pixels are boundary black (ignored in training and scoring); "
            f"eroded ISPRS labels blacken only a thin band along class borders, so this {kind} looks damaged"
        )
        if strict:
            raise DataError(f"{message}; re-extract it from its archive (strict mode)")
        warnings.warn(f"{message}; check it (--strict makes this an error)", DataWarning, stacklevel=2)
    return result


def report_bgr_order(result: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """Warn about (``strict``: refuse) a label that looks saved in BGR order, from its class shares.

    The ISPRS colour code maps onto itself under R↔B: building (0,0,255) ↔ clutter (255,0,0) and low
    vegetation (0,255,255) ↔ car (255,255,0), while impervious, tree and black stay; so a BGR label
    decodes without a single unknown colour. Its class statistics give it away: in real tiles car is
    a few % and far rarer than low vegetation, clutter far rarer than building (commonly reported
    overall shares, not measured here: car ≈ 1.2–1.7 %, low vegetation ≈ 21–24 %, clutter ≈ 1–5 %,
    building ≈ 26 %). The synthetic twins (default tiles, full and eroded labels) agree: car 0.7–4.1 %,
    low vegetation 13.5–34.7 %, clutter 1.7–3.7 %, building 19.6–33.0 % per tile.

    Rule, on the shares of the class pixels (boundary and unknown left out): BGR is suspected when
    *both* swapped pairs are decisively inverted: car ≥ 10 % and ≥ 3 × low vegetation, and clutter
    ≥ 10 % and ≥ 3 × building. R↔B-swapped twins have car 13.5–34.7 % at ≥ 4× low vegetation and
    clutter 19.6–33.0 % at ≥ 5.6× building, so every one is caught. Requiring both pairs and the
    absolute floors keeps it quiet where one pair alone is inverted: small synthetic tiles without
    buildings (car up to 20 %, several times low vegetation, but clutter ≤ 3 %) and the random blocky
    test fixtures (every class ≈ 17 %, ratios ≈ 1). It is a heuristic, hence a DataWarning, a DataError
    only under ``strict``.
    """
    counts = result["pixels_per_class"]
    classified = sum(counts)
    if not classified:
        return result
    share = [count / classified for count in counts]
    car_inverted = share[CAR] >= BGR_MIN_SHARE and share[CAR] >= BGR_MIN_RATIO * share[LOW_VEGETATION]
    clutter_inverted = share[CLUTTER] >= BGR_MIN_SHARE and share[CLUTTER] >= BGR_MIN_RATIO * share[BUILDING]
    if not (car_inverted and clutter_inverted):
        return result
    message = (
        f"{result['job'].label}: looks saved in BGR order (red and blue channels swapped): car is "
        f"{100 * share[CAR]:.1f}% of the class pixels against {100 * share[LOW_VEGETATION]:.1f}% low vegetation, "
        f"clutter {100 * share[CLUTTER]:.1f}% against {100 * share[BUILDING]:.1f}% building, the reverse of ISPRS "
        "tiles; swap the channels back (e.g. a label written with OpenCV's imwrite from an RGB array)"
    )
    if strict:
        raise DataError(f"{message} (strict mode)")
    warnings.warn(f"{message}; if its colours are right, ignore this warning", DataWarning, stacklevel=2)
    return result


def summarise(
    results: list[dict[str, Any]],
    src: Path,
    protocol: SplitProtocol,
    spec: DatasetSpec,
    test_labels: str,
    missing: dict[str, list[str]],
    files: dict[str, dict[str, Path]],
    layout: IsprsLayout,
) -> dict:
    """Manifest entries: protocol, bands, per-split counts, per-tile records and the patch list."""
    splits: dict[str, dict[str, Any]] = {}
    patches: dict[str, list[dict[str, Any]]] = {}
    tiles: dict[str, dict[str, Any]] = {}
    for split in protocol.splits:
        mine = [result for result in results if result["job"].split == split]
        per_class = [
            sum(result["pixels_per_class"][index] for result in mine) for index in range(spec.num_classes)
        ]
        splits[split] = {
            "label_kind": label_kind_for(split, test_labels),
            "tiles": [result["job"].tile for result in mine],
            "missing_tiles": missing[split],
            "num_tiles": len(mine),
            "num_patches": sum(len(result["patches"]) for result in mine),
            "pixels_per_class": per_class,
            "boundary_pixels": sum(result["boundary_pixels"] for result in mine),
            "unknown_pixels": sum(result["unknown_pixels"] for result in mine),
        }
        patches[split] = [patch for result in mine for patch in result["patches"]]
    for result in results:
        job = result["job"]
        tiles[job.tile] = {
            "split": job.split,
            "image": job.image.relative_to(src).as_posix(),
            "label": job.label.relative_to(src).as_posix(),
            "label_kind": job.label_kind,
            "height": result["height"],
            "width": result["width"],
            "num_patches": len(result["patches"]),
            "boundary_pixels": result["boundary_pixels"],
            "unknown_pixels": result["unknown_pixels"],
        }
    found = {tile for tile, kinds in files.items() if "image" in kinds}
    unused = sorted(found - set(tiles) - set(protocol.excluded), key=layout.tile_sort_key)
    order = BANDS[layout.bands]
    return {
        "protocol": {
            "name": protocol.name,
            "description": protocol.description,
            "splits": {split: list(t) for split, t in protocol.splits.items()},
            "excluded_tiles": dict(protocol.excluded),
        },
        "classes": list(spec.classes),
        "palette": [list(colour) for colour in spec.palette],
        "ignore_index": spec.ignore_index,
        "exclude_from_mean": list(spec.exclude_from_mean),
        "image_bands": {
            "name": layout.bands,
            "order": list(order),
            "storage": "PNG RGBA, 4th channel = IR" if len(order) == 4 else "PNG, 3 channels in band order",
        },
        "complete": not any(missing.values()),
        "splits": splits,
        "excluded_tiles_found": sorted(found & set(protocol.excluded), key=layout.tile_sort_key),
        "unused_tiles_found": unused,
        "tiles": tiles,
        "patches": patches,
    }
