"""The papers' reported numbers beside the measured ones (``experiments/paper_numbers.yaml``).

The file maps ``<method>`` (the bench's row names: ``d2ls``, ``danet``, ``idgbr(unet)``, …) → ``<dataset>`` →
``{source, note, metrics}``, with metrics in % as printed (docs/paper_numbers.md says how each was read).
Rows of a bench on real data, and ``rsseg test`` on real data, get ``paper/<metric>`` (the paper's value) and
``diff/<metric>`` (measured − paper) as fractions like every other metric; on a synthetic twin the comparison
would mean nothing and is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from rsseg.paths import default_experiments_dir

PAPER_NUMBERS_FILE = "paper_numbers.yaml"


@dataclass(frozen=True)
class PaperEntry:
    """What one paper reports for one method on one dataset."""

    method: str
    dataset: str
    source: str  # paper and table
    note: str  # protocol facts the paper states (split, TTA, backbone)
    metrics: dict[str, float]  # metric key → value in %
    protocol: str | None = None  # the datamodule protocol the numbers belong to (None: any)


def load_paper_numbers(path: Path | None = None) -> dict[tuple[str, str], PaperEntry]:
    """Every entry of the file, by (method, dataset); a malformed file is a ValueError naming the entry."""
    path = Path(path) if path else default_experiments_dir() / PAPER_NUMBERS_FILE
    return dict(_load(path.resolve()))


@cache
def _load(path: Path) -> tuple[tuple[tuple[str, str], PaperEntry], ...]:
    table = yaml.safe_load(path.read_text()) if path.is_file() else {}
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a mapping method → dataset → entry")
    entries = []
    for method, datasets in table.items():
        if not isinstance(datasets, dict):
            raise ValueError(f"{path}: {method}: expected a mapping dataset → entry")
        for dataset, entry in datasets.items():
            entries.append(((method, dataset), _entry(path, method, dataset, entry)))
    return tuple(entries)


def _entry(path: Path, method: str, dataset: str, entry) -> PaperEntry:
    where = f"{path}: {method}/{dataset}"
    if not isinstance(entry, dict) or not entry.get("source") or not isinstance(entry.get("metrics"), dict):
        raise ValueError(f"{where}: needs a source and a metrics mapping")
    unknown = set(entry) - {"source", "note", "metrics", "protocol"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (source, note, metrics, protocol)")
    metrics = entry["metrics"]
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100]
    if bad:
        raise ValueError(f"{where}: metrics must be numbers in % (0-100): {bad}")
    return PaperEntry(method, dataset, str(entry["source"]), str(entry.get("note", "")),
                      {k: float(v) for k, v in metrics.items()}, entry.get("protocol"))


def find_entry(method: str, dataset: str, protocol: str | None,
               table: dict[tuple[str, str], PaperEntry] | None = None) -> PaperEntry | None:
    """The paper's entry for ``method`` on ``dataset``, unless it belongs to another protocol than ``protocol``."""
    entry = (load_paper_numbers() if table is None else table).get((method, dataset))
    if entry is None or (entry.protocol and protocol and entry.protocol != protocol):
        return None
    return entry


def paper_columns(entry: PaperEntry, measured: dict) -> dict[str, float]:
    """``paper/<m>`` for every metric the paper reports and ``diff/<m>`` (measured − paper) where ``measured``
    (fractions, as the metrics are logged) has a number for it; fractions too."""
    columns: dict[str, float] = {}
    for key, percent in entry.metrics.items():
        columns[f"paper/{key}"] = percent / 100
        value = measured.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            columns[f"diff/{key}"] = value - percent / 100
    return columns


def with_paper_columns(row: dict, dataset: str, table: dict[tuple[str, str], PaperEntry] | None = None) -> dict:
    """``row`` (a bench row, keyed by ``method``) plus its paper columns and ``paper_source``, if the paper has it."""
    entry = find_entry(row["method"], dataset, row.get("protocol"), table)
    if entry is None or row.get("failed") or row.get("interrupted"):
        return row
    return {**row, **paper_columns(entry, row), "paper_source": entry.source}


def comparison_lines(rows: list[dict]) -> list[str]:
    """A markdown table of every measured metric beside its paper value (in points), for the rows that have one."""
    lines = []
    for row in rows:
        for key in (k.removeprefix("paper/") for k in row if k.startswith("paper/")):
            diff = row.get(f"diff/{key}")
            measured = "–" if diff is None else f"{100 * row[key]:.2f}"
            delta = "–" if diff is None else f"{100 * diff:+.2f}"
            lines.append(f"| {row['method']} | {key} | {measured} | {100 * row[f'paper/{key}']:.2f} | {delta} | "
                         f"{row['paper_source']} |")
    if not lines:
        return []
    return ["", "Against the papers (points; Δ = measured − paper; docs/paper_numbers.md says how each was read):", "",
            "| method | metric | measured | paper | Δ | source |", "|---|---|---|---|---|---|", *lines]


def compare_test_metrics(method: str, dataset: str, protocol: str | None,
                         logged: dict[str, float]) -> tuple[dict, list[str]]:
    """For ``rsseg test``: the paper columns of the ``test/…`` metrics in ``logged`` (keyed ``test/paper/<m>``,
    ``test/diff/<m>``) and the lines printed after the run; both empty when the paper has no entry."""
    entry = find_entry(method, dataset, protocol)
    if entry is None:
        return {}, []
    measured = {k.removeprefix("test/"): float(v) for k, v in logged.items() if k.startswith("test/")}
    columns = paper_columns(entry, measured)
    row = {"method": method, **measured, **columns, "paper_source": entry.source}
    return {f"test/{k}": v for k, v in columns.items()}, comparison_lines([row])
