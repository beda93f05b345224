"""UAVid: release layout, colour labels, preparation into patches, dataset and datamodule.

Raw layout (datasets.md §2), as the official release extracts, anywhere under ``--src``::

    uavid_train/seq1/Images/000000.png   uavid_train/seq1/Labels/000000.png   20 sequences × 10 frames
    uavid_val/seq16/Images/...           uavid_val/seq16/Labels/...           7 sequences × 10 frames
    uavid_test/seq21/Images/...                                               15 sequences × 10 frames, no labels

Frames are 3840×2160 or 4096×2160 RGB PNGs; labels are RGB colour PNGs with the same names. An image
is paired with the label of the same sequence and frame name (never by zipping two listings, the bug
risk of GeoSeg's ``uavid_patch_split.py``); sequences sort numerically (seq2 before seq10).

Class indices follow the official UAVidToolKit order (``colorTransformer.py``, its "trainId")::

    index  class                RGB             GeoSeg index
    0      background clutter   (0, 0, 0)       7
    1      building             (128, 0, 0)     0
    2      road                 (128, 64, 128)  1
    3      static car           (192, 0, 192)   5
    4      tree                 (0, 128, 0)     2
    5      low vegetation       (128, 128, 0)   3
    6      human                (64, 64, 0)     6
    7      moving car           (64, 0, 128)    4

Two other orders are in use: GeoSeg/UNetFormer (``OFFICIAL_TO_GEOSEG`` maps ours to theirs) and
SegEarth-OV, which keeps the official order but merges moving car into static car (7 → 3,
``SEGEARTH_OV_MERGE``). Colours are decoded with an exact-match table in RGB order; a colour outside
the table becomes ignore (255), is counted and reported per file (the toolkit silently makes it
clutter), or raises with ``strict=True``. mIoU is over all 8 classes, clutter included, as in the
official ``evaluate.py`` and GeoSeg.

Protocols: ``official`` (train = uavid_train, val = uavid_val) and ``trainval`` (train = uavid_train
+ uavid_val, no val split: what GeoSeg trains on for the server). Test labels are private: test frames
are cut into image patches with their origins, ``predict`` runs over them, and
``rsseg.data.submission_uavid.UAVidSubmissionWriter`` stitches the patches back into full frames and
writes the server's ``seqN/Labels/<frame>.png`` colour PNGs. ``setup("test")`` refuses.

Tiling (``tiling.split_grid``): no pixel is lost (GeoSeg crops the top 112 rows away). Train and test
windows step by ``stride`` with the last row and column aligned to the frame edge, so a 2160-px frame
with 1024-px patches gives three rows without padding; val is cut without overlap (the last row and
column padded: images 0, masks ignore), so each val pixel is counted once in the metrics.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from rsseg.data.base import PatchDataModule, PreparedPatchDataset, normalise, seeded_compose
from rsseg.data.errors import DataError, DataWarning
from rsseg.data.io import read_image
from rsseg.data.palette import decode_colours, pack_rgb
from rsseg.data.prepare import SplitProtocol, count_pixels, file_fingerprint, map_jobs, prepare_once
from rsseg.data.protocols import lookup_protocol
from rsseg.data.spec import IGNORE_INDEX, DatasetSpec
from rsseg.data.tiling import (
    check_patch_fits,
    check_prepare_window,
    patched_bytes,
    raster_size,
    split_grid,
    write_patches,
)
from rsseg.data.walk import check_not_broken, walk_source

logger = logging.getLogger(__name__)

DATASET = "uavid"

UAVID_CLASSES = (
    "background_clutter",
    "building",
    "road",
    "static_car",
    "tree",
    "low_vegetation",
    "human",
    "moving_car",
)
UAVID_PALETTE = (
    (0, 0, 0),  # 0 background clutter
    (128, 0, 0),  # 1 building
    (128, 64, 128),  # 2 road
    (192, 0, 192),  # 3 static car
    (0, 128, 0),  # 4 tree
    (128, 128, 0),  # 5 low vegetation
    (64, 64, 0),  # 6 human
    (64, 0, 128),  # 7 moving car
)
CLUTTER, BUILDING, ROAD, STATIC_CAR, TREE, LOW_VEGETATION, HUMAN, MOVING_CAR = range(8)
NUM_CLASSES = len(UAVID_CLASSES)
# ours (official trainId) -> GeoSeg/UNetFormer index; and the SegEarth-OV merge of moving into static car
OFFICIAL_TO_GEOSEG = (7, 0, 1, 5, 2, 3, 6, 4)
SEGEARTH_OV_MERGE = (0, 1, 2, 3, 4, 5, 6, 3)
PREVIEW_IGNORE_RGB = (255, 255, 255)  # how ignore looks in previews (GeoSeg pads masks with white)

# Release folders and the sequences the official release puts in each (frames 000000, 000100 … 000900).
RELEASE_FOLDERS = ("uavid_train", "uavid_val", "uavid_test")
LABELLED_FOLDERS = ("uavid_train", "uavid_val")
OFFICIAL_SEQUENCES = {
    "uavid_train": tuple(f"seq{n}" for n in (*range(1, 16), *range(31, 36))),
    "uavid_val": tuple(f"seq{n}" for n in (*range(16, 21), 36, 37)),
    "uavid_test": tuple(f"seq{n}" for n in (*range(21, 31), *range(38, 43))),
}
OFFICIAL_FRAME_SIZES = ((2160, 3840), (2160, 4096))

PROTOCOLS = {
    "official": SplitProtocol(
        name="official",
        splits={"train": ("uavid_train",), "val": ("uavid_val",), "test": ("uavid_test",)},
        description="UAVid release splits: train uavid_train (20 seqs), val uavid_val (7), test uavid_test "
        "(15, labels private: predict + server)",
    ),
    "trainval": SplitProtocol(
        name="trainval",
        splits={"train": ("uavid_train", "uavid_val"), "test": ("uavid_test",)},
        description="GeoSeg server protocol: train on uavid_train + uavid_val (27 seqs), no val split, "
        "test uavid_test (labels private: predict + server)",
    ),
}
DEFAULT_PROTOCOL = "official"
UNLABELLED_SPLITS = ("test",)
IMAGE_FILL = 0
RAW_PATTERN = "uavid_*"
_SEQUENCE = re.compile(r"^seq(\d+)$", re.IGNORECASE)
_TEST_REFUSAL = (
    "UAVid test labels are not public: scores on uavid_test come from the benchmark server "
    "(https://codalab.lisn.upsaclay.fr/competitions/7302). Evaluate on val with `validate`, or run "
    "`predict` with rsseg.data.submission_uavid.UAVidSubmissionWriter to write the submission."
)


def get_protocol(protocol: str) -> SplitProtocol:
    """The split protocol called ``protocol``; an UnknownProtocolError (a DataError) lists the known ones."""
    return lookup_protocol(PROTOCOLS, protocol, "UAVid")


def uavid_spec(protocol: str = DEFAULT_PROTOCOL) -> DatasetSpec:
    """Label and metric convention of UAVid: 8 classes in toolkit order, mean over all of them."""
    get_protocol(protocol)
    return DatasetSpec(
        name=DATASET,
        classes=UAVID_CLASSES,
        palette=UAVID_PALETTE,
        protocol=protocol,
        ignore_index=IGNORE_INDEX,
        exclude_from_mean=(),
        eroded_test_labels=False,
        notes={
            "labels": "official UAVidToolKit trainId order (clutter 0 … moving car 7); "
            "GeoSeg order differs, see rsseg.data.uavid.OFFICIAL_TO_GEOSEG",
            "splits": PROTOCOLS[protocol].description,
            "metrics": "mIoU over all 8 classes, clutter included (official evaluate.py, GeoSeg)",
            "test_labels": "private: evaluate val locally, submit test predictions to the server",
        },
    )


UAVID_SPEC = uavid_spec()


# --------------------------------------------------------------------------------------------------
# Colours


_PALETTE_CODES = pack_rgb(UAVID_PALETTE)


def decode_uavid_label(rgb: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, int]:
    """Map an H×W×3 RGB colour label to class indices: ``(mask uint8, number of unknown pixels)``.

    Unknown colours become ``ignore_index``, never a class.
    """
    mask, known, _ = decode_colours(rgb, UAVID_PALETTE, ignore_index)
    n_unknown = int(np.count_nonzero(~known))
    return mask, n_unknown


def unknown_colours(rgb: np.ndarray, top: int = 3) -> list[tuple[tuple[int, int, int], int]]:
    """The most frequent colours outside the UAVid table, with their pixel counts (for messages)."""
    codes = pack_rgb(rgb[..., :3]).ravel()
    codes = codes[~np.isin(codes, _PALETTE_CODES)]
    values, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [
        ((int(v >> 16), int((v >> 8) & 255), int(v & 255)), int(c))
        for v, c in zip(values[order], counts[order], strict=True)
    ]


def encode_uavid_label(mask: np.ndarray, ignore_rgb: tuple[int, int, int] | None = None) -> np.ndarray:
    """Class indices 0–7 back to the official RGB colours (H×W×3 uint8).

    Any other value raises ValueError, unless ``ignore_rgb`` is given: then ``IGNORE_INDEX`` is drawn in
    that colour (previews only; a submission must not contain ignore).
    """
    mask = np.asarray(mask)
    allowed = NUM_CLASSES if ignore_rgb is None else 256
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = UAVID_PALETTE
    if ignore_rgb is not None:
        lut[IGNORE_INDEX] = ignore_rgb
    bad = (mask < 0) | (mask >= allowed) | ((mask >= NUM_CLASSES) & (mask != IGNORE_INDEX))
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise ValueError(f"UAVid label values must be class indices 0–{NUM_CLASSES - 1}, found {values}")
    return lut[mask.astype(np.uint8)]


# --------------------------------------------------------------------------------------------------
# Source discovery


@dataclass(frozen=True)
class FrameFiles:
    """One frame of the release: its folder, sequence, frame name and files (``label`` None in test)."""

    folder: str  # release folder: uavid_train / uavid_val / uavid_test
    seq: str
    frame: str
    image: Path
    label: Path | None

    @property
    def key(self) -> str:
        return f"{self.seq}/{self.frame}"


def sequence_number(name: str) -> int:
    match = _SEQUENCE.match(name)
    return int(match[1]) if match else -1


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def find_release_folders(src: str | Path) -> dict[str, Path]:
    """The uavid_train/uavid_val/uavid_test folders under ``src`` (at any depth, each at most once).

    Linked folders are followed (``walk.walk_source``: never twice, never up to ``/``); a release
    folder that is a broken link is a DataError.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: UAVid source folder does not exist")
    found: dict[str, Path] = {}
    if src.name in RELEASE_FOLDERS:
        found[src.name] = src
    archives: list[str] = []
    for folder, subfolders, names in walk_source(src):
        archives += [name for name in names if name.lower().endswith(".zip")]
        for name in names:
            if name in RELEASE_FOLDERS:
                check_not_broken(folder / name)
        for name in list(subfolders):
            if name in RELEASE_FOLDERS:
                path = folder / name
                if name in found and found[name] != path:
                    raise DataError(
                        f"two UAVid {name} folders: {found[name]} and {path}; keep only one of them under {src}"
                    )
                found[name] = path
                subfolders.remove(name)  # find_release_frames reads its sequences; no need to walk it
    if not found:
        extract = f"; found archives {', '.join(sorted(archives))}: extract them first" if archives else ""
        raise DataError(
            f"{src}: no UAVid release folders (uavid_train, uavid_val, uavid_test with "
            f"seqN/Images/*.png) found{extract}"
        )
    return found


def _subfolder(parent: Path, name: str) -> Path | None:
    """``parent/name`` matched case-insensitively (Images / images); DataError when ambiguous."""
    named = [p for p in parent.iterdir() if p.name.lower() == name.lower()]
    for path in named:
        check_not_broken(path)
    matches = [p for p in named if p.is_dir()]
    if len(matches) > 1:
        raise DataError(f"{parent}: several {name} folders ({', '.join(p.name for p in matches)}); keep one")
    return matches[0] if matches else None


def _pngs(folder: Path) -> dict[str, Path]:
    """The PNG files of ``folder`` by stem; a PNG that is a broken link is a DataError."""
    pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png"]
    for path in pngs:
        check_not_broken(path)
    return {p.stem: p for p in pngs if p.is_file()}


def find_release_frames(folder: Path, labelled: bool) -> list[FrameFiles]:
    """Frames of one release folder, images paired with labels by sequence and frame name, sorted."""
    named = [p for p in folder.iterdir() if _SEQUENCE.match(p.name)]
    for path in named:
        check_not_broken(path)
    sequences = sorted((p for p in named if p.is_dir()), key=lambda p: sequence_number(p.name))
    if not sequences:
        raise DataError(f"{folder}: no sequence folders (seqN/Images/*.png) found")
    frames: list[FrameFiles] = []
    for seq_dir in sequences:
        images_dir = _subfolder(seq_dir, "Images")
        if images_dir is None:
            raise DataError(f"{seq_dir}: no Images folder (expected {seq_dir / 'Images'}/<frame>.png)")
        images = _pngs(images_dir)
        if not images:
            raise DataError(f"{images_dir}: no PNG frames")
        labels: dict[str, Path] = {}
        if labelled:
            labels_dir = _subfolder(seq_dir, "Labels")
            if labels_dir is None:
                raise DataError(f"{seq_dir}: no Labels folder; {folder.name} frames need their colour labels")
            labels = _pngs(labels_dir)
            orphans = sorted(set(labels) - set(images), key=_natural_key)
            if orphans:
                raise DataError(
                    f"{labels[orphans[0]]}: label without an image ({images_dir / (orphans[0] + '.png')} is missing)"
                    + (f"; {len(orphans) - 1} more in {labels_dir}" if len(orphans) > 1 else "")
                )
            unlabelled = sorted(set(images) - set(labels), key=_natural_key)
            if unlabelled:
                raise DataError(
                    f"{images[unlabelled[0]]}: image without a label ({labels_dir / (unlabelled[0] + '.png')} "
                    "is missing)" + (f"; {len(unlabelled) - 1} more in {images_dir}" if len(unlabelled) > 1 else "")
                )
        for name in sorted(images, key=_natural_key):
            frames.append(FrameFiles(folder.name, seq_dir.name, name, images[name], labels.get(name)))
    return frames


# --------------------------------------------------------------------------------------------------
# Preparation


@dataclass(frozen=True)
class FrameJob:
    """One frame to cut: its files, the prepared split it goes to, and the window stride there."""

    frame: FrameFiles
    split: str
    stride: int

    @property
    def labelled(self) -> bool:
        return self.split not in UNLABELLED_SPLITS


def patch_id(seq: str, frame: str, y: int, x: int) -> str:
    return f"{seq}_{frame}_{y:04d}_{x:04d}"


def plan_frames(
    folders: dict[str, Path], protocol: SplitProtocol, src: Path, patch_size: int, stride: int
) -> tuple[list[FrameJob], list[str]]:
    """Frames per prepared split under ``protocol``; also the release folders that are absent.

    Labelled release folders are required; a missing uavid_test only disables predict.
    """
    jobs: list[FrameJob] = []
    absent: list[str] = []
    for split, release in protocol.splits.items():
        for name in release:
            if name not in folders:
                if split in UNLABELLED_SPLITS:
                    absent.append(name)
                    continue
                raise DataError(
                    f"{src}: no {name} folder found (expected {src}/{name}/seqN/Images/*.png and Labels/*.png); "
                    f"the {protocol.name!r} protocol needs it for its {split} split"
                )
            frames = find_release_frames(folders[name], labelled=split not in UNLABELLED_SPLITS)
            split_stride = patch_size if split == "val" else stride  # val metrics count each pixel once
            jobs += [FrameJob(frame, split, split_stride) for frame in frames]
    return jobs, absent


def prepare_uavid(
    src: str | Path,
    dst: str | Path,
    patch_size: int = 1024,
    stride: int | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    strict: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Cut the UAVid frames under ``src`` into patches under ``dst`` (idempotent, atomic).

    Writes ``dst/{train,val}/{images,masks}/<seq>_<frame>_<y>_<x>.png``, ``dst/test/images/…`` (no
    masks: test labels are private) and ``dst/manifest.json`` with every patch's frame and origin.
    ``strict`` turns unknown label colours from a warning into a DataError. ``workers`` > 1 cuts
    frames in parallel processes. Returns the manifest (``already_prepared`` tells whether an
    identical preparation was already there). Before anything is written, ``patch_size`` and ``stride``
    are checked, the patch size against the largest frame (from the headers), and the estimated output
    size against the free space.
    """
    src = Path(src)
    stride = check_prepare_window(patch_size, stride)
    split_protocol = get_protocol(protocol)
    folders = find_release_folders(src)
    jobs, absent = plan_frames(folders, split_protocol, src, patch_size, stride)
    sizes = {job.frame.image: raster_size(job.frame.image) for job in jobs}
    check_patch_fits(sizes, patch_size, "frame")
    sources = sorted(
        (
            file_fingerprint(path, src)
            for job in jobs
            for path in (job.frame.image, job.frame.label)
            if path is not None
        ),
        key=lambda source: source["path"],
    )
    parameters = {
        "protocol": protocol,
        "patch_size": patch_size,
        "stride": stride,
        "val_stride": patch_size,
        "label_order": "uavidtoolkit",
        "image_fill": IMAGE_FILL,
        "mask_fill": IGNORE_INDEX,
    }

    def build(out: Path) -> dict[str, Any]:
        if absent:
            logger.warning(
                "%s: no %s folder; the test split is not prepared and predict will not be available",
                src,
                " or ".join(absent),
            )
        for split in {job.split for job in jobs}:
            (out / split / "images").mkdir(parents=True)
            if split not in UNLABELLED_SPLITS:
                (out / split / "masks").mkdir(parents=True)
        results = _cut_frames(jobs, out, patch_size, strict, progress, workers)
        return _summarise(results, src, split_protocol)

    return prepare_once(
        dst, dataset=DATASET, parameters=parameters, sources=sources, build=build, force=force,
        expected_bytes=estimate_output_bytes(jobs, sizes, patch_size),
    )


def estimate_output_bytes(
    jobs: list[FrameJob], sizes: dict[Path, tuple[int, int] | None], patch_size: int
) -> int:
    """Estimated size of the prepared root: per frame, its image (+ label) bytes scaled by the patched
    area (``tiling.patched_bytes``); a frame whose header could not be read counts its source bytes."""
    total = 0
    for job in jobs:
        source = sum(path.stat().st_size for path in (job.frame.image, job.frame.label) if path is not None)
        size = sizes.get(job.frame.image)
        overlapping = job.split != "val"
        total += source if size is None else patched_bytes(source, *size, patch_size, job.stride, overlapping)
    return total


def _cut_frames(
    jobs: list[FrameJob], out: Path, patch_size: int, strict: bool, progress: bool, workers: int
) -> list[dict[str, Any]]:
    return map_jobs(
        functools.partial(cut_frame, out=out, patch_size=patch_size, strict=strict), jobs,
        workers=workers, progress=progress, description="uavid frames", label=lambda job: job.frame.key,
        on_result=_report_unknown_colours,
    )


def read_uavid_label(path: str | Path, strict: bool = False) -> tuple[np.ndarray, int, list]:
    """Read and decode one colour label file: ``(mask, n_unknown, most frequent unknown colours)``."""
    path = Path(path)
    return _decode_label_file(read_image(path), path, strict)


def _decode_label_file(colours: np.ndarray, path: Path, strict: bool) -> tuple[np.ndarray, int, list]:
    if colours.ndim != 3 or colours.shape[2] < 3:
        raise DataError(
            f"{path}: expected an RGB colour label (UAVid ships colour PNGs), got shape {colours.shape}; "
            "index maps (e.g. from the toolkit's prepareTrainIdFiles.py) are not accepted, use the original Labels"
        )
    mask, n_unknown = decode_uavid_label(colours, IGNORE_INDEX)
    top = unknown_colours(colours) if n_unknown else []
    if n_unknown and strict:
        raise DataError(
            f"{path}: {n_unknown} pixels have colours outside the UAVid colour table "
            f"(most frequent: {_describe(top)}); strict decoding refuses them"
        )
    return mask, n_unknown, top


def cut_frame(job: FrameJob, out: Path, patch_size: int, strict: bool = False) -> dict[str, Any]:
    """Read, check and decode one frame, write its patches; return its statistics and patch list."""
    frame = job.frame
    image = read_image(frame.image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise DataError(f"{frame.image}: expected an RGB frame, got shape {image.shape}")
    image = image[..., :3]
    height, width = image.shape[:2]
    mask = None
    n_unknown, top = 0, []
    if job.labelled:
        colours = read_image(frame.label)
        if colours.shape[:2] != (height, width):
            raise DataError(
                f"size mismatch for {frame.folder}/{frame.key}: {frame.image} is {height}×{width} but "
                f"{frame.label} is {colours.shape[0]}×{colours.shape[1]}"
            )
        mask, n_unknown, top = _decode_label_file(colours, frame.label, strict)
    origins = split_grid(height, width, patch_size, job.stride, overlapping=job.split != "val")
    patches = write_patches(out / job.split, image, mask, origins, patch_size,
                            name=lambda y, x: patch_id(frame.seq, frame.frame, y, x),
                            meta={"tile": frame.key, "seq": frame.seq, "frame": frame.frame},
                            image_fill=IMAGE_FILL, mask_fill=IGNORE_INDEX)
    return {
        "job": job,
        "height": height,
        "width": width,
        "pixels_per_class": count_pixels(mask, NUM_CLASSES) if mask is not None else None,
        "unknown_pixels": n_unknown,
        "unknown_colours": top,
        "patches": patches,
    }


def _describe(top: list[tuple[tuple[int, int, int], int]]) -> str:
    return ", ".join(f"RGB{colour} × {count}" for colour, count in top)


def _report_unknown_colours(result: dict[str, Any]) -> dict[str, Any]:
    """Unknown colours became ignore; say so per file (the toolkit would have made them clutter)."""
    count = result["unknown_pixels"]
    if count:
        share = 100 * count / (result["height"] * result["width"])
        hint = "; this does not look like a UAVid colour label" if share > 50 else ""
        warnings.warn(
            f"{result['job'].frame.label}: {count} pixels ({share:.2f}%) have colours outside the UAVid "
            f"colour table (most frequent: {_describe(result['unknown_colours'])}); they are set to ignore "
            f"({IGNORE_INDEX}){hint}",
            DataWarning,
            stacklevel=2,
        )
    return result


def _summarise(results: list[dict[str, Any]], src: Path, protocol: SplitProtocol) -> dict[str, Any]:
    """Manifest entries: protocol, per-split counts, per-frame records and the patch list."""
    spec = uavid_spec(protocol.name)
    splits: dict[str, dict[str, Any]] = {}
    patches: dict[str, list[dict[str, Any]]] = {}
    frames: dict[str, dict[str, Any]] = {}
    nonstandard: dict[str, list[str]] = {}
    for split in protocol.splits:
        mine = [result for result in results if result["job"].split == split]
        if not mine:
            continue  # uavid_test absent
        labelled = split not in UNLABELLED_SPLITS
        sequences = list(dict.fromkeys(f"{r['job'].frame.folder}/{r['job'].frame.seq}" for r in mine))
        sizes = Counter(f"{r['height']}x{r['width']}" for r in mine)
        splits[split] = {
            "release_folders": list(protocol.splits[split]),
            "labelled": labelled,
            "label_kind": "full" if labelled else "none",
            "sequences": sequences,
            "num_sequences": len(sequences),
            "num_frames": len(mine),
            "num_patches": sum(len(r["patches"]) for r in mine),
            "frame_sizes": dict(sorted(sizes.items())),
            "pixels_per_class": [sum(r["pixels_per_class"][i] for r in mine) for i in range(NUM_CLASSES)]
            if labelled
            else None,
            "unknown_pixels": sum(r["unknown_pixels"] for r in mine),
        }
        patches[split] = [patch for r in mine for patch in r["patches"]]
    for result in results:
        frame = result["job"].frame
        frames[f"{frame.folder}/{frame.key}"] = {
            "split": result["job"].split,
            "seq": frame.seq,
            "frame": frame.frame,
            "image": frame.image.relative_to(src).as_posix(),
            "label": frame.label.relative_to(src).as_posix() if frame.label is not None else None,
            "height": result["height"],
            "width": result["width"],
            "num_patches": len(result["patches"]),
            "unknown_pixels": result["unknown_pixels"],
        }
        if frame.seq not in OFFICIAL_SEQUENCES[frame.folder]:
            nonstandard.setdefault(frame.folder, [])
            if frame.seq not in nonstandard[frame.folder]:
                nonstandard[frame.folder].append(frame.seq)
    for folder, seqs in nonstandard.items():
        logger.warning(
            "%s: %s holds sequences the official release does not put there (%s); results are not comparable "
            "with published numbers",
            src,
            folder,
            ", ".join(seqs),
        )
    return {
        "protocol": {
            "name": protocol.name,
            "description": protocol.description,
            "splits": {split: list(folders) for split, folders in protocol.splits.items()},
        },
        "classes": list(spec.classes),
        "palette": [list(colour) for colour in spec.palette],
        "ignore_index": spec.ignore_index,
        "exclude_from_mean": list(spec.exclude_from_mean),
        "label_order": "UAVidToolKit trainId (colorTransformer.py); GeoSeg index = OFFICIAL_TO_GEOSEG[ours]",
        "unlabelled_splits": [split for split in splits if not splits[split]["labelled"]],
        "nonstandard_sequences": nonstandard,
        "splits": splits,
        "frames": frames,
        "patches": patches,
    }


# --------------------------------------------------------------------------------------------------
# Datasets, sampler and datamodule


def uavid_train_transform(crop_size: int | None, augment: bool = True, ignore_index: int = IGNORE_INDEX):
    """Random crop (images padded with 0, masks with ignore), then a horizontal flip if ``augment``.

    UAVid views are oblique: the far, small-scale part of the scene is at the top, so vertical flips
    and 90° rotations (the nadir default in ``base.train_transform``) would show impossible views.
    """
    steps: list[Any] = []
    if crop_size is not None:
        steps.append(A.RandomCrop(crop_size, crop_size, pad_if_needed=True, fill=0, fill_mask=ignore_index))
    if augment:
        steps.append(A.HorizontalFlip(p=0.5))
    return seeded_compose(steps) if steps else None


_META_KEYS = ("id", "tile", "seq", "frame", "y", "x", "height", "width", "tile_height", "tile_width")


class UAVidDataset(PreparedPatchDataset):
    """One labelled split of a prepared UAVid root; ``meta`` adds ``seq``, ``frame`` and
    ``frame_patches`` (patches of that frame in the split), which the submission writer stitches by."""

    dataset_name = DATASET
    display_name = "UAVid"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_patches = Counter(patch["tile"] for patch in self.patches)

    def frame_meta(self, index: int) -> dict[str, Any]:
        entry = self.patches[index]
        return {**{key: entry[key] for key in _META_KEYS}, "frame_patches": self.frame_patches[entry["tile"]]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        sample["meta"] = self.frame_meta(index)
        return sample


class UAVidUnlabelledDataset(UAVidDataset):
    """The test split: image patches only (labels are private), ``{"image", "meta"}`` per sample."""

    def mask_path(self, index: int) -> Path:
        raise DataError(f"{self.root}: the UAVid {self.split} split has no labels")

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_path(index)
        image = self.read_patch(path, index)
        if image.ndim != 3:
            raise self.damaged(index, f"{path}: expected a multi-band image, got shape {image.shape}")
        return {"image": normalise(image, self.mean, self.std), "meta": self.frame_meta(index)}


class FrameShardSampler(DistributedSampler):
    """Shards an evaluation set by whole frames: rank r gets every patch of frames r, r+N, …

    Every sample is seen exactly once (no padding duplicates), and each rank can stitch and write its
    frames without talking to the others.
    """

    def __init__(self, dataset: UAVidDataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        frames = list(dict.fromkeys(patch["tile"] for patch in dataset.patches))
        mine = set(frames[rank::num_replicas])
        self.indices = [i for i, patch in enumerate(dataset.patches) if patch["tile"] in mine]
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class UAVidDataModule(PatchDataModule):
    """UAVid patches for fit/validate/predict; prepare the root first with ``prepare_uavid``.

    ``crop_size`` random-crops training patches (None keeps whole patches); evaluation uses whole
    patches. ``predict_split`` is ``"test"`` (the submission) or ``"val"`` (to check a submission
    locally with the toolkit's evaluate.py). ``setup("test")`` raises: test labels are private.
    """

    dataset_class = UAVidDataset
    default_protocol = DEFAULT_PROTOCOL
    raw_pattern = RAW_PATTERN

    def __init__(self, root: str, predict_split: str = "test", **kwargs: Any) -> None:
        """``predict_split``: "test" (the submission) or "val"; other arguments: ``PatchDataModule``."""
        if predict_split not in ("test", "val"):
            raise ValueError(f"predict_split must be 'test' or 'val', got {predict_split!r}")
        super().__init__(root, predict_split=predict_split, **kwargs)

    def make_spec(self, protocol: str, manifest: dict[str, Any] | None = None) -> DatasetSpec:
        return uavid_spec(protocol)

    def setup(self, stage: str | None = None) -> None:
        if stage == "test":
            raise DataError(f"{self.root}: {_TEST_REFUSAL}")
        splits = self.load_manifest()["patches"]
        if stage in ("fit", None):
            transform = uavid_train_transform(self.crop_size, self.augment, self.spec.ignore_index)
            self.train_dataset = self._dataset("train", transform)
        if stage in ("fit", "validate", None):
            if "val" in splits:
                self.val_dataset = self._dataset("val")
            elif stage == "validate":
                raise DataError(
                    f"{self.root}: protocol {self.protocol!r} has no val split (val frames are trained on); "
                    "prepare with protocol 'official' to validate"
                )
        if stage in ("predict", None):
            if self.predict_split in splits:
                self.predict_dataset = self._predict_dataset()
            elif stage == "predict":
                raise DataError(
                    f"{self.root}: no {self.predict_split!r} split was prepared"
                    + (" (uavid_test was not found under --src)" if self.predict_split == "test" else "")
                )

    def _predict_dataset(self) -> UAVidDataset:
        manifest = self.load_manifest()
        cls = UAVidUnlabelledDataset if self.predict_split in UNLABELLED_SPLITS else UAVidDataset
        return cls(self.root, self.predict_split, manifest=manifest)

    def test_dataloader(self):
        raise DataError(f"{self.root}: {_TEST_REFUSAL}")

    def _unpadded_sampler(self, dataset: PreparedPatchDataset) -> torch.utils.data.Sampler | None:
        """Under DDP, whole frames per rank, so predictions can be stitched and written rank-locally."""
        kwargs = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer else None
        if not kwargs or kwargs.get("num_replicas", 1) <= 1:
            return None
        return FrameShardSampler(dataset, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"])

    def _log_splits(self, manifest: dict[str, Any]) -> None:
        for split, info in manifest["splits"].items():
            logger.info(
                "uavid (%s protocol) %s: %d sequences, %d frames, %d patches, %s",
                self.protocol,
                split,
                info["num_sequences"],
                info["num_frames"],
                info["num_patches"],
                "labelled" if info["labelled"] else "no labels (predict only)",
            )
