"""UAVid preparation: find the release frames under ``--src`` and cut them into a prepared root.

Images are paired with labels by sequence and frame name; colours outside the UAVid table become
ignore and are reported per file (or refused with ``strict``). See the package docstring for tiling."""


from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import Counter
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
from rsseg.data.core.spec import IGNORE_INDEX
from rsseg.data.core.tiling import (
    check_patch_fits,
    check_prepare_window,
    patched_bytes,
    raster_size,
    split_grid,
    write_patches,
)
from rsseg.data.core.walk import check_not_broken, walk_source
from rsseg.data.datasets.uavid.labels import (
    DATASET,
    DEFAULT_PROTOCOL,
    NUM_CLASSES,
    OFFICIAL_SEQUENCES,
    RELEASE_FOLDERS,
    UNLABELLED_SPLITS,
    decode_uavid_label,
    get_protocol,
    uavid_spec,
    unknown_colours,
)

logger = logging.getLogger(__name__)

IMAGE_FILL = 0
_SEQUENCE = re.compile(r"^seq(\d+)$", re.IGNORECASE)


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
        synthetic_source=is_synthetic_root(src),
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
