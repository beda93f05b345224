"""ISPRS Potsdam: tile ids, file names, split protocols, preparation into patches, dataset, datamodule.

Raw layout (datasets.md §3): ``top_potsdam_{r}_{c}_RGB.tif`` (2_Ortho_RGB.zip),
``top_potsdam_{r}_{c}_label.tif`` (5_Labels_all.zip) and ``top_potsdam_{r}_{c}_label_noBoundary.tif``
(5_Labels_all_noBoundary.zip), 6000×6000 px, anywhere under ``--src``. Files are paired by tile id.

Protocols:

* ``unetformer`` (default, GeoSeg/UNetFormer papers): test = the 14 official test tiles with eroded
  labels; val = 2_10; train = the other 22 official training tiles; 7_10 is excluded (erroneous labels).
* ``official`` (ISPRS/torchgeo/mmseg tile lists): train = the 24 official training tiles, test = 14;
  there is no val split.

Train/val use the full labels; test uses the eroded ``noBoundary`` labels (boundaries → ignore) unless
``test_labels="full"``. Clutter (5) is trained and counted in OA but left out of mIoU/mF1.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rsseg.data.base import PatchDataModule, PreparedPatchDataset
from rsseg.data.errors import DataError, DataWarning
from rsseg.data.io import read_image, write_png
from rsseg.data.isprs import CLUTTER, ISPRS_CLASSES, ISPRS_PALETTE, decode_isprs_label
from rsseg.data.prepare import SplitProtocol, count_pixels, file_fingerprint, prepare_once
from rsseg.data.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.tiling import check_window, extract_patch, patch_grid, valid_extent

logger = logging.getLogger(__name__)

DATASET = "potsdam"

OFFICIAL_TRAIN_TILES = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
)  # fmt: skip
OFFICIAL_TEST_TILES = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14", "6_15",
    "7_13",
)  # fmt: skip
UNETFORMER_VAL_TILES = ("2_10",)
UNETFORMER_EXCLUDED = {"7_10": "erroneous annotations (excluded by the UNetFormer protocol)"}

PROTOCOLS = {
    "unetformer": SplitProtocol(
        name="unetformer",
        splits={
            "train": tuple(
                t
                for t in OFFICIAL_TRAIN_TILES
                if t not in UNETFORMER_VAL_TILES and t not in UNETFORMER_EXCLUDED
            ),
            "val": UNETFORMER_VAL_TILES,
            "test": OFFICIAL_TEST_TILES,
        },
        excluded=UNETFORMER_EXCLUDED,
        description="GeoSeg/UNetFormer: train 22 tiles, val 2_10, test 14 official test tiles, 7_10 excluded",
    ),
    "official": SplitProtocol(
        name="official",
        splits={"train": OFFICIAL_TRAIN_TILES, "test": OFFICIAL_TEST_TILES},
        description="ISPRS tile lists: train 24 tiles, test 14 tiles, no val split",
    ),
}
DEFAULT_PROTOCOL = "unetformer"
TEST_LABEL_KINDS = ("eroded", "full")

# file kind → (file-name suffix, archive it comes from)
FILE_KINDS = {
    "image": ("RGB", "2_Ortho_RGB.zip"),
    "label": ("label", "5_Labels_all.zip"),
    "label_noBoundary": ("label_noBoundary", "5_Labels_all_noBoundary.zip"),
}
_FILE_PATTERN = re.compile(r"^top_potsdam_(\d+_\d+)_(RGB|label|label_noBoundary)\.(?i:tiff?)$")
_KIND_BY_SUFFIX = {suffix: kind for kind, (suffix, _) in FILE_KINDS.items()}
RAW_PATTERN = "top_potsdam_*_RGB.tif"
_DUPLICATE_HINTS = {
    ("4_12", "label"): " (the 4_12 label in 5_Labels_all.zip is an overlay on the image, torchgeo#1727; "
    "keep the copy from 5_Labels_for_participants.zip)"
}
IMAGE_FILL = 0


def tile_sort_key(tile: str) -> tuple[int, int]:
    """Tile ids sort numerically by (row, column): 6_7 before 6_10."""
    row, column = tile.split("_")
    return int(row), int(column)


def patch_id(tile: str, y: int, x: int) -> str:
    return f"top_potsdam_{tile}_{y:05d}_{x:05d}"


def get_protocol(protocol: str) -> SplitProtocol:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Potsdam protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def potsdam_spec(protocol: str = DEFAULT_PROTOCOL, test_labels: str = "eroded") -> DatasetSpec:
    """Label and metric convention of Potsdam under ``protocol``."""
    get_protocol(protocol)
    if test_labels not in TEST_LABEL_KINDS:
        raise ValueError(f"test_labels must be one of {TEST_LABEL_KINDS}, got {test_labels!r}")
    return DatasetSpec(
        name=DATASET,
        classes=ISPRS_CLASSES,
        palette=ISPRS_PALETTE,
        protocol=protocol,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(CLUTTER,),
        eroded_test_labels=test_labels == "eroded",
        notes={
            "splits": PROTOCOLS[protocol].description,
            "metrics": "clutter is trained and counted in OA, left out of mIoU/mF1 (UNetFormer convention)",
            "labels": f"train/val full labels; test {test_labels} labels",
        },
    )


POTSDAM_SPEC = potsdam_spec()


# --------------------------------------------------------------------------------------------------
# Source discovery


def find_potsdam_files(src: str | Path) -> dict[str, dict[str, Path]]:
    """All Potsdam RGB/label files under ``src``, by tile id and kind; any folder layout, no duplicates."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: Potsdam source folder does not exist")
    found: dict[str, dict[str, Path]] = {}
    archives: list[str] = []
    for folder, subfolders, names in os.walk(src, followlinks=True):
        subfolders.sort()
        for name in sorted(names):
            if name.lower().endswith(".zip"):
                archives.append(name)
            match = _FILE_PATTERN.match(name)
            if match is None:
                continue
            tile, kind = match[1], _KIND_BY_SUFFIX[match[2]]
            path = Path(folder) / name
            if kind in found.setdefault(tile, {}):
                raise DataError(
                    f"duplicate Potsdam {kind} files for tile {tile}: {found[tile][kind]} and "
                    f"{path}; keep only one of them under {src}{_DUPLICATE_HINTS.get((tile, kind), '')}"
                )
            found[tile][kind] = path
    if not any("image" in kinds for kinds in found.values()):
        extract = f"; found archives {', '.join(sorted(archives))}: extract them first" if archives else ""
        raise DataError(f"{src}: no Potsdam images (top_potsdam_<r>_<c>_RGB.tif) found{extract}")
    return found


@dataclass(frozen=True)
class TileJob:
    """One tile to cut: where it comes from and which split/labels it goes to."""

    tile: str
    split: str
    image: Path
    label: Path
    label_kind: str  # "full" or "eroded"


def label_kind_for(split: str, test_labels: str) -> str:
    return test_labels if split == "test" else "full"


def plan_tiles(
    files: dict[str, dict[str, Path]], protocol: SplitProtocol, test_labels: str, src: Path
) -> tuple[list[TileJob], dict[str, list[str]]]:
    """Pair each protocol tile's image with the label its split needs; also return missing tiles.

    A protocol tile without an image is missing (allowed: subsets and the synthetic data have a few
    tiles, recorded in the manifest); an image without its label is an error; every split needs a tile.
    """
    jobs: list[TileJob] = []
    missing: dict[str, list[str]] = {}
    for split, tiles in protocol.splits.items():
        kind = label_kind_for(split, test_labels)
        label_key = "label_noBoundary" if kind == "eroded" else "label"
        missing[split] = []
        for tile in sorted(tiles, key=tile_sort_key):
            paths = files.get(tile, {})
            if "image" not in paths:
                missing[split].append(tile)
                continue
            if label_key not in paths:
                suffix, archive = FILE_KINDS[label_key]
                raise DataError(
                    f"{src}: missing label file top_potsdam_{tile}_{suffix}.tif for tile {tile} "
                    f"({split} split, {kind} labels; from {archive}); its image is "
                    f"{paths['image']}"
                )
            jobs.append(TileJob(tile, split, paths["image"], paths[label_key], kind))
        if len(missing[split]) == len(tiles):
            raise DataError(
                f"{src}: none of the {len(tiles)} {split} tiles of the {protocol.name!r} protocol "
                f"was found (e.g. top_potsdam_{tiles[0]}_RGB.tif)"
            )
    return jobs, missing


# --------------------------------------------------------------------------------------------------
# Preparation


def prepare_potsdam(
    src: str | Path,
    dst: str | Path,
    patch_size: int = 1024,
    stride: int | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    test_labels: str = "eroded",
    force: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Cut the raw Potsdam tiles under ``src`` into patches under ``dst`` (idempotent, atomic).

    Writes ``dst/{train,val,test}/{images,masks}/<patch_id>.png`` and ``dst/manifest.json``; returns the
    manifest with ``already_prepared`` telling whether an identical preparation was already there.
    ``workers`` > 1 cuts tiles in parallel processes (≈7 s per 6000² tile on one core).
    """
    src = Path(src)
    stride = patch_size if stride is None else stride
    check_window(patch_size, stride)
    split_protocol = get_protocol(protocol)
    spec = potsdam_spec(protocol, test_labels)
    files = find_potsdam_files(src)
    jobs, missing = plan_tiles(files, split_protocol, test_labels, src)
    sources = sorted(
        (file_fingerprint(path, src) for job in jobs for path in (job.image, job.label)),
        key=lambda source: source["path"],
    )
    parameters = {
        "protocol": protocol,
        "patch_size": patch_size,
        "stride": stride,
        "test_labels": test_labels,
        "bands": "RGB",
        "image_fill": IMAGE_FILL,
        "mask_fill": IGNORE_INDEX,
    }

    def build(out: Path) -> dict[str, Any]:
        _report_missing(src, split_protocol, missing)
        for split in split_protocol.splits:
            (out / split / "images").mkdir(parents=True)
            (out / split / "masks").mkdir(parents=True)
        results = _cut_tiles(jobs, out, patch_size, stride, progress, workers)
        return _summarise(results, src, split_protocol, spec, test_labels, missing, files)

    return prepare_once(
        dst, dataset=DATASET, parameters=parameters, sources=sources, build=build, force=force
    )


def _report_missing(src: Path, protocol: SplitProtocol, missing: dict[str, list[str]]) -> None:
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


def _cut_tiles(
    jobs: list[TileJob], out: Path, patch_size: int, stride: int, progress: bool, workers: int
) -> list[dict[str, Any]]:
    bar = tqdm(total=len(jobs), desc="potsdam tiles", unit="tile", disable=not progress)
    results: list[dict[str, Any]] = []
    try:
        if workers <= 1:
            for job in jobs:
                bar.set_postfix_str(job.tile)
                results.append(_report_unknown_colours(cut_tile(job, out, patch_size, stride)))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(cut_tile, job, out, patch_size, stride) for job in jobs]
                try:
                    for future in futures:  # in job order, so the manifest is deterministic
                        results.append(_report_unknown_colours(future.result()))
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
    return results


def cut_tile(job: TileJob, out: Path, patch_size: int, stride: int) -> dict[str, Any]:
    """Read, check and decode one tile, write its patches; return its statistics and patch list."""
    image = read_image(job.image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise DataError(f"{job.image}: expected an RGB image, got shape {image.shape}")
    image = image[..., :3]
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
    patches = []
    for y, x in patch_grid(height, width, patch_size, stride):
        pid = patch_id(job.tile, y, x)
        write_png(
            out / job.split / "images" / f"{pid}.png", extract_patch(image, y, x, patch_size, IMAGE_FILL)
        )
        write_png(
            out / job.split / "masks" / f"{pid}.png", extract_patch(mask, y, x, patch_size, IGNORE_INDEX)
        )
        valid_h, valid_w = valid_extent(height, width, y, x, patch_size)
        patches.append(
            {
                "id": pid,
                "tile": job.tile,
                "y": y,
                "x": x,
                "height": valid_h,
                "width": valid_w,
                "tile_height": height,
                "tile_width": width,
            }
        )
    return {
        "job": job,
        "height": height,
        "width": width,
        "pixels_per_class": count_pixels(mask, len(ISPRS_CLASSES)),
        "boundary_pixels": n_boundary,
        "unknown_pixels": n_unknown,
        "patches": patches,
    }


def _report_unknown_colours(result: dict[str, Any]) -> dict[str, Any]:
    """Unknown colours became ignore; say so loudly (torchgeo#1727: an overlay silently became clutter)."""
    count = result["unknown_pixels"]
    if count:
        share = 100 * count / (result["height"] * result["width"])
        hint = "; this does not look like a colour label at all" if share > 50 else ""
        warnings.warn(
            f"{result['job'].label}: {count} pixels ({share:.2f}%) have colours outside the ISPRS "
            f"colour code; they are set to ignore ({IGNORE_INDEX}){hint}",
            DataWarning,
            stacklevel=2,
        )
    return result


def _summarise(
    results: list[dict[str, Any]],
    src: Path,
    protocol: SplitProtocol,
    spec: DatasetSpec,
    test_labels: str,
    missing: dict[str, list[str]],
    files: dict[str, dict[str, Path]],
) -> dict:
    """Manifest entries: protocol, per-split counts, per-tile records and the patch list."""
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
    unused = sorted(found - set(tiles) - set(protocol.excluded), key=tile_sort_key)
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
        "complete": not any(missing.values()),
        "splits": splits,
        "excluded_tiles_found": sorted(found & set(protocol.excluded), key=tile_sort_key),
        "unused_tiles_found": unused,
        "tiles": tiles,
        "patches": patches,
    }


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule


class PotsdamDataset(PreparedPatchDataset):
    """One split (train/val/test) of a prepared Potsdam root; see ``PreparedPatchDataset``."""

    dataset_name = DATASET
    display_name = "Potsdam"


class PotsdamDataModule(PatchDataModule):
    """Potsdam patches for fit/validate/test/predict; prepare the root first with ``prepare_potsdam``.

    ``crop_size`` random-crops training patches (None keeps whole patches); evaluation always uses whole
    patches. Under the ``official`` protocol there is no val split: fit runs without validation and
    ``validate`` raises a DataError. Predict runs over the test split.
    """

    dataset_class = PotsdamDataset
    raw_pattern = RAW_PATTERN

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: int | None = 512,
        protocol: str = DEFAULT_PROTOCOL,
        eval_batch_size: int | None = None,
        augment: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            root,
            batch_size=batch_size,
            num_workers=num_workers,
            crop_size=crop_size,
            protocol=protocol,
            eval_batch_size=eval_batch_size,
            augment=augment,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )

    def make_spec(self, protocol: str, manifest: dict[str, Any] | None = None) -> DatasetSpec:
        test_labels = manifest["parameters"]["test_labels"] if manifest else "eroded"
        return potsdam_spec(protocol, test_labels)
