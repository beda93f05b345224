"""The comparison table: results.{json,csv,md} and a bar plot, plus the environment record.

What the table and plot show depends on the task: semantic segmentation reports dataset-level class
metrics, referring segmentation per-expression ones (LAVT's oIoU, mIoU and Pr@X).
"""

from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch


@dataclass(frozen=True)
class TaskColumns:
    """What the comparison shows for one task: metric columns, plotted bars and how to read them."""

    headline: tuple[str, ...]  # table metrics, before any per-class IoU
    plotted: tuple[str, ...]  # bars per method, before any per-class IoU
    note: str  # under the title: what the numbers mean
    y_label: str
    optional: tuple[str, ...] = ()  # table and plot metrics shown when some row has them


REFERRING_HEADLINE = ("oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
TASK_COLUMNS = {
    "semantic": TaskColumns(
        headline=("mIoU", "mF1", "OA", "Kappa"),
        plotted=("mIoU",),
        note="Metrics in %; per-class columns are IoU. mIoU/mF1 leave out the dataset's excluded classes; "
        "OA counts all classes. mWFm: mean per-class weighted F-measure; boundary_WF: IDGBR's class-agnostic "
        "boundary WF-measure (3 px band). A refiner's row idgbr(<method>) follows the method it refines.",
        y_label="score (%)",
        optional=("mWFm", "boundary_WF"),
    ),
    "referring": TaskColumns(
        headline=REFERRING_HEADLINE,
        plotted=REFERRING_HEADLINE,
        note="Metrics in %, over every test expression at the datamodule's image size: oIoU = total "
        "intersection / total union, mIoU = mean per-expression IoU, Pr@X = share of expressions with "
        "IoU ≥ X. Native-resolution scores, when the run has them, are the native/… columns of results.csv.",
        y_label="score (%)",
    ),
}


def environment_info() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "versions": {p: version(p) for p in ("rsseg", "torch", "lightning", "torchmetrics",
                                               "segmentation-models-pytorch")},
        "python": platform.python_version(),
    }


def _per_class(rows: list[dict], kind: str) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k.startswith(f"{kind}/") and k not in names]
    return names


def task_columns(task: str) -> TaskColumns:
    if task not in TASK_COLUMNS:
        raise ValueError(f"unknown bench task {task!r}; expected one of {sorted(TASK_COLUMNS)}")
    return TASK_COLUMNS[task]


def metric_columns(task: str, rows: list[dict]) -> list[str]:
    """The table's metric columns: the task's headline and the optional metrics the rows have, then any
    per-class IoU."""
    return [*task_columns(task).headline, *_present(task, rows), *_per_class(rows, "IoU")]


def plotted_metrics(task: str, rows: list[dict]) -> list[str]:
    """The plot's bars per method: the task's plotted headline and present optional metrics, then any
    per-class IoU."""
    return [*task_columns(task).plotted, *_present(task, rows), *_per_class(rows, "IoU")]


def _present(task: str, rows: list[dict]) -> list[str]:
    return [k for k in task_columns(task).optional if any(k in row for row in rows)]


def _label(key: str) -> str:
    return key.split("/", 1)[-1]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{100 * value:.2f}"
    return str(value)


def write_report(run_dir: Path, rows: list[dict], meta: dict) -> None:
    """results.{json,csv,md} and comparison.png; ``meta["task"]`` picks the columns (see TASK_COLUMNS)."""
    run_dir = Path(run_dir)
    task = meta["task"]
    (run_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    metrics = metric_columns(task, rows)
    columns = ["method", *metrics, *_per_class(rows, "F1"), "params", "train_time_s", "inference_img_per_s"]
    columns += sorted({k for row in rows for k in row} - set(columns))
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)

    head = ["method", *map(_label, metrics), "params (M)", "train (s)", "img/s"]
    lines = [f"# rsseg bench: {meta['dataset']} ({meta['profile']} profile)", ""]
    if meta.get("synthetic"):
        lines += ["> **Synthetic data.** These numbers come from rsseg's synthetic twin of the dataset, "
                  "not from the real data.", ""]
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
        elif row.get("note"):
            notes.append(row["note"])
            method += " " + "†" * len(notes)
        cells = [method, *(_fmt(row.get(k, float("nan"))) for k in metrics),
                 f"{params / 1e6:.2f}" if params else "–",
                 _fmt_plain(row.get("train_time_s")), _fmt_plain(row.get("inference_img_per_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"{'†' * (i + 1)} {note}" for i, note in enumerate(notes)] if notes else []
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot_comparison(run_dir / "comparison.png", rows, plotted_metrics(task, rows), task_columns(task).y_label, meta)


def _fmt_plain(value) -> str:
    return "–" if value is None else f"{value:g}"


def plot_comparison(path: Path, rows: list[dict], keys: list[str], y_label: str, meta: dict) -> None:
    """Grouped bars: one group per metric in ``keys``, one bar per row (method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(k) for k in keys]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    for i, row in enumerate(rows):
        values = [100 * float(row.get(k, float("nan"))) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=row["method"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(keys))], labels, rotation=20)
    ax.set_ylabel(y_label)
    ax.set_ylim(0, 100)
    title = f"{meta['dataset']} — {meta['profile']} profile"
    ax.set_title(title + (" (SYNTHETIC DATA)" if meta.get("synthetic") else ""))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    from rsseg.data.prepare import read_manifest

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
