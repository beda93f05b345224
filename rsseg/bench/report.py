"""The comparison table: results.{json,csv,md} and a bar plot, plus the environment record.

What the table and plot show depends on the task: semantic segmentation reports dataset-level class
metrics, referring segmentation per-expression ones (LAVT's oIoU, mIoU and Pr@X).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rsseg.bench.stages import stage_lines
from rsseg.data.synthetic.files import write_text_atomically
from rsseg.paper_numbers import comparison_lines


@dataclass(frozen=True)
class TaskColumns:
    """What the comparison shows for one task: metric columns (each also a bar chart) and how to read them."""

    headline: tuple[str, ...]  # table metrics, before any per-class IoU
    note: str  # under the title: what the numbers mean
    optional: tuple[str, ...] = ()  # headline metrics shown when some row has them


REFERRING_HEADLINE = ("oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
TASK_COLUMNS = {
    "semantic": TaskColumns(
        headline=("mIoU", "mF1", "OA", "Kappa"),
        note="Metrics in %; per-class columns are IoU. mIoU/mF1 leave out the dataset's excluded classes; "
        "OA counts all classes. mWFm: mean per-class weighted F-measure; boundary_WF: IDGBR's class-agnostic "
        "boundary WF-measure (3 px band). A refiner's row idgbr(<method>) follows the method it refines.",
        optional=("mWFm", "boundary_WF"),
    ),
    "referring": TaskColumns(
        headline=REFERRING_HEADLINE,
        note="Metrics in %, over every test expression at the datamodule's image size: oIoU = total "
        "intersection / total union, mIoU = mean per-expression IoU, Pr@X = share of expressions with "
        "IoU ≥ X. Native-resolution scores, when the run has them, are the native/… columns of results.csv.",
    ),
}


def per_class_columns(rows: list[dict], kind: str) -> list[str]:
    """The ``<kind>/<class>`` keys of the rows (``kind``: IoU, F1, …), in first-seen order."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k.startswith(f"{kind}/") and k not in names]
    return names


def task_columns(task: str) -> TaskColumns:
    if task not in TASK_COLUMNS:
        raise ValueError(f"unknown bench task {task!r}; expected one of {sorted(TASK_COLUMNS)}")
    return TASK_COLUMNS[task]


def headline_metrics(task: str, rows: list[dict]) -> list[str]:
    """The task's headline metrics and the optional ones some row has."""
    columns = task_columns(task)
    return [*columns.headline, *(k for k in columns.optional if any(k in row for row in rows))]


def metric_columns(task: str, rows: list[dict]) -> list[str]:
    """The table's metric columns: the headline metrics, then any per-class IoU."""
    return [*headline_metrics(task, rows), *per_class_columns(rows, "IoU")]


def _label(key: str) -> str:
    return key.split("/", 1)[-1]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{100 * value:.2f}"
    return str(value)


def json_safe(value):
    """``value`` with every NaN and ±inf float replaced by None, in nested dicts and lists: strict JSON has no
    NaN (Python writes a bare ``NaN`` that other parsers reject), and null is what a missing number reads as."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_text(value) -> str:
    """Strict JSON of ``value`` (NaN/±inf as null; anything else non-standard raises rather than slipping out)."""
    return json.dumps(json_safe(value), indent=2, allow_nan=False)


# What each method costs, after its metrics: parameters, GFLOPs of one image at the evaluated size, training
# time, inference images/s and the evaluation's memory (see MEMORY_NOTE and rsseg.profiling.EvalMemory).
COST_COLUMNS = ("params", "gflops", "train_time_s", "inference_img_per_s", "eval_memory_mib")
# Under every table: the memory column is not the process's peak (on a CPU that is mostly Python, torch and the
# data, the same for every method), so the note says what it is instead.
MEMORY_NOTE = ("eval MiB: memory of the evaluation loop. CUDA: peak allocated by torch during evaluation "
               "(torch.cuda.max_memory_allocated after a reset; weights and inputs included). CPU: peak RSS increase "
               "over the process's RSS at evaluation start, after gc + malloc_trim; sampled every 2 ms where the "
               "kernel's high-water mark cannot be reset. The CPU number misses freed memory the allocator kept "
               "and reuses, and includes the batches the loop holds; data-loader workers are not counted.")


def write_report(run_dir: Path, rows: list[dict], meta: dict) -> None:
    """results.{json,csv,md}, each replaced atomically; ``meta["task"]`` picks the columns (see TASK_COLUMNS).

    The bench calls it after every row with ``meta["complete"]`` false (and ``meta["pending"]``, the rows still
    to run), so a run cut short keeps what it finished; the tables say so above the header."""
    run_dir = Path(run_dir)
    task = meta["task"]
    write_text_atomically(run_dir / "results.json", json_text({"meta": meta, "rows": rows}))

    metrics = metric_columns(task, rows)
    columns = ["method", *metrics, *per_class_columns(rows, "F1"), *COST_COLUMNS]
    columns += sorted({k for row in rows for k in row} - set(columns))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(run_dir / "results.csv", table.getvalue())

    head = ["method", *map(_label, metrics), "params (M)", "GFLOPs", "train (s)", "img/s", "eval MiB"]
    lines = [f"# rsseg bench: {meta['dataset']} ({meta['profile']} profile)", ""]
    if meta.get("synthetic"):
        lines += ["> **Synthetic data.** These numbers come from rsseg's synthetic twin of the dataset, "
                  "not from the real data.", ""]
    lines += _incomplete_note(meta)
    split = meta.get("evaluated_split", "test")
    lines += [f"Device: {meta['device']}. Scored on the {split} split. {task_columns(task).note}", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for row in rows:
        params = row.get("params")
        method = row["method"]
        if row.get("failed"):
            notes.append(f"failed: {row['failed']}")
            method += " (failed) " + "†" * len(notes)
        elif row.get("interrupted"):
            notes.append(f"interrupted by {row['interrupted']} before it finished")
            method += " (interrupted) " + "†" * len(notes)
        elif row.get("note"):
            notes.append(row["note"])
            method += " " + "†" * len(notes)
        cells = [method, *(_with_interval(row, k) for k in metrics),
                 f"{params / 1e6:.2f}" if params else "–",
                 *(_fmt_plain(row.get(k)) for k in COST_COLUMNS[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"{'†' * (i + 1)} {note}" for i, note in enumerate(notes)] if notes else []
    lines += ["", MEMORY_NOTE]
    lines += interval_lines(rows, meta)
    lines += comparison_lines(rows)
    if meta.get("stages"):
        lines += ["", *stage_lines(meta["stages"])]
    write_text_atomically(run_dir / "results.md", "\n".join(lines) + "\n")


def _with_interval(row: dict, key: str) -> str:
    """The cell of a metric: its value (the mean over seeds, ± their std, when the bench ran several) and
    ``[low, high]`` when the row has its bootstrap interval."""
    low, high, spread = row.get(f"{key}_lo"), row.get(f"{key}_hi"), row.get(f"{key}_seed_std")
    cell = _fmt(row.get(key, float("nan")))
    if isinstance(spread, float) and math.isfinite(spread):
        cell += f" ± {100 * spread:.2f}"
    if isinstance(low, float) and isinstance(high, float) and math.isfinite(low) and math.isfinite(high):
        cell += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return cell


def interval_lines(rows: list[dict], meta: dict) -> list[str]:
    """What the intervals are, the paired differences (marked when the test set cannot tell them apart)
    and how firmly each method holds its rank (``meta`` from :func:`rsseg.bench.intervals.add_intervals`)."""
    info = meta.get("intervals")
    if not info:
        return []
    lines = ["", f"[low, high]: {100 * info['level']:.0f} % percentile bootstrap interval over the "
             f"{info['n_units']} evaluation {info['unit']} ({info['n_resamples']} resamples, seed {info['seed']}: "
             f"{info['resampled']}). It shows how much another test set like this one could move a number; "
             "it says nothing about another training seed."]
    seeds = sorted({len(row["seed_runs"]) for row in rows if row.get("seed_runs")})
    if seeds:
        lines += ["", f"± : standard deviation (ddof 1) over each method's {' or '.join(map(str, seeds))} training "
                  "seeds, whose mean the value is; its [low, high] is then the interval of that seed mean."]
    for metric, pairs in meta.get("pairwise", {}).items():
        if not pairs:
            continue
        lines += ["", f"Paired differences in {metric} (points; same resamples for both methods; flips = share of "
                  "resamples where the order reverses):", "", "| a − b | Δ | interval | flips | |",
                  "|---|---|---|---|---|"]
        for pair in pairs:
            verdict = "" if pair["distinguishable"] else "not distinguishable on this test set"
            lines.append(f"| {pair['a']} − {pair['b']} | {100 * pair['difference']:+.2f} | "
                         f"[{100 * pair['low']:+.2f}, {100 * pair['high']:+.2f}] | {pair['flip_rate']:.3f} | "
                         f"{verdict} |")
    for metric, ranks in meta.get("rank_stability", {}).items():
        order = sorted(ranks, key=lambda m: ranks[m]["rank"])
        lines += ["", f"Rank stability in {metric} (share of resamples where each method keeps its rank):", "",
                  "| rank | method | holds it | mean rank |", "|---|---|---|---|"]
        lines += [f"| {ranks[m]['rank']} | {m} | {ranks[m]['stability']:.3f} | {ranks[m]['mean_rank']:.2f} |"
                  for m in order]
    return lines


def _incomplete_note(meta: dict) -> list[str]:
    """The lines that flag tables of a bench still running, or cut short (``meta["complete"]`` false)."""
    if meta.get("complete", True):
        return []
    pending = ", ".join(meta.get("pending") or []) or "none"
    if meta.get("interrupted"):
        return [f"> **Incomplete: interrupted by {meta['interrupted']}.** Not run: {pending}.", ""]
    return [f"> **Incomplete: the bench is still running, or was killed.** Not run yet: {pending}.", ""]


def _fmt_plain(value) -> str:
    return "–" if value is None else f"{value:g}"


def majority_class_row(dataset: str, root: Path, split: str = "test") -> dict:
    """The reference row: predict the training split's most frequent class everywhere on ``split``
    (``"test"``, or ``"val"`` where test labels are private)."""
    from rsseg.data.registry import DATAMODULES
    from rsseg.metrics import SegmentationMetrics

    data = DATAMODULES[dataset](str(root), batch_size=8, num_workers=0, pin_memory=False, crop_size=None,
                                augment=False)
    counts = train_pixel_counts(Path(root), data)
    majority = max(range(len(counts)), key=counts.__getitem__)
    data.setup("test" if split == "test" else "validate")
    spec = data.spec
    metrics = SegmentationMetrics(spec.num_classes, ignore_index=spec.ignore_index,
                                  exclude_from_mean=spec.exclude_from_mean, class_names=list(spec.classes))
    for batch in (data.test_dataloader() if split == "test" else data.val_dataloader()):
        metrics.update(torch.full_like(batch["mask"], majority), batch["mask"])
    values = {k: float(v) for k, v in metrics.compute().items()}
    return {"method": "majority class", **values, "predicted_class": majority, "params": 0}


def train_pixel_counts(root: Path, data) -> list[int]:
    """Pixels per class of the training split: a prepared root's manifest, else counted from the masks
    of ``data`` (a datamodule read as released, built without crops or augmentation)."""
    from rsseg.data.core.prepare import read_manifest

    if (root / "manifest.json").is_file():
        return read_manifest(root)["splits"]["train"]["pixels_per_class"]
    data.setup("fit")
    counts = torch.zeros(data.num_classes, dtype=torch.long)
    for sample in data.train_dataset:
        mask = sample["mask"]
        counts += torch.bincount(mask[mask < data.num_classes], minlength=data.num_classes)
    return counts.tolist()


def constant_mask_rows(dataset: str, root: Path, data_args: dict) -> list[dict]:
    """The referring reference rows: every pixel target, and every pixel background, on the test split.

    A model that ignores the image and the sentence scores about this, so a method must beat them to show
    it segments the referred object. ``data_args`` (tokenizer, image_size) are the ones the methods' configs
    use, so the masks are scored at the same resolution and the dataset builds with the same tokenizer.
    """
    from rsseg.data.registry import DATAMODULES
    from rsseg.metrics import ReferringMetrics

    data = DATAMODULES[dataset](str(root), batch_size=8, num_workers=0, pin_memory=False, **data_args)
    data.setup("test")
    all_target, all_background = ReferringMetrics(), ReferringMetrics()
    for batch in data.test_dataloader():
        mask = batch["mask"]
        all_target.update(torch.ones_like(mask), mask)
        all_background.update(torch.zeros_like(mask), mask)
    return [{"method": name, **{k: float(v) for k, v in metrics.compute().items()}, "params": 0}
            for name, metrics in (("all target", all_target), ("all background", all_background))]
