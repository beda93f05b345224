"""The comparison table: results.{json,csv,md} and a per-class plot, plus the environment record."""

from __future__ import annotations

import csv
import json
import math
import platform
from importlib.metadata import version
from pathlib import Path

import torch

HEADLINE = ("mIoU", "mF1", "OA", "Kappa")


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


def _fmt(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{100 * value:.2f}"
    return str(value)


def write_report(run_dir: Path, rows: list[dict], meta: dict) -> None:
    run_dir = Path(run_dir)
    (run_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    columns = ["method", *HEADLINE, *_per_class(rows, "IoU"), *_per_class(rows, "F1"),
               "params", "train_time_s", "inference_img_per_s"]
    columns += sorted({k for row in rows for k in row} - set(columns))
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)

    iou = _per_class(rows, "IoU")
    head = ["method", *HEADLINE, *(k.split("/", 1)[1] for k in iou), "params (M)", "train (s)", "img/s"]
    lines = [f"# rsseg bench: {meta['dataset']} ({meta['profile']} profile)", ""]
    if meta.get("synthetic"):
        lines += ["> **Synthetic data.** These numbers come from rsseg's synthetic twin of the dataset, "
                  "not from the real data.", ""]
    lines += [f"Device: {meta['device']}. Metrics in %; per-class columns are IoU. "
              "mIoU/mF1 leave out the dataset's excluded classes; OA counts all classes.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        params = row.get("params")
        cells = [row["method"], *(_fmt(row.get(k, float("nan"))) for k in (*HEADLINE, *iou)),
                 f"{params / 1e6:.2f}" if params else "–",
                 _fmt_plain(row.get("train_time_s")), _fmt_plain(row.get("inference_img_per_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot_comparison(run_dir / "comparison.png", rows, iou, meta)


def _fmt_plain(value) -> str:
    return "–" if value is None else f"{value:g}"


def plot_comparison(path: Path, rows: list[dict], iou_keys: list[str], meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["mIoU", *(k.split("/", 1)[1] for k in iou_keys)]
    keys = ["mIoU", *iou_keys]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    for i, row in enumerate(rows):
        values = [100 * float(row.get(k, float("nan"))) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=row["method"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(keys))], labels, rotation=20)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    title = f"{meta['dataset']} — {meta['profile']} profile"
    ax.set_title(title + (" (SYNTHETIC DATA)" if meta.get("synthetic") else ""))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def majority_class_row(dataset: str, root: Path) -> dict:
    """The reference row: predict the training split's most frequent class everywhere on test."""
    from rsseg.data.prepare import read_manifest
    from rsseg.data.registry import DATAMODULES
    from rsseg.metrics import SegmentationMetrics

    counts = read_manifest(root)["splits"]["train"]["pixels_per_class"]
    majority = max(range(len(counts)), key=counts.__getitem__)
    data = DATAMODULES[dataset](str(root), batch_size=8, num_workers=0, pin_memory=False)
    data.setup("test")
    spec = data.spec
    metrics = SegmentationMetrics(spec.num_classes, ignore_index=spec.ignore_index,
                                  exclude_from_mean=spec.exclude_from_mean, class_names=list(spec.classes))
    for batch in data.test_dataloader():
        metrics.update(torch.full_like(batch["mask"], majority), batch["mask"])
    values = {k: float(v) for k, v in metrics.compute().items()}
    return {"method": "majority class", **values, "predicted_class": majority, "params": 0}
