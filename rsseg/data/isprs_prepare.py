"""Preparation and prepared-root loading shared by the ISPRS datasets (Potsdam, Vaihingen).

Both datasets ship large image tiles plus RGB colour labels (full and eroded ``noBoundary``), split by
tile id. A dataset module describes its file names in an :class:`IsprsLayout` and classifies the files
it finds; everything else is the same and lives here: walking ``--src`` (any folder layout, duplicates
are errors), pairing each protocol tile's image with the label its split needs, cutting tiles into
patches (in parallel processes if asked), reporting unknown label colours, and the manifest summary.

Images with 4 bands (Potsdam RGBIR) are stored as RGBA PNG patches: lossless, one format for every
band set, readable by ``read_image``; the 4th channel is the IR band, not transparency (viewers will
show IR-weighted transparency). The manifest's ``image_bands`` entry records the band order.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rsseg.data.base import PatchDataModule, PreparedPatchDataset, open_prepared_root
from rsseg.data.errors import DataError, DataWarning
from rsseg.data.io import read_image
from rsseg.data.isprs import BANDS, ISPRS_CLASSES, band_statistics, check_bands, decode_isprs_label
from rsseg.data.prepare import SplitProtocol, count_pixels, file_fingerprint, map_jobs, prepare_once
from rsseg.data.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.tiling import check_window, split_grid, write_patches

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
    is sorted, so the result does not depend on the file system's listing order; a second file of the
    same tile and kind is a DataError naming both.
    """
    if not src.is_dir():
        raise DataError(f"{src}: {layout.display_name} source folder does not exist")
    found: dict[str, dict[str, Path]] = {}
    archives: list[str] = []
    for folder, subfolders, names in os.walk(src, followlinks=True):
        subfolders.sort()
        for name in sorted(names):
            if name.lower().endswith(".zip"):
                archives.append(name)
            hit = classify(Path(folder), name)
            if hit is None:
                continue
            tile, kind = hit
            path = Path(folder) / name
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

    A protocol tile without an image is missing (allowed: subsets and the synthetic data have a few
    tiles, recorded in the manifest); an image without its label is an error; every split needs a tile.
    """
    jobs: list[TileJob] = []
    missing: dict[str, list[str]] = {}
    for split, tiles in protocol.splits.items():
        kind = label_kind_for(split, test_labels)
        label_key = LABEL_KEYS[kind]
        missing[split] = []
        for tile in sorted(tiles, key=layout.tile_sort_key):
            paths = files.get(tile, {})
            if "image" not in paths:
                missing[split].append(tile)
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
            raise DataError(
                f"{src}: none of the {len(tiles)} {split} {layout.tile_word}s of the {protocol.name!r} "
                f"protocol was found (e.g. {layout.file_name(tiles[0], 'image')})"
            )
    return jobs, missing


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
    """Cut the planned tiles into ``dst/{split}/{images,masks}/<patch_id>.png`` through ``prepare_once``."""
    stride = patch_size if stride is None else stride
    check_window(patch_size, stride)
    jobs, missing = plan_tiles(files, protocol, test_labels, src, layout)
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
        dst, dataset=layout.dataset, parameters=parameters, sources=sources, build=build, force=force
    )


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
        on_result=functools.partial(report_unknown_colours, strict=strict),
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


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule over a prepared ISPRS root


class IsprsPatchDataset(PreparedPatchDataset):
    """A split of a prepared ISPRS root, normalised per band as its manifest's ``bands`` says."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Any = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        manifest = manifest or open_prepared_root(root, self.dataset_name, self.display_name)
        band_mean, band_std = band_statistics(manifest["parameters"].get("bands", "RGB"))
        super().__init__(root, split, transform, mean or band_mean, std or band_std, manifest)


class IsprsDataModule(PatchDataModule):
    """A prepared ISPRS root for fit/validate/test/predict, with the image bands it was prepared with.

    ``in_channels`` (3 or 4), ``mean`` and ``std`` follow ``bands`` and are known right after
    ``__init__`` (so a CLI can link ``data.in_channels`` to the model); ``setup`` checks that the root
    was prepared with the same bands, as it checks the protocol.
    """

    allowed_bands: ClassVar[tuple[str, ...]] = tuple(BANDS)
    default_bands: ClassVar[str] = "RGB"

    def __init__(self, root: str, bands: str | None = None, **kwargs: Any) -> None:
        """``bands`` (default: the dataset's) must match the prepared root; other arguments: ``PatchDataModule``."""
        self.bands = check_bands(bands or self.default_bands, self.allowed_bands)
        super().__init__(root, **kwargs)
        self.in_channels: int = len(BANDS[self.bands])
        self.mean, self.std = band_statistics(self.bands)

    def load_manifest(self) -> dict[str, Any]:
        manifest = super().load_manifest()
        prepared = manifest["parameters"].get("bands")
        if prepared != self.bands:
            raise DataError(
                f"{self.root}: prepared with bands {prepared!r} but bands {self.bands!r} were requested; "
                f"prepare another root with --bands {self.bands} or request bands={prepared!r}"
            )
        return manifest
