"""The UAVid test-server submission: full-frame RGB colour PNGs in ``<out>/seqN/Labels/<frame>.png``.

Test labels are private, so the test score comes from the benchmark server (and the toolkit's
``evaluate.py`` reads the same layout for val). Predictions arrive per patch (``prepare_uavid`` cuts
test frames into patches with their origins); :class:`FrameStitcher` puts them back by origin, crops
the padding and, where windows overlap, keeps for each pixel the patch in which it lies farthest from
a cut edge (the centre of a window has the most context). :class:`UAVidSubmissionWriter` does this as
a Lightning prediction callback and writes each frame as soon as all of its patches are in.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from rsseg.data.core.io import write_png
from rsseg.data.datasets.uavid.labels import NUM_CLASSES, encode_uavid_label
from rsseg.data.synthetic.files import write_atomically

_SEQ_NAME = re.compile(r"^seq\d+$", re.IGNORECASE)
_FRAME_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FAR = 1 << 30  # "no cut edge on this side": the frame border, beyond which no window has context
INCOMPLETE_POLICIES = ("raise", "warn")


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, possibly on the GPU
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def check_label_map(label: Any, where: str) -> np.ndarray:
    """An H×W integer map of class indices 0–7 as uint8; ValueError naming ``where`` otherwise."""
    label = _as_numpy(label)
    if label.ndim != 2 or label.size == 0:
        raise ValueError(f"{where}: expected an H×W label map, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{where}: expected integer class indices, got dtype {label.dtype}")
    bad = (label < 0) | (label >= NUM_CLASSES)
    if bad.any():
        values = np.unique(label[bad])[:5].tolist()
        raise ValueError(
            f"{where}: {int(bad.sum())} pixels are not UAVid classes 0–{NUM_CLASSES - 1} (values {values}); "
            "a submission cannot contain ignore or other values"
        )
    return label.astype(np.uint8)


def _check_names(seq: str, frame: str) -> tuple[str, str]:
    seq, frame = str(seq), str(frame)
    frame = frame[:-4] if frame.lower().endswith(".png") else frame
    if not _SEQ_NAME.match(seq):
        raise ValueError(f"UAVid sequence names look like 'seq21', got {seq!r}")
    if not _FRAME_NAME.match(frame) or frame in (".", ".."):
        raise ValueError(f"{seq}: frame name {frame!r} is not a plain file name (e.g. '000000')")
    return seq, frame


def write_uavid_submission(
    frames: Iterable[tuple[str, str, Any]],
    out_dir: str | Path,
    frame_sizes: Mapping[tuple[str, str], tuple[int, int]] | None = None,
) -> list[Path]:
    """Write ``(seq, frame_name, H×W label map)`` items as ``out_dir/seq/Labels/<frame>.png`` colour PNGs.

    Label maps hold class indices 0–7 in the official toolkit order (numpy or torch); each PNG holds
    the official RGB colours. ``frame_sizes`` maps ``(seq, frame)`` to the expected ``(H, W)`` (the
    original frame size); a frame missing from it, or of another size, is an error. Each file appears
    atomically. Returns the written paths in input order.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    seen: set[tuple[str, str]] = set()
    for seq, frame, label in frames:
        seq, frame = _check_names(seq, frame)
        where = f"{seq}/{frame}"
        if (seq, frame) in seen:
            raise ValueError(f"{where}: given twice")
        seen.add((seq, frame))
        label = check_label_map(label, where)
        if frame_sizes is not None:
            if (seq, frame) not in frame_sizes:
                raise ValueError(f"{where}: not one of the expected frames")
            expected = tuple(int(v) for v in frame_sizes[(seq, frame)])
            if label.shape != expected:
                raise ValueError(
                    f"{where}: label map is {label.shape[0]}×{label.shape[1]}, the frame is "
                    f"{expected[0]}×{expected[1]}"
                )
        path = out_dir / seq / "Labels" / f"{frame}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        colours = encode_uavid_label(label)
        write_atomically(path, lambda tmp, colours=colours: write_png(tmp, colours))
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------
# Stitching patch predictions back into frames


@dataclass
class _Canvas:
    label: np.ndarray
    score: np.ndarray  # per pixel: distance to the nearest cut edge of the patch it came from; -1 = empty
    expected: int
    origins: set[tuple[int, int]] = field(default_factory=set)


class FrameStitcher:
    """Assembles per-patch predictions into full frames; ``add`` returns a frame once it is complete."""

    def __init__(self) -> None:
        self._frames: dict[tuple[str, str], _Canvas] = {}

    def add(
        self,
        seq: str,
        frame: str,
        patch: Any,
        y: int,
        x: int,
        height: int,
        width: int,
        frame_height: int,
        frame_width: int,
        frame_patches: int,
    ) -> np.ndarray | None:
        """Place ``patch`` (a patch-size class map) at ``(y, x)``; ``height``×``width`` of it is inside
        the frame, the rest is padding. Returns the frame's H×W label map when its last patch arrived."""
        key = (str(seq), str(frame))
        where = f"{key[0]}/{key[1]} patch at ({y}, {x})"
        patch = check_label_map(patch, where)
        size = (frame_height, frame_width)
        if not (0 <= y and 0 <= x and 0 < height and 0 < width and y + height <= frame_height
                and x + width <= frame_width):
            raise ValueError(f"{where}: a {height}×{width} window does not fit a {frame_height}×{frame_width} frame")
        if patch.shape[0] < height or patch.shape[1] < width:
            raise ValueError(f"{where}: prediction is {patch.shape[0]}×{patch.shape[1]}, smaller than {height}×{width}")
        canvas = self._frames.get(key)
        if canvas is None:
            canvas = _Canvas(
                label=np.zeros(size, np.uint8), score=np.full(size, -1, np.int32), expected=frame_patches
            )
            self._frames[key] = canvas
        if canvas.label.shape != size or canvas.expected != frame_patches:
            raise ValueError(f"{where}: frame size or patch count differs from the frame's earlier patches")
        if (y, x) in canvas.origins:
            raise ValueError(f"{where}: this patch was already received")
        canvas.origins.add((y, x))
        ph, pw = patch.shape
        rows, cols = np.arange(height), np.arange(width)
        row_score = np.minimum(
            rows if y > 0 else _FAR, (ph - 1 - rows) if y + ph < frame_height else _FAR
        ) * np.ones(height, np.int64)
        col_score = np.minimum(
            cols if x > 0 else _FAR, (pw - 1 - cols) if x + pw < frame_width else _FAR
        ) * np.ones(width, np.int64)
        score = np.minimum(row_score[:, None], col_score[None, :]).astype(np.int32)
        window = (slice(y, y + height), slice(x, x + width))
        better = score > canvas.score[window]
        canvas.label[window][better] = patch[:height, :width][better]
        canvas.score[window][better] = score[better]
        if len(canvas.origins) < canvas.expected:
            return None
        del self._frames[key]
        if (canvas.score < 0).any():
            raise ValueError(
                f"{key[0]}/{key[1]}: all {canvas.expected} patches arrived but {int((canvas.score < 0).sum())} "
                "pixels are covered by none of them"
            )
        return canvas.label

    def pending(self) -> list[tuple[str, str, int, int]]:
        """Frames still missing patches: ``(seq, frame, received, expected)``."""
        return [(seq, frame, len(c.origins), c.expected) for (seq, frame), c in self._frames.items()]


def unbatch_meta(meta: Any, batch_size: int) -> list[dict[str, Any]]:
    """Per-sample meta dicts from a collated batch meta (dict of lists/tensors) or a list of dicts."""
    if isinstance(meta, list | tuple):
        return [dict(m) for m in meta]
    if not isinstance(meta, Mapping):
        raise ValueError("prediction meta must be a dict (collated) or a list of dicts; got " + type(meta).__name__)
    samples: list[dict[str, Any]] = [{} for _ in range(batch_size)]
    for key, values in meta.items():
        values = _as_numpy(values).tolist() if hasattr(values, "detach") else list(values)
        if len(values) != batch_size:
            raise ValueError(f"meta[{key!r}] has {len(values)} entries for a batch of {batch_size}")
        for sample, value in zip(samples, values, strict=True):
            sample[key] = value
    return samples


class UAVidSubmissionWriter(BasePredictionWriter):
    """Lightning callback: stitch ``predict_step`` outputs into frames and write the submission.

    Expects ``{"pred": B×H×W class indices, "meta": batch meta}`` from ``predict_step`` (the shared
    task's output) over ``UAVidDataModule``'s predict split. Writes ``output_dir/seqN/Labels/<frame>.png``
    as each frame completes. A frame still missing patches when prediction ends (e.g. under
    ``limit_predict_batches``) raises (``on_incomplete="raise"``) or is skipped with a warning
    (``"warn"``); it is never written half-empty. Under DDP, ``UAVidDataModule`` gives each rank whole
    frames, so each rank writes its own.
    """

    def __init__(self, output_dir: str | Path, on_incomplete: str = "raise") -> None:
        super().__init__(write_interval="batch")
        if on_incomplete not in INCOMPLETE_POLICIES:
            raise ValueError(f"on_incomplete must be one of {INCOMPLETE_POLICIES}, got {on_incomplete!r}")
        self.output_dir = Path(output_dir)
        self.on_incomplete = on_incomplete
        self.written: list[Path] = []
        self._stitcher = FrameStitcher()

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._stitcher = FrameStitcher()
        self.written = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        preds = _as_numpy(prediction["pred"])
        meta = prediction.get("meta") if isinstance(prediction, Mapping) else None
        if meta is None:
            meta = batch.get("meta") if isinstance(batch, Mapping) else None
        if meta is None:
            raise ValueError("UAVidSubmissionWriter needs the batch meta (seq, frame, origin) in the prediction")
        if preds.ndim != 3:
            raise ValueError(f"expected predictions of shape B×H×W, got {preds.shape}")
        for pred, info in zip(preds, unbatch_meta(meta, len(preds)), strict=True):
            try:
                args = {k: info[k] for k in ("seq", "frame", "y", "x", "height", "width")}
                size = (info["tile_height"], info["tile_width"])
                count = info["frame_patches"]
            except KeyError as error:
                raise ValueError(
                    f"prediction meta lacks {error}; predict over UAVidDataModule, whose meta carries each "
                    "patch's sequence, frame, origin and frame size"
                ) from error
            frame = self._stitcher.add(patch=pred, frame_height=size[0], frame_width=size[1],
                                       frame_patches=count, **args)
            if frame is not None:
                self.written += write_uavid_submission(
                    [(args["seq"], args["frame"], frame)], self.output_dir,
                    frame_sizes={(str(args["seq"]), str(args["frame"])): size},
                )

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        pending = self._stitcher.pending()
        if not pending:
            return
        listing = ", ".join(f"{seq}/{frame} ({got} of {expected} patches)" for seq, frame, got, expected in pending)
        message = (
            f"{len(pending)} UAVid frames did not receive all their patches and were not written to "
            f"{self.output_dir}: {listing}; the submission is incomplete"
        )
        self._stitcher = FrameStitcher()
        if self.on_incomplete == "raise":
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=2)
