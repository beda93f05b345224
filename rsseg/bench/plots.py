"""The bench's pictures: a bar chart per headline metric, a per-class IoU heat map, a speed–accuracy
scatter and a qualitative panel (image, ground truth, each method's prediction and error map).

Rows are the comparison's (``results.json``): metrics are fractions shown in %, reference rows have no
speed, failed rows have only ``method`` and ``failed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rsseg.bench.report import headline_metrics, per_class_columns

# Ignored pixels: the first of these colours that is not a class colour (ISPRS impervious is white, roads and
# referring backgrounds are black). Error maps: correct pixels dark grey, wrong ones red.
IGNORE_CANDIDATES = ((255, 0, 255), (128, 128, 128), (0, 0, 0), (255, 255, 255))
CORRECT_COLOUR = (60, 60, 60)
WRONG_COLOUR = (220, 30, 30)
REFERENCE_COLOUR = "0.7"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(meta: dict, what: str) -> str:
    synthetic = " (SYNTHETIC DATA)" if meta.get("synthetic") else ""
    return f"{meta['dataset']} — {what} — {meta['profile']} profile{synthetic}"


def _value(row: dict, key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) and value is not None else math.nan


def _is_reference(row: dict) -> bool:
    """Trivial predictors (majority class, all target/background) carry no parameters."""
    return row.get("params") == 0


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def file_safe(name: str) -> str:
    """``Pr@0.5`` → ``Pr0.5``, ``boundary_WF`` stays: names usable as file names everywhere."""
    return re.sub(r"[^A-Za-z0-9._-]", "", name)


def metric_bars(run_dir: Path, rows: list[dict], meta: dict) -> list[Path]:
    """``bar_<metric>.png`` per headline metric: methods in row order, reference rows grey and hatched,
    failed methods marked as such."""
    plt = _pyplot()
    written = []
    for key in headline_metrics(meta["task"], rows):
        values = [100 * _value(row, key) for row in rows]
        if all(math.isnan(v) for v in values):
            continue
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.8))
        for i, (row, value) in enumerate(zip(rows, values, strict=True)):
            if row.get("failed"):
                ax.text(i, 2, "failed", rotation=90, ha="center", va="bottom", color="red", fontsize=8)
                continue
            reference = _is_reference(row)
            ax.bar(i, 0 if math.isnan(value) else value, color=REFERENCE_COLOUR if reference else f"C{i % 10}",
                   hatch="//" if reference else None, edgecolor="0.3")
            if not math.isnan(value):
                ax.text(i, value + 1, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), [row["method"] for row in rows], rotation=25, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"{key} (%)")
        ax.set_title(_title(meta, key), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        written.append(_save(fig, Path(run_dir) / f"bar_{file_safe(key)}.png"))
    return written


def per_class_heatmap(run_dir: Path, rows: list[dict], meta: dict) -> Path | None:
    """``per_class_iou.png``: methods × classes, IoU in % in every cell (blank where a row has none)."""
    columns = per_class_columns(rows, "IoU")
    shown = [row for row in rows if any(k in row for k in columns)]
    if not columns or not shown:
        return None
    plt = _pyplot()
    grid = np.array([[100 * _value(row, k) for k in columns] for row in shown])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(columns) + 2.5), max(2.5, 0.45 * len(shown) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 60 else "white")
    ax.set_xticks(range(len(columns)), [k.split("/", 1)[1] for k in columns], rotation=25, ha="right")
    ax.set_yticks(range(len(shown)), [row["method"] for row in shown])
    fig.colorbar(image, ax=ax, label="IoU (%)")
    ax.set_title(_title(meta, "per-class IoU"), fontsize=9)
    return _save(fig, Path(run_dir) / "per_class_iou.png")


def speed_accuracy(run_dir: Path, rows: list[dict], meta: dict) -> Path | None:
    """``speed_accuracy.png``: inference images/s (log) against the task's first headline metric, marker
    area ∝ parameters; reference rows (no speed) as dashed horizontal lines."""
    key = headline_metrics(meta["task"], rows)[0]
    timed = [r for r in rows if _value(r, "inference_img_per_s") > 0 and not math.isnan(_value(r, key))]
    if not timed:
        return None
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    largest = max(_value(r, "params") for r in timed) or 1.0
    for i, row in enumerate(timed):
        size = 40 + 600 * max(_value(row, "params"), 0) / largest
        ax.scatter(_value(row, "inference_img_per_s"), 100 * _value(row, key), s=size, color=f"C{i % 10}",
                   alpha=0.7, edgecolor="0.2")
        ax.annotate(f"{row['method']} ({_value(row, 'params') / 1e6:.1f}M)",
                    (_value(row, "inference_img_per_s"), 100 * _value(row, key)), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    for row in rows:
        if _is_reference(row) and not math.isnan(_value(row, key)):
            ax.axhline(100 * _value(row, key), color="0.5", linestyle="--", linewidth=1)
            ax.text(0.99, 100 * _value(row, key), row["method"], transform=ax.get_yaxis_transform(), ha="right",
                    va="bottom", fontsize=7, color="0.4")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("inference images/s (log scale)")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(_title(meta, f"speed vs {key}; marker area ∝ parameters"), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, Path(run_dir) / "speed_accuracy.png")


def ignore_colour(palette: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """A colour for ignored pixels that no class of ``palette`` uses."""
    used = {tuple(int(v) for v in colour) for colour in palette}
    return next((c for c in IGNORE_CANDIDATES if c not in used), IGNORE_CANDIDATES[0])


def colourise(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255,
              ignore: Sequence[int] | None = None) -> np.ndarray:
    """H×W labels → H×W×3 uint8 in the dataset's palette; ignored and unknown labels in ``ignore`` (default:
    :func:`ignore_colour`)."""
    ignore = ignore_colour(palette) if ignore is None else ignore
    lut = np.tile(np.asarray(ignore, dtype=np.uint8), (256, 1))
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    out = lut[np.clip(mask, 0, 255).astype(np.uint8)]
    if ignore_index < len(palette):
        out[mask == ignore_index] = ignore
    return out


def error_map(pred: np.ndarray, target: np.ndarray, ignore_index: int = 255,
              ignore: Sequence[int] = IGNORE_CANDIDATES[0]) -> np.ndarray:
    """H×W×3 uint8: correct pixels dark grey, wrong ones red, pixels the target ignores in ``ignore``."""
    out = np.empty((*target.shape, 3), dtype=np.uint8)
    out[...] = CORRECT_COLOUR
    out[pred != target] = WRONG_COLOUR
    out[target == ignore_index] = ignore
    return out


def qualitative_panel(path: Path, samples: list[dict], palette: Sequence[Sequence[int]],
                      class_names: Sequence[str], ignore_index: int = 255, title: str = "") -> Path:
    """One row per sample: image, ground truth, then each method's prediction and its error map.

    ``samples``: ``{"id", "image" (H×W×3 uint8), "target" (H×W), "predictions": {method: H×W}}``.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    methods = list(dict.fromkeys(m for s in samples for m in s["predictions"]))
    ignore = ignore_colour(palette)
    headers = ["image", "ground truth", *(f"{m}{suffix}" for m in methods for suffix in ("", " errors"))]
    cell = 2.0
    fig, axes = plt.subplots(len(samples), len(headers), figsize=(cell * len(headers), cell * len(samples) + 0.9),
                             squeeze=False)
    for r, sample in enumerate(samples):
        target = sample["target"]
        pictures = [sample["image"], colourise(target, palette, ignore_index, ignore)]
        for method in methods:
            pred = sample["predictions"].get(method)
            if pred is None:
                pictures += [None, None]
            else:
                pictures += [colourise(pred, palette, ignore_index, ignore),
                             error_map(pred, target, ignore_index, ignore)]
        for c, picture in enumerate(pictures):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if picture is not None:
                ax.imshow(picture, interpolation="nearest")
            if r == 0:
                ax.set_title(headers[c], fontsize=8)
        axes[r, 0].set_ylabel(str(sample["id"])[:40], fontsize=7)
    legend = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.3", label=n) for c, n in zip(palette, class_names,
                                                                                             strict=False)]
    legend += [Patch(facecolor=np.asarray(ignore) / 255, edgecolor="0.3", label="ignored"),
               Patch(facecolor=np.asarray(WRONG_COLOUR) / 255, label="error"),
               Patch(facecolor=np.asarray(CORRECT_COLOUR) / 255, label="correct")]
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 9), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.9 / (cell * len(samples) + 0.9), 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_plots(run_dir: Path, rows: list[dict], meta: dict, samples: list[dict] | None = None,
                palette: Sequence[Sequence[int]] | None = None, class_names: Sequence[str] | None = None) -> list[Path]:
    """Every picture the rows (and, for the panel, the samples) allow; the written files."""
    written = metric_bars(run_dir, rows, meta)
    written += [p for p in (per_class_heatmap(run_dir, rows, meta), speed_accuracy(run_dir, rows, meta)) if p]
    if samples:
        written.append(qualitative_panel(Path(run_dir) / "qualitative.png", samples, palette, class_names,
                                         title=_title(meta, "test predictions")))
    return written
