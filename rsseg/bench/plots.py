"""The bench's pictures: a bar chart per headline metric, a per-class IoU heat map, a speed–accuracy
scatter and a qualitative panel (image, ground truth, each method's prediction and error map).

Rows are the comparison's (``results.json``): metrics are fractions shown in %, reference rows (majority
class, all target, all background) have ``params: 0`` and no speed, failed rows have only ``method`` and
``failed``. Files (under the run folder):

- ``bar_<metric>.png``: one per headline metric; the name keeps only ``A-Za-z0-9._-`` (``Pr@0.5`` →
  ``bar_Pr0.5.png``, see :func:`file_safe`); a row's ``<metric>_lo``/``<metric>_hi`` (the bootstrap interval)
  as an error bar on its bar;
- ``pairwise_<metric>.png``: one per metric of ``meta["pairwise"]`` (the paired bootstrap comparisons, when
  the bench made them): methods × methods, the difference row − column in points, "≈" on the pairs the
  bootstrap cannot tell apart (see :func:`pairwise_heatmaps`);
- ``per_class_iou.png``: methods × classes (semantic segmentation only);
- ``speed_accuracy.png``: inference images/s against the first headline metric (mIoU, or oIoU); labels of
  close points are stacked apart, with a thin leader line to a moved label's point (see :func:`label_offsets`);
- ``qualitative.png``: the prediction panel, when the bench kept test samples.

Colours: each method keeps one colour (matplotlib's C0…C9, in row order) in every chart; reference rows are
grey and hatched. Masks use the dataset's palette; ignored pixels get :func:`free_colour`, the candidate
farthest from every class colour (magenta for ISPRS, white for UAVid, black for LoveDA, orange for the
black/white binary palettes of roads and referring segmentation). Error maps: correct pixels dark grey,
wrong ones in :func:`wrong_colour` (the candidate farthest from every class, the ignore colour and the grey:
orange for ISPRS, whose clutter is red; sky blue for the binary palettes, whose ignore colour is orange),
pixels the target ignores in the masks' ignore colour.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsseg.bench.report import _label, headline_metrics, per_class_columns

IGNORE_CANDIDATES = ((255, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128), (255, 128, 0))
CORRECT_COLOUR = (60, 60, 60)
WRONG_CANDIDATES = ((220, 30, 30), (255, 128, 0), (128, 0, 255), (255, 0, 128), (0, 160, 255))
REFERENCE_COLOUR = "0.75"
DPI = 120
PANEL_DPI = 100  # the panel is the largest picture: a 2-inch cell is 200 px
PANEL_CELL = 2.0  # inches per image of the panel


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(meta: dict, what: str) -> str:
    synthetic = " (SYNTHETIC DATA)" if meta.get("synthetic") else ""
    return f"{meta['dataset']} ({meta['profile']} profile): {what}{synthetic}"


def _value(row: dict, key: str) -> float:
    """The row's number for ``key``, NaN where it has none (failed rows, a metric only some methods have)."""
    value = row.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _is_reference(row: dict) -> bool:
    """Trivial predictors (majority class, all target/background) carry no parameters."""
    return row.get("params") == 0 and not row.get("failed")


def _colours(rows: list[dict]) -> dict[str, str]:
    """One colour per method for every chart: C0, C1, … over the non-reference rows in order; references grey."""
    colours, n = {}, 0
    for row in rows:
        if _is_reference(row):
            colours[row["method"]] = REFERENCE_COLOUR
        else:
            colours[row["method"]] = f"C{n % 10}"
            n += 1
    return colours


def _save(fig, path: Path, dpi: int = DPI, layout: bool = True) -> Path:
    """``layout=False`` for a figure laid out already (whose labels were placed on that layout): saved with a
    tight bounding box instead, which crops or widens the canvas without moving anything."""
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=min(dpi, DPI), bbox_inches=None if layout else "tight")
    _pyplot().close(fig)
    return Path(path)


def file_safe(name: str) -> str:
    """``Pr@0.5`` → ``Pr0.5``, ``boundary_WF`` stays: names usable as file names everywhere."""
    return re.sub(r"[^A-Za-z0-9._-]", "", name)


# --------------------------------------------------------------------------------------------------
# Comparison charts


def metric_bars(run_dir: Path, rows: list[dict], meta: dict) -> list[Path]:
    """``bar_<metric>.png`` per headline metric that some row has: methods in row order, the value in % on
    each bar, reference rows grey and hatched, failed methods (and ones without the metric) a labelled gap.

    A row with finite ``<metric>_lo`` ≤ ``<metric>_hi`` (the bench's bootstrap interval, a fraction like the
    metric) gets a black error bar from lo to hi in % (``yerr = [value − lo, hi − value]``), its value label
    above the bar's top; rows without both keys get none, reference rows never (``<metric>_seed_std`` is not
    drawn). A note under the title says what the bars are: "error bars: 95 % bootstrap interval over <n>
    <units>" from ``meta["intervals"]`` (``n_units``, ``unit``, ``level``), shortened when it is absent."""
    written = []
    for key in headline_metrics(meta["task"], rows):
        values = [100 * _value(row, key) for row in rows]
        if not all(math.isnan(v) for v in values):
            written.append(_metric_bar(Path(run_dir) / f"bar_{file_safe(key)}.png", rows, values, key, meta))
    return written


def bar_interval(row: dict, key: str) -> tuple[float, float] | None:
    """The row's interval of ``key`` in % (lo, hi), None where it has none: a reference or failed row, a key
    missing, a bound not finite (BCa gives NaN on a degenerate resample distribution), or lo > hi."""
    low, high = 100 * _value(row, f"{key}_lo"), 100 * _value(row, f"{key}_hi")
    if _is_reference(row) or row.get("failed") or not (math.isfinite(low) and math.isfinite(high)) or low > high:
        return None
    return low, high


def _level(meta: dict) -> str:
    """``meta["intervals"]["level"]`` (0.95 or 95) as "95 %"; 95 % where the bench gives none."""
    level = _value(meta.get("intervals") or {}, "level")
    level = 0.95 if math.isnan(level) else level
    return f"{100 * level if level <= 1 else level:g} %"


def interval_note(meta: dict) -> str:
    """What the bar charts' error bars are: "error bars: 95 % bootstrap interval over 14 tiles"."""
    intervals = meta.get("intervals") or {}
    over = f" over {intervals['n_units']} {intervals.get('unit', 'units')}" if "n_units" in intervals else ""
    return f"error bars: {_level(meta)} bootstrap interval{over}"


def _metric_bar(path: Path, rows: list[dict], values: list[float], key: str, meta: dict) -> Path:
    from matplotlib.patches import Patch

    plt = _pyplot()
    colours = _colours(rows)
    intervals = [bar_interval(row, key) if not math.isnan(v) else None for row, v in zip(rows, values, strict=True)]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(rows) + 2), 4.0))
    lowest = min([v for v in values if not math.isnan(v)] + [lo for lo, _ in filter(None, intervals)])
    bottom = min(0.0, lowest - 10)  # Kappa can be negative
    for i, (row, value, interval) in enumerate(zip(rows, values, intervals, strict=True)):
        if math.isnan(value):
            gap = "failed" if row.get("failed") else "n/a"
            ax.text(i, 2, gap, rotation=90, ha="center", va="bottom", fontsize=8,
                    color="tab:red" if row.get("failed") else "0.4")
            continue
        reference = _is_reference(row)
        ax.bar(i, value, width=0.7, color=colours[row["method"]], hatch="//" if reference else None,
               edgecolor="0.35", linewidth=0.6)
        top = value if interval is None or value < 0 else max(value, interval[1])
        ax.text(i, top + (1 if value >= 0 else -1), f"{value:.1f}", ha="center",
                va="bottom" if value >= 0 else "top", fontsize=8)
    drawn = [(i, value, *interval) for i, (value, interval) in enumerate(zip(values, intervals, strict=True))
             if interval is not None]
    if drawn:
        # anchored at the value, or at the nearest bound where the interval leaves it out (a bootstrap interval
        # need not contain the full-data value): the bar always spans exactly lo..hi, and yerr stays ≥ 0
        x, value, low, high = np.array(drawn).T
        anchor = np.clip(value, low, high)
        ax.errorbar(x, anchor, yerr=[anchor - low, high - anchor], fmt="none", ecolor="black", elinewidth=1.0,
                    capsize=3, zorder=3)
    ax.set_xticks(range(len(rows)), [row["method"] for row in rows], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(bottom, 108)
    ax.set_ylabel(f"{key} (%)")
    title = _title(meta, key)
    ax.set_title(f"{title}\n{interval_note(meta)}" if drawn else title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if any(_is_reference(row) for row in rows):
        ax.legend(handles=[Patch(facecolor=REFERENCE_COLOUR, hatch="//", edgecolor="0.35", label="reference")],
                  loc="upper left", fontsize=7, frameon=False)
    return _save(fig, path)


def per_class_heatmap(run_dir: Path, rows: list[dict], meta: dict) -> Path | None:
    """``per_class_iou.png``: methods × classes (first-seen order), IoU in % in every cell, blank where a row
    has none; None for referring segmentation or when no row has per-class IoU."""
    columns = per_class_columns(rows, "IoU")
    shown = [row for row in rows if any(k in row for k in columns)]
    if meta["task"] != "semantic" or not shown:
        return None
    plt = _pyplot()
    grid = np.array([[100 * _value(row, k) for k in columns] for row in shown])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 * len(columns) + 3), max(2.5, 0.42 * len(shown) + 1.6)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 60 else "white")
    ax.set_xticks(range(len(columns)), [_label(k) for k in columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(shown)), [row["method"] for row in shown], fontsize=8)
    for tick, row in zip(ax.get_yticklabels(), shown, strict=True):
        if _is_reference(row):
            tick.set_fontstyle("italic")
            tick.set_color("0.4")
    fig.colorbar(image, ax=ax, label="IoU (%)", fraction=0.05, pad=0.02)
    ax.set_title(_title(meta, "per-class IoU (%)"), fontsize=9)
    return _save(fig, Path(run_dir) / "per_class_iou.png")


def speed_accuracy(run_dir: Path, rows: list[dict], meta: dict) -> Path | None:
    """``speed_accuracy.png`` (see :func:`speed_accuracy_figure`); None when no row has both numbers."""
    fig = speed_accuracy_figure(rows, meta)
    return None if fig is None else _save(fig, Path(run_dir) / "speed_accuracy.png", layout=False)


def speed_accuracy_figure(rows: list[dict], meta: dict):
    """Inference images/s (log) against the task's first headline metric, marker area ∝ parameters (each point
    labelled with its method and M params); reference rows, which have no speed, as dashed horizontal lines.
    Laid out, its labels placed apart on that layout (so it is saved without another layout pass); None when no
    row has both numbers."""
    key = headline_metrics(meta["task"], rows)[0]
    timed = [r for r in rows if _value(r, "inference_img_per_s") > 0 and not math.isnan(_value(r, key))]
    if not timed:
        return None
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    colours = _colours(rows)
    params = [max(0.0, _value(r, "params")) if not math.isnan(_value(r, "params")) else 0.0 for r in timed]
    largest = max(params) or 1.0
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    labels = []
    for row, n in zip(timed, params, strict=True):
        x, y = _value(row, "inference_img_per_s"), 100 * _value(row, key)
        size = 30 + 900 * n / largest
        ax.scatter(x, y, s=size, color=colours[row["method"]], alpha=0.7, edgecolor="0.2")
        text = f"{row['method']} ({n / 1e6:.1f}M)" if n else row["method"]
        labels.append(_PointLabel(text, ax.transData, (x, y), "left", math.sqrt(size) / 2))
    references = []
    for row in rows:
        if _is_reference(row) and not math.isnan(_value(row, key)):
            y = 100 * _value(row, key)
            ax.axhline(y, color="0.5", linestyle="--", linewidth=1)
            references.append(_PointLabel(row["method"], ax.get_yaxis_transform(), (0.99, y), "right", 0.0))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("inference images/s (log scale)")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(_title(meta, f"speed vs {key}; marker area ∝ parameters (M)"), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.canvas.draw()  # the final limits, and a renderer to measure the labels with
    _draw_labels(ax, references, labels)
    return fig


LABEL_GAP = 4.0  # points between a marker's edge and its label
LABEL_PAD = 1.5  # points kept free between two labels


@dataclass(frozen=True)
class _PointLabel:
    """A label to draw beside ``xy`` (in ``transform``'s coordinates): to its right (``side="left"``: the text's
    left edge at the point) or ending at it (``"right"``: the reference lines' labels at the axes' right edge)."""

    text: str
    transform: object
    xy: tuple[float, float]
    side: str
    radius: float  # of the point's marker, in points: where a leader line starts


def label_offsets(boxes: list[tuple[float, float, float, float, float]], pad: float = LABEL_PAD) -> list[float]:
    """Vertical offsets (points) that keep label boxes at least ``pad`` apart, in the boxes' order. A box is
    (x0, x1, y, height, preferred): its horizontal extent and anchor height in points, its height and the offset
    of its centre it would like. Boxes whose horizontal extents chain together form a column, stacked in the
    order of their preferred heights and centred where they want to be; columns never move each other. The
    same boxes always give the same offsets."""
    offsets = [0.0] * len(boxes)
    for column in _columns(boxes, pad):
        wanted = [boxes[i][2] + boxes[i][4] - boxes[i][3] / 2 for i in column]
        for i, bottom in zip(column, _stack(wanted, [boxes[i][3] for i in column], pad), strict=True):
            offsets[i] = bottom + boxes[i][3] / 2 - boxes[i][2]
    return offsets


def _columns(boxes: list[tuple[float, ...]], pad: float) -> list[list[int]]:
    """Indices of the boxes grouped by overlapping horizontal extents (a sweep over their left edges)."""
    columns: list[list[int]] = []
    right = -math.inf
    for i in sorted(range(len(boxes)), key=lambda i: (boxes[i][0], i)):
        if columns and boxes[i][0] < right + pad:
            columns[-1].append(i)
            right = max(right, boxes[i][1])
        else:
            columns.append([i])
            right = boxes[i][1]
    return columns


def _stack(wanted: list[float], heights: list[float], pad: float) -> list[float]:
    """Bottoms for boxes that want the bottoms ``wanted``: in the order of their wanted centres, boxes that would
    overlap merge into a block stacked ``pad`` apart, placed at the mean of what its members want (the classic
    one-dimensional label placement: no overlap, order kept, each block as close as it can be)."""
    order = sorted(range(len(wanted)), key=lambda i: (wanted[i] + heights[i] / 2, i))
    blocks: list[list[int]] = []
    bottoms: list[float] = []

    def below(block: list[int]) -> list[float]:  # each member's bottom above the block's bottom
        return [sum(heights[j] + pad for j in block[:k]) for k in range(len(block))]

    def height(block: list[int]) -> float:
        return sum(heights[j] for j in block) + pad * (len(block) - 1)

    for i in order:
        blocks.append([i])
        bottoms.append(wanted[i])
        while len(blocks) > 1 and bottoms[-2] + height(blocks[-2]) + pad > bottoms[-1]:
            block = blocks.pop(-2) + blocks.pop()
            bottoms[-2:] = []
            blocks.append(block)
            bottoms.append(sum(wanted[j] - up for j, up in zip(block, below(block), strict=True)) / len(block))
    placed = [0.0] * len(wanted)
    for block, bottom in zip(blocks, bottoms, strict=True):
        for j, up in zip(block, below(block), strict=True):
            placed[j] = bottom + up
    return placed


def _draw_labels(ax, references: list[_PointLabel], labels: list[_PointLabel]) -> None:
    """Draws the labels apart (:func:`label_offsets`; references first, which then hold their lines, then the
    points' labels from the lowest point up), each moved label with a thin leader line to its point."""
    from matplotlib.transforms import offset_copy

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_points = 72 / fig.dpi
    order = references + sorted(labels, key=lambda lab: (lab.transform.transform(lab.xy)[1], lab.text))
    texts = [ax.text(*lab.xy, lab.text, transform=lab.transform, ha=lab.side, va="center",
                     **({"fontsize": 8} if lab.side == "left" else {"fontsize": 7, "color": "0.35"})) for lab in order]
    boxes, starts = [], []
    for lab, text in zip(order, texts, strict=True):
        extent = text.get_window_extent(renderer)
        width, height = extent.width * to_points, extent.height * to_points
        x, y = lab.transform.transform(lab.xy) * to_points
        start = lab.radius + LABEL_GAP if lab.side == "left" else -width  # the box's left edge, from the point
        boxes.append((x + start, x + start + width, y, height, height / 2 + (5 if lab.side == "left" else 1)))
        starts.append(start)
    for lab, text, box, start, dy in zip(order, texts, boxes, starts, label_offsets(boxes), strict=True):
        shift = start if lab.side == "left" else 0.0  # a right-aligned text is anchored at its right edge
        text.set_transform(offset_copy(lab.transform, fig, x=shift, y=dy, units="points"))
        if abs(dy - box[4]) > box[3] / 2:
            _leader(ax, lab, (min(max(0.0, start), start + box[1] - box[0]), dy - math.copysign(box[3] / 2, dy)))


def _leader(ax, label: _PointLabel, end: tuple[float, float]) -> None:
    """A thin line from the marker's edge to ``end`` (points from the label's point): which point a label that
    had to move belongs to."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import Affine2D, ScaledTranslation

    length = math.hypot(*end)
    if length <= label.radius:
        return
    start = (end[0] * label.radius / length, end[1] * label.radius / length)
    points = Affine2D().scale(1 / 72) + ax.figure.dpi_scale_trans + ScaledTranslation(*label.xy, label.transform)
    ax.add_artist(Line2D([start[0], end[0]], [start[1], end[1]], transform=points, color="0.45", linewidth=0.6,
                       clip_on=False))


def pairwise_grid(rows: list[dict], comparisons: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Methods (row order, reference and failed rows left out), the difference row − column in points
    (NaN on the diagonal and where no comparison is given) and whether each pair is distinguishable.

    A comparison ``{"a", "b", "difference" (or ``estimate``, as ``PairedComparison.as_dict`` writes it),
    "low", "high", "distinguishable"}`` fills (a, b); its mirror (b, a), the negated difference, unless the
    comparisons give (b, a) themselves. Without ``distinguishable``: the interval [low, high] excludes 0.
    Comparisons with a method not among the rows' (a reference, a failed one) are left out."""
    methods = [row["method"] for row in rows if not _is_reference(row) and not row.get("failed")]
    index = {m: i for i, m in enumerate(methods)}
    n = len(methods)
    grid, apart = np.full((n, n), np.nan), np.zeros((n, n), dtype=bool)
    given: set[tuple[int, int]] = set()
    for c in comparisons:
        a, b = index.get(c.get("a")), index.get(c.get("b"))
        if a is None or b is None or a == b:
            continue
        difference = _value(c, "difference") if "difference" in c else _value(c, "estimate")
        low, high = _value(c, "low"), _value(c, "high")
        distinguishable = bool(c["distinguishable"]) if "distinguishable" in c else bool(low > 0 or high < 0)
        grid[a, b], apart[a, b] = 100 * difference, distinguishable
        given.add((a, b))
        if (b, a) not in given:  # the mirror, until the comparisons give it
            grid[b, a], apart[b, a] = -100 * difference, distinguishable
    return methods, grid, apart


def pairwise_heatmaps(run_dir: Path, rows: list[dict], meta: dict) -> list[Path]:
    """``pairwise_<metric>.png`` per metric of ``meta["pairwise"]`` (metric → paired bootstrap comparisons, see
    :func:`pairwise_grid`): methods × methods in row order, each cell the difference metric(row) −
    metric(column) in points ("+1.3"), coloured on a diverging map centred at 0 (limits ±the largest
    |difference|), the diagonal empty. Pairs that are NOT distinguishable (their interval includes 0) carry the
    text "≈" after the number (no hatch). Nothing without ``meta["pairwise"]``; a metric with fewer than two
    methods or no comparison among them is skipped."""
    written = []
    for metric, comparisons in (meta.get("pairwise") or {}).items():
        methods, grid, apart = pairwise_grid(rows, list(comparisons or []))
        if len(methods) >= 2 and not np.isnan(grid).all():
            path = Path(run_dir) / f"pairwise_{file_safe(metric)}.png"
            written.append(_pairwise_heatmap(path, methods, grid, apart, metric, meta))
    return written


def _pairwise_heatmap(path: Path, methods: list[str], grid: np.ndarray, apart: np.ndarray, metric: str,
                      meta: dict) -> Path:
    plt = _pyplot()
    n = len(methods)
    limit = float(np.nanmax(np.abs(grid))) or 1.0  # all ties: any symmetric range
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 3), max(3.5, 0.6 * n + 2)))  # room for the title
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            ax.text(j, i, f"{value:+.1f}" + ("" if apart[i, j] else " ≈"), ha="center", va="center", fontsize=8,
                    color="white" if abs(value) > 0.6 * limit else "black")
    ax.set_xticks(range(n), methods, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), methods, fontsize=8)
    ax.set_xlabel("column method", fontsize=8)
    ax.set_ylabel("row method", fontsize=8)
    fig.colorbar(image, ax=ax, label=f"{metric}: row − column (points)", fraction=0.05, pad=0.02)
    note = f"≈: not distinguishable ({_level(meta)} paired bootstrap interval includes 0)"
    ax.set_title(f"{_title(meta, f'{metric}: pairwise difference, row − column')}\n{note}", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Masks and the qualitative panel


def _farthest(candidates: Sequence[tuple[int, int, int]], taken: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The candidate farthest (in RGB) from its nearest ``taken`` colour (the first one on ties)."""
    colours = np.asarray(taken, dtype=float).reshape(-1, 3)

    def distance(candidate):
        return np.linalg.norm(colours - np.asarray(candidate, dtype=float), axis=1).min() if len(colours) else 0.0

    return max(candidates, key=distance)


def free_colour(palette: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """A colour for ignored pixels that reads apart from every class of ``palette``."""
    return _farthest(IGNORE_CANDIDATES, palette)


def wrong_colour(palette: Sequence[Sequence[int]], ignore: Sequence[int]) -> tuple[int, int, int]:
    """The error maps' colour for wrong pixels: apart from every class, the ignore colour and the "correct"
    grey, so that an error never reads as a class."""
    return _farthest(WRONG_CANDIDATES, [*palette, ignore, CORRECT_COLOUR])


def colourise(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255,
              ignore_colour: Sequence[int] | None = None) -> np.ndarray:
    """H×W labels → H×W×3 uint8 in the dataset's palette (also for W&B images); ``ignore_index`` and labels
    outside the palette in ``ignore_colour``, by default :func:`free_colour` so ignore never looks like a class
    (white would be ISPRS's impervious surfaces)."""
    ignore = np.asarray(free_colour(palette) if ignore_colour is None else ignore_colour, dtype=np.uint8)
    mask = np.asarray(mask)
    lut = np.vstack([np.asarray(palette, dtype=np.uint8).reshape(-1, 3), ignore])  # last entry: ignore
    known = (mask >= 0) & (mask < len(palette)) & (mask != ignore_index)
    return lut[np.where(known, mask, len(palette))]


def error_map(pred: np.ndarray, target: np.ndarray, ignore_index: int = 255,
              ignore_colour: Sequence[int] = (255, 255, 255),
              wrong: Sequence[int] = WRONG_CANDIDATES[0]) -> np.ndarray:
    """H×W×3 uint8: where a prediction is scored right (dark grey) or wrong (``wrong``); pixels the target
    ignores are not scored, so they get ``ignore_colour`` whatever the prediction."""
    out = np.empty((*np.shape(target), 3), dtype=np.uint8)
    out[...] = CORRECT_COLOUR
    out[np.asarray(pred) != np.asarray(target)] = wrong
    out[np.asarray(target) == ignore_index] = ignore_colour
    return out


def default_palette(samples: list[dict], ignore_index: int = 255) -> list[tuple[int, int, int]]:
    """tab20 colours for the labels the samples use, where the caller has no dataset palette."""
    from matplotlib import colormaps

    labels = [int(np.max(m, initial=0)) for s in samples for m in (s["target"], *s["predictions"].values())
              if np.size(m)]
    n = 1 + max([v for v in labels if v != ignore_index], default=1)
    return [tuple(int(255 * c) for c in colormaps["tab20"](i % 20)[:3]) for i in range(n)]


def qualitative_panel(path: Path, samples: list[dict], palette: Sequence[Sequence[int]],
                      class_names: Sequence[str], ignore_index: int = 255, title: str = "") -> Path:
    """One row per test tile: image, ground truth, then each method's prediction and its error map, so the
    methods' mistakes can be compared on the same pixels; a legend of the classes and error colours below.

    ``samples``: ``{"id", "image" (H×W×3 uint8), "target" (H×W), "predictions": {method: H×W}}``; a method
    without a prediction for a sample leaves its two cells blank.
    """
    plt = _pyplot()
    methods = list(dict.fromkeys(m for s in samples for m in s["predictions"]))
    ignore = free_colour(palette)
    headers = ["image", "ground truth", *(f"{m}{suffix}" for m in methods for suffix in ("", "\nerrors"))]
    width = PANEL_CELL * len(headers) + 0.6
    legend = _panel_legend(palette, class_names, ignore)
    ncol = max(1, min(len(legend), int(width / 1.5)))
    legend_height = 0.25 * math.ceil(len(legend) / ncol) + 0.2
    height = PANEL_CELL * len(samples) + 0.5 + legend_height + (0.3 if title else 0)
    fig, axes = plt.subplots(len(samples), len(headers), figsize=(width, height), squeeze=False)
    for r, sample in enumerate(samples):
        for c, picture in enumerate(_panel_row(sample, methods, palette, ignore_index, ignore)):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if picture is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, color="0.5")
            else:
                ax.imshow(picture, interpolation="nearest")
            if r == 0:
                ax.set_title(headers[c], fontsize=8)
        axes[r, 0].set_ylabel(textwrap.fill(str(sample["id"]), 24, max_lines=5, placeholder=" …"), fontsize=7)
    fig.legend(handles=legend, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1 - (0.3 if title else 0.05) / height))
    fig.savefig(path, dpi=PANEL_DPI)
    plt.close(fig)
    return Path(path)


def _panel_row(sample: dict, methods: list[str], palette, ignore_index: int, ignore) -> list:
    target = np.asarray(sample["target"])
    wrong = wrong_colour(palette, ignore)
    pictures = [sample["image"], colourise(target, palette, ignore_index, ignore)]
    for method in methods:
        pred = sample["predictions"].get(method)
        pictures += ([None, None] if pred is None else [colourise(pred, palette, ignore_index, ignore),
                                                        error_map(pred, target, ignore_index, ignore, wrong)])
    return pictures


def _panel_legend(palette, class_names: Sequence[str], ignore) -> list:
    from matplotlib.patches import Patch

    def patch(colour, label):
        return Patch(facecolor=np.asarray(colour) / 255, edgecolor="0.3", label=label)

    return [*(patch(c, n) for c, n in zip(palette, class_names, strict=False)), patch(ignore, "ignored"),
            patch(CORRECT_COLOUR, "correct (error map)"), patch(wrong_colour(palette, ignore), "wrong (error map)")]


def write_plots(run_dir: Path, rows: list[dict], meta: dict, samples: list[dict] | None = None,
                palette: Sequence[Sequence[int]] | None = None, class_names: Sequence[str] | None = None) -> list[Path]:
    """Every picture the rows (and, for ``qualitative.png``, the samples; for ``pairwise_<metric>.png``,
    ``meta["pairwise"]``) allow; the files written."""
    written = metric_bars(run_dir, rows, meta)
    written += [p for p in (per_class_heatmap(run_dir, rows, meta), speed_accuracy(run_dir, rows, meta)) if p]
    written += pairwise_heatmaps(run_dir, rows, meta)
    if samples:
        palette = list(palette) if palette else default_palette(samples)
        names = list(class_names) if class_names else [str(i) for i in range(len(palette))]
        written.append(qualitative_panel(Path(run_dir) / "qualitative.png", samples, palette, names,
                                         title=_title(meta, f"{meta.get('evaluated_split', 'test')} predictions")))
    return written
