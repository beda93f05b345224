"""UAVid's label convention and splits: classes and colour code (official UAVidToolKit trainId order),
release folders and sequences, split protocols and the dataset spec (see the package docstring)."""


from __future__ import annotations

import logging

import numpy as np

from rsseg.data.core.palette import decode_colours, pack_rgb
from rsseg.data.core.prepare import SplitProtocol
from rsseg.data.core.protocols import lookup_protocol
from rsseg.data.core.spec import IGNORE_INDEX, DatasetSpec

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
            "GeoSeg order differs, see rsseg.data.datasets.uavid.labels.OFFICIAL_TO_GEOSEG",
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
