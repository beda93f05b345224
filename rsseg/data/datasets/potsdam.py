"""ISPRS Potsdam: tile ids, file names, split protocols, preparation into patches, dataset, datamodule.

Raw layout (docs/datasets.md §3): images of the bands chosen with ``bands``, one of
``top_potsdam_{r}_{c}_RGB.tif`` (2_Ortho_RGB.zip, default), ``top_potsdam_{r}_{c}_IRRG.tif``
(3_Ortho_IRRG.zip) or ``top_potsdam_{r}_{c}_RGBIR.tif`` (4_Ortho_RGBIR.zip, 4 bands); labels
``top_potsdam_{r}_{c}_label.tif`` (5_Labels_all.zip) and ``top_potsdam_{r}_{c}_label_noBoundary.tif``
(5_Labels_all_noBoundary.zip), 6000×6000 px, anywhere under ``--src`` (in their folders or flat).
Files are paired by tile id; image files of the other band sets are ignored.

Protocols:

* ``unetformer`` (default, GeoSeg/UNetFormer papers): test = the 14 official test tiles with eroded
  labels; val = 2_10; train = the other 22 official training tiles; 7_10 is excluded (erroneous labels).
  Clutter (5) is trained and counted in OA but left out of mIoU/mF1.
* ``official`` (ISPRS/torchgeo/mmseg tile lists): train = the 24 official training tiles, test = 14;
  there is no val split. Clutter is included in mIoU/mF1, as mmseg evaluates.

Train/val use the full labels; test uses the eroded ``noBoundary`` labels (boundaries → ignore) unless
``test_labels="full"``. The shared machinery is in ``isprs/prepare.py`` and ``isprs/datamodule.py``;
bands and their normalisation statistics in ``isprs/labels.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rsseg.data.core.prepare import SplitProtocol
from rsseg.data.core.protocols import lookup_protocol
from rsseg.data.core.spec import DatasetSpec
from rsseg.data.datasets.isprs.datamodule import IsprsDataModule, IsprsPatchDataset
from rsseg.data.datasets.isprs.labels import BANDS, TEST_LABEL_KINDS, check_bands, isprs_spec  # noqa: F401  (re-exported)
from rsseg.data.datasets.isprs.prepare import (  # noqa: F401  (IMAGE_FILL, TileJob, cut_tile, label_kind_for: re-exported)
    IMAGE_FILL,
    IsprsLayout,
    TileJob,
    cut_tile,
    label_kind_for,
    prepare_isprs,
    require_images,
    walk_isprs_files,
)
from rsseg.data.datasets.isprs.prepare import plan_tiles as plan_isprs_tiles

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
DEFAULT_BANDS = "RGB"

# image bands → official archive (file names top_potsdam_{r}_{c}_{bands}.tif)
IMAGE_ARCHIVES = {"RGB": "2_Ortho_RGB.zip", "IRRG": "3_Ortho_IRRG.zip", "RGBIR": "4_Ortho_RGBIR.zip"}
# file kind → (file-name suffix, archive it comes from), for the default RGB images
FILE_KINDS = {
    "image": ("RGB", IMAGE_ARCHIVES["RGB"]),
    "label": ("label", "5_Labels_all.zip"),
    "label_noBoundary": ("label_noBoundary", "5_Labels_all_noBoundary.zip"),
}
_FILE_PATTERN = re.compile(r"^top_potsdam_(\d+_\d+)_(RGB|IRRG|RGBIR|label|label_noBoundary)\.(?i:tiff?)$")
RAW_PATTERN = "top_potsdam_*.tif"  # any raw Potsdam file: prepared roots hold only PNG patches
_DUPLICATE_HINTS = {
    ("4_12", "label"): " (the 4_12 label in 5_Labels_all.zip is an overlay on the image, torchgeo#1727; "
    "keep the copy from 5_Labels_for_participants.zip)"
}


def tile_sort_key(tile: str) -> tuple[int, int]:
    """Tile ids sort numerically by (row, column): 6_7 before 6_10."""
    row, column = tile.split("_")
    return int(row), int(column)


def patch_id(tile: str, y: int, x: int) -> str:
    return f"top_potsdam_{tile}_{y:05d}_{x:05d}"


def get_protocol(protocol: str) -> SplitProtocol:
    """The split protocol called ``protocol``; an UnknownProtocolError (a DataError) lists the known ones."""
    return lookup_protocol(PROTOCOLS, protocol, "Potsdam")


def potsdam_spec(protocol: str = DEFAULT_PROTOCOL, test_labels: str = "eroded") -> DatasetSpec:
    """Label and metric convention of Potsdam under ``protocol`` (clutter out of the means only under
    ``unetformer``)."""
    return isprs_spec(DATASET, get_protocol(protocol), test_labels)


POTSDAM_SPEC = potsdam_spec()


def potsdam_layout(bands: str = DEFAULT_BANDS) -> IsprsLayout:
    """Potsdam's file and patch names, with images of ``bands``."""
    check_bands(bands)
    return IsprsLayout(
        dataset=DATASET,
        display_name="Potsdam",
        bands=bands,
        file_names={
            "image": f"top_potsdam_{{tile}}_{bands}.tif",
            "label": "top_potsdam_{tile}_label.tif",
            "label_noBoundary": "top_potsdam_{tile}_label_noBoundary.tif",
        },
        archives={
            "image": IMAGE_ARCHIVES[bands],
            "label": FILE_KINDS["label"][1],
            "label_noBoundary": FILE_KINDS["label_noBoundary"][1],
        },
        patch_stem="top_potsdam_{tile}",
        tile_sort_key=tile_sort_key,
        tile_placeholder="<r>_<c>",
    )


# --------------------------------------------------------------------------------------------------
# Source discovery


def find_potsdam_files(src: str | Path, bands: str = DEFAULT_BANDS) -> dict[str, dict[str, Path]]:
    """All Potsdam image (of ``bands``) and label files under ``src``, by tile id and kind; any folder
    layout, no duplicates."""
    src = Path(src)
    layout = potsdam_layout(bands)

    def classify(folder: Path, name: str) -> tuple[str, str] | None:
        match = _FILE_PATTERN.match(name)
        if match is None:
            return None
        suffix = match[2]
        if suffix in BANDS:
            return (match[1], "image") if suffix == bands else None
        return match[1], suffix

    found, archives = walk_isprs_files(
        src, layout, classify, lambda tile, kind: _DUPLICATE_HINTS.get((tile, kind), "")
    )
    require_images(found, archives, src, layout)
    return found


def plan_tiles(
    files: dict[str, dict[str, Path]],
    protocol: SplitProtocol,
    test_labels: str,
    src: Path,
    bands: str = DEFAULT_BANDS,
) -> tuple[list[TileJob], dict[str, list[str]]]:
    """Pair each protocol tile's image with the label its split needs (see ``isprs.prepare.plan_tiles``)."""
    return plan_isprs_tiles(files, protocol, test_labels, src, potsdam_layout(bands))


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
    bands: str = DEFAULT_BANDS,
    strict: bool = False,
) -> dict[str, Any]:
    """Cut the raw Potsdam tiles under ``src`` into patches under ``dst`` (idempotent, atomic).

    Writes ``dst/{train,val,test}/{images,masks}/<patch_id>.png`` and ``dst/manifest.json``; returns the
    manifest with ``already_prepared`` telling whether an identical preparation was already there.
    ``bands`` picks the images: ``RGB`` (default), ``IRRG`` or ``RGBIR`` (4-band patches, stored as
    RGBA PNG). ``workers`` > 1 cuts tiles in parallel processes (≈7 s per 6000² tile on one core).
    """
    src = Path(src)
    layout = potsdam_layout(bands)
    split_protocol = get_protocol(protocol)
    spec = potsdam_spec(protocol, test_labels)
    files = find_potsdam_files(src, bands)
    return prepare_isprs(
        src,
        dst,
        layout=layout,
        protocol=split_protocol,
        spec=spec,
        files=files,
        patch_size=patch_size,
        stride=stride,
        test_labels=test_labels,
        force=force,
        progress=progress,
        workers=workers,
        strict=strict,
    )


# --------------------------------------------------------------------------------------------------
# Dataset and datamodule


class PotsdamDataset(IsprsPatchDataset):
    """One split (train/val/test) of a prepared Potsdam root; see ``PreparedPatchDataset``."""

    dataset_name = DATASET
    display_name = "Potsdam"


class PotsdamDataModule(IsprsDataModule):
    """Potsdam patches for fit/validate/test/predict; prepare the root first with ``prepare_potsdam``.

    ``crop_size`` random-crops training patches (None keeps whole patches); evaluation always uses whole
    patches. Under the ``official`` protocol there is no val split: fit runs without validation and
    ``validate`` raises a DataError. Predict runs over the test split. ``bands`` must match the prepared
    root; ``in_channels`` is 3 (RGB, IRRG) or 4 (RGBIR).
    """

    dataset_class = PotsdamDataset
    raw_pattern = RAW_PATTERN
    default_protocol = DEFAULT_PROTOCOL
    default_bands = DEFAULT_BANDS

    def make_spec(self, protocol: str, manifest: dict[str, Any] | None = None) -> DatasetSpec:
        test_labels = manifest["parameters"]["test_labels"] if manifest else "eroded"
        return potsdam_spec(protocol, test_labels)
