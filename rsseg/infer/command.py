"""``rsseg infer``: a trained model applied to one's own scenes, written next to nothing else.

Each input (a file, a folder's images, or a glob) is read strip by strip (:mod:`rsseg.infer.scene`) and its
labels written as ``<output>/<name>.tif`` (a georeferenced scene: same CRS and transform, a colour table,
nodata 255 where the scene has none) or ``<name>.png`` (a palette PNG), with an optional colour preview and
an optional probability raster. A scene that fails is reported and skipped; the others still run.
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsseg.infer.model import InferenceModel, load_inference_model
from rsseg.infer.rasters import (
    NODATA,
    LabelGeoTiff,
    Scene,
    atomic_path,
    read_preview_labels,
    write_label_png,
    write_preview,
)
from rsseg.infer.scene import WindowGrid, labels_and_probabilities, stream_scene_logits

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")
DEFAULT_WINDOW = 1024


@dataclass(frozen=True)
class InferOptions:
    """How scenes are cut and what is written (the command's flags)."""

    window: int | None = None  # default: the model's inference_window, else DEFAULT_WINDOW
    overlap: int | None = None  # default: the model's inference_overlap, else a quarter window
    batch: int = 4
    bands: tuple[int, ...] | None = None
    value_scale: float | None = None
    preview: bool = False
    probabilities: bool = False


@dataclass
class InferReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named, the images of folders named (sorted, not recursive) and glob matches; and the inputs that
    name nothing, with the reason."""
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += images
            if not images:
                missing.append((text, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            found += matches
            if not matches:
                missing.append((text, "the pattern matches no file"))
        else:
            missing.append((text, "no such file or folder"))
    unique = list(dict.fromkeys(found))
    return unique, missing


def run_infer(ckpt: str | Path, inputs: Sequence[str], output: str | Path, options: InferOptions = InferOptions(),
              device: str = "auto") -> InferReport:
    """Infer every input with the checkpoint's model; outputs under ``output`` (module docstring)."""
    model = load_inference_model(ckpt, device)
    scenes, report_failed = expand_inputs(inputs)
    report = InferReport(failed=report_failed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    window, overlap = _window(model, options)
    logger.info("%s: %s on %s, %d×%d windows with %d px overlap, %d scene(s) → %s", model.path,
                type(model.task).__name__, model.device, window, window, overlap, len(scenes), output)
    claimed: dict[str, Path] = {}
    for number, path in enumerate(scenes, start=1):
        stem = path.stem
        if stem in claimed:
            report.failed.append((str(path), f"its output name {stem} is taken by {claimed[stem]}; rename one"))
            continue
        claimed[stem] = path
        try:
            written = infer_scene(model, path, output, window, overlap, options, f"{number}/{len(scenes)}")
        except Exception as error:  # noqa: BLE001 — one scene's failure is reported; the others still run
            reason = str(error) if str(path) in str(error) else f"{type(error).__name__}: {error}"
            logger.error("%s: failed: %s", path, reason)
            report.failed.append((str(path), reason))
            continue
        report.written += written
    return report


def _window(model: InferenceModel, options: InferOptions) -> tuple[int, int]:
    hparams = model.task.hparams
    window = options.window or hparams.get("inference_window") or DEFAULT_WINDOW
    overlap = options.overlap if options.overlap is not None else (
        hparams.get("inference_overlap") if hparams.get("inference_window") == window else window // 4)
    return window, overlap


def infer_scene(model: InferenceModel, path: Path, output: Path, window: int, overlap: int, options: InferOptions,
                position: str = "1/1") -> list[Path]:
    """Infer one scene; the files written."""
    from tqdm import tqdm

    spec = model.input_spec
    scene = Scene(path, spec, options.bands, options.value_scale)
    started = time.perf_counter()
    try:
        grid = WindowGrid(scene.height, scene.width, window, overlap)
        suffix = ".tif" if scene.georeferenced else ".png"
        target = output / f"{path.stem}{suffix}"
        logger.info("scene %s: %s (%d×%d, %d bands, %s) → %s", position, path, scene.width, scene.height,
                    len(scene.bands), "georeferenced" if scene.georeferenced else "not georeferenced", target.name)
        with tqdm(total=len(grid), desc=f"{path.name}", unit="window", disable=None, leave=False) as bar:
            written = _write_scene(model, scene, grid, target, options, bar.update)
    finally:
        scene.close()
    logger.info("scene %s: %s done in %.1f s", position, path.name, time.perf_counter() - started)
    return written


def _write_scene(model: InferenceModel, scene: Scene, grid: WindowGrid, target: Path, options: InferOptions,
                 progress) -> list[Path]:
    """Stream the scene's labels (and probabilities) into their files; each appears only when complete."""
    classes, palette = model.input_spec["classes"], model.input_spec["palette"]
    written = [target]
    with ExitStack() as stack:  # closed in reverse: each raster is closed before its temporary name is renamed
        partial = stack.enter_context(atomic_path(target))
        labels_out = stack.enter_context(closing(LabelGeoTiff.like(partial, scene, palette, classes))) \
            if scene.georeferenced else None
        whole = None if labels_out else np.empty((scene.height, scene.width), dtype=np.uint8)
        probabilities_out = None
        if options.probabilities:
            probability_path = target.with_name(f"{target.stem}_prob.tif")
            partial_probabilities = stack.enter_context(atomic_path(probability_path))
            probabilities_out = stack.enter_context(closing(
                LabelGeoTiff.like(partial_probabilities, scene, palette, classes, bands=len(classes))))
            written.append(probability_path)

        def emit(row: int, logits) -> None:
            labels, probabilities = labels_and_probabilities(logits, options.probabilities)
            nodata = scene.nodata_rows(row, labels.shape[0])
            if nodata is not None:
                labels[nodata] = NODATA
            if labels_out is not None:
                labels_out.write_rows(row, labels)
            else:
                whole[row : row + labels.shape[0]] = labels
            if probabilities_out is not None:
                probabilities_out.write_rows(row, probabilities)

        stream_scene_logits(model.predict, scene.read_rows, emit, grid,
                            blend=model.task.hparams.get("inference_blend", "gaussian"), batch_size=options.batch,
                            on_windows=progress)
        if whole is not None:
            write_label_png(partial, whole, palette)
    if options.preview:
        preview = target.with_name(f"{target.stem}_preview.png")
        with atomic_path(preview) as partial:
            write_preview(partial, whole if whole is not None else read_preview_labels(target), palette)
        written.append(preview)
    return written
