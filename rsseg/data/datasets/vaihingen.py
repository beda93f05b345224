"""ISPRS Vaihingen: area ids, file names, split protocols, preparation into patches, dataset, datamodule.

Raw layout (docs/datasets.md §4), anywhere under ``--src``:

* ``ISPRS_semantic_labeling_Vaihingen.zip`` → ``top/top_mosaic_09cm_area{N}.tif``: 33 IR-R-G false-colour
  tiles of about 2000×2500 px, every one a different size, 9 cm GSD.
* ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip`` → ``top_mosaic_09cm_area{N}.tif``:
  full colour labels, flat, with **the same file name as the image**.
* ``ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip`` →
  ``top_mosaic_09cm_area{N}_noBoundary.tif``: eroded labels (boundaries black).

Telling images from labels: a ``top_mosaic_09cm_area{N}.tif`` whose folder is named ``top`` (any case)
is the image, as the image archive extracts; anywhere else it is the full label. The 16 labels the image
archive ships in ``gts_for_participants/`` are used only for areas without a COMPLETE label. Two images
or two labels of one area (e.g. images moved out of ``top/``, so they look like labels) are a DataError
naming both files; so is a source without any ``top/`` image.

Protocols (the same label/metric conventions as Potsdam, see ``isprs/labels.py``):

* ``unetformer`` (default, GeoSeg/UNetFormer): test = the 17 official test areas with eroded labels;
  val = area 30; train = the other 15 official training areas. Clutter is left out of mIoU/mF1.
* ``official`` (ISPRS/torchgeo/mmseg): train = the 16 official training areas, test = 17, no val;
  clutter included in the means.

Tiles are cut into fixed-size patches (padded with ignore at the bottom/right), so the variable tile
sizes never reach the collate function (torchgeo#851).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rsseg.data.core.prepare import SplitProtocol
from rsseg.data.core.protocols import lookup_protocol
from rsseg.data.core.spec import DatasetSpec
from rsseg.data.datasets.isprs.datamodule import IsprsDataModule, IsprsPatchDataset
from rsseg.data.datasets.isprs.labels import isprs_spec
from rsseg.data.datasets.isprs.prepare import (
    IsprsLayout,
    prepare_isprs,
    require_images,
    walk_isprs_files,
)

DATASET = "vaihingen"
BANDS = "IRRG"  # the only band set Vaihingen ships

OFFICIAL_TRAIN_AREAS = tuple(str(n) for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37))
OFFICIAL_TEST_AREAS = tuple(str(n) for n in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38))
UNETFORMER_VAL_AREAS = ("30",)

PROTOCOLS = {
    "unetformer": SplitProtocol(
        name="unetformer",
        splits={
            "train": tuple(a for a in OFFICIAL_TRAIN_AREAS if a not in UNETFORMER_VAL_AREAS),
            "val": UNETFORMER_VAL_AREAS,
            "test": OFFICIAL_TEST_AREAS,
        },
        description="GeoSeg/UNetFormer: train 15 areas, val area 30, test 17 official test areas",
    ),
    "official": SplitProtocol(
        name="official",
        splits={"train": OFFICIAL_TRAIN_AREAS, "test": OFFICIAL_TEST_AREAS},
        description="ISPRS area lists: train 16 areas, test 17 areas, no val split",
    ),
}
DEFAULT_PROTOCOL = "unetformer"

IMAGE_FOLDER = "top"
PARTICIPANTS_FOLDER = "gts_for_participants"
_FILE_PATTERN = re.compile(r"^top_mosaic_09cm_area(\d+)(_noBoundary)?\.(?i:tiff?)$")
RAW_PATTERN = "top_mosaic_09cm_area*.tif"


def area_sort_key(area: str) -> int:
    """Areas sort numerically: 2 before 10."""
    return int(area)


LAYOUT = IsprsLayout(
    dataset=DATASET,
    display_name="Vaihingen",
    bands=BANDS,
    file_names={
        "image": f"{IMAGE_FOLDER}/top_mosaic_09cm_area{{tile}}.tif",
        "label": "top_mosaic_09cm_area{tile}.tif",
        "label_noBoundary": "top_mosaic_09cm_area{tile}_noBoundary.tif",
    },
    archives={
        "image": "ISPRS_semantic_labeling_Vaihingen.zip",
        "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
        "label_noBoundary": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
    },
    patch_stem="top_mosaic_09cm_area{tile}",
    tile_sort_key=area_sort_key,
    tile_word="area",
    tile_placeholder="<N>",
)

_SAME_NAME_HINT = (
    " (Vaihingen images and full labels share the name top_mosaic_09cm_area<N>.tif: a file in a folder "
    f"named {IMAGE_FOLDER!r} is the image, as ISPRS_semantic_labeling_Vaihingen.zip extracts, a file "
    "anywhere else is the label; keep the images in top/ and one copy of each label elsewhere)"
)


def _duplicate_hint(area: str, kind: str) -> str:
    if kind == "image":
        return f" (two folders named {IMAGE_FOLDER!r} hold it: extract ISPRS_semantic_labeling_Vaihingen.zip once)"
    return _SAME_NAME_HINT


def patch_id(area: str, y: int, x: int) -> str:
    return f"top_mosaic_09cm_area{area}_{y:05d}_{x:05d}"


def get_protocol(protocol: str) -> SplitProtocol:
    """The split protocol called ``protocol``; an UnknownProtocolError (a DataError) lists the known ones."""
    return lookup_protocol(PROTOCOLS, protocol, "Vaihingen")


def vaihingen_spec(protocol: str = DEFAULT_PROTOCOL, test_labels: str = "eroded") -> DatasetSpec:
    """Label and metric convention of Vaihingen under ``protocol`` (clutter out of the means only under
    ``unetformer``)."""
    return isprs_spec(DATASET, get_protocol(protocol), test_labels)


VAIHINGEN_SPEC = vaihingen_spec()


# --------------------------------------------------------------------------------------------------
# Source discovery


def classify_vaihingen_file(folder: Path, name: str) -> tuple[str, str] | None:
    """``(area, kind)`` of a Vaihingen file, the image/label decided by the folder (module docstring)."""
    match = _FILE_PATTERN.match(name)
    if match is None:
        return None
    area = str(int(match[1]))
    if match[2]:
        return area, "label_noBoundary"
    parent = folder.name.lower()
    if parent == IMAGE_FOLDER:
        return area, "image"
    if parent == PARTICIPANTS_FOLDER:
        return area, "label_participants"
    return area, "label"


def find_vaihingen_files(src: str | Path) -> dict[str, dict[str, Path]]:
    """All Vaihingen image and label files under ``src``, by area id and kind; no duplicates."""
    src = Path(src)
    found, archives = walk_isprs_files(src, LAYOUT, classify_vaihingen_file, _duplicate_hint)
    for kinds in found.values():
        participants = kinds.pop("label_participants", None)
        if participants is not None and "label" not in kinds:
            kinds["label"] = participants
    labels = sorted(str(kinds["label"]) for kinds in found.values() if "label" in kinds)
    hint = ""
    if labels:
        hint = (
            f"; the {len(labels)} files top_mosaic_09cm_area<N>.tif found (e.g. {labels[0]}) lie outside a "
            f"folder named {IMAGE_FOLDER!r} and were taken for labels: Vaihingen images are recognised by "
            f"their folder {IMAGE_FOLDER}/, as ISPRS_semantic_labeling_Vaihingen.zip extracts"
        )
    require_images(found, archives, src, LAYOUT, hint)
    return found


# --------------------------------------------------------------------------------------------------
# Preparation


def prepare_vaihingen(
    src: str | Path,
    dst: str | Path,
    patch_size: int = 1024,
    stride: int | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    test_labels: str = "eroded",
    force: bool = False,
    progress: bool = True,
    workers: int = 1,
    bands: str = BANDS,
    strict: bool = False,
) -> dict[str, Any]:
    """Cut the raw Vaihingen tiles under ``src`` into patches under ``dst`` (idempotent, atomic).

    Writes ``dst/{train,val,test}/{images,masks}/<patch_id>.png`` (IRRG images, index masks padded with
    255) and ``dst/manifest.json``; returns the manifest with ``already_prepared``. ``bands`` exists for a
    uniform CLI and accepts only ``IRRG``.
    """
    if bands != BANDS:
        raise ValueError(f"Vaihingen ships {BANDS} images only, got bands={bands!r}")
    src = Path(src)
    split_protocol = get_protocol(protocol)
    spec = vaihingen_spec(protocol, test_labels)
    files = find_vaihingen_files(src)
    return prepare_isprs(
        src,
        dst,
        layout=LAYOUT,
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


class VaihingenDataset(IsprsPatchDataset):
    """One split (train/val/test) of a prepared Vaihingen root; see ``PreparedPatchDataset``."""

    dataset_name = DATASET
    display_name = "Vaihingen"


class VaihingenDataModule(IsprsDataModule):
    """Vaihingen patches for fit/validate/test/predict; prepare the root first with ``prepare_vaihingen``.

    Every patch has the same size whatever its tile's size, so batches always collate. ``crop_size``
    random-crops training patches (None keeps whole patches); evaluation uses whole patches. The
    ``official`` protocol has no val split (fit runs without validation). ``in_channels`` is 3 (IRRG).
    """

    dataset_class = VaihingenDataset
    raw_pattern = RAW_PATTERN
    allowed_bands = (BANDS,)
    default_bands = BANDS
    default_protocol = DEFAULT_PROTOCOL

    def make_spec(self, protocol: str, manifest: dict[str, Any] | None = None) -> DatasetSpec:
        test_labels = manifest["parameters"]["test_labels"] if manifest else "eroded"
        return vaihingen_spec(protocol, test_labels)
