"""The bench's W&B summary run: the comparison table (intervals included) and each metric's paired differences
as W&B Tables, the plots, and the manifest.

It joins the dataset's group beside the methods' own runs, so a W&B workspace filtered by group (and by the
bench's ``bench-<time>`` tag) shows the methods side by side.
"""

from __future__ import annotations

import math
from pathlib import Path

from rsseg.extras import require
from rsseg.tracking import wandb_mode, wandb_project

PAIR_COLUMNS = ["a", "b", "difference", "low", "high", "flip_rate", "distinguishable"]  # bench.intervals' pairs


def table_columns(rows: list[dict]) -> list[str]:
    """Every scalar field of any row, ``method`` first, in first-seen order."""
    columns = ["method"]
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and _scalar(v)]
    return columns


def _scalar(value) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _cell(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def log_summary_run(run_dir: Path, rows: list[dict], meta: dict, manifest: dict, plots: list[Path],
                    tracking) -> None:
    """One W&B run (job type ``bench-summary``) in ``run_dir/wandb`` holding the comparison."""
    wandb = require("wandb", "wandb", "the bench's W&B summary run")
    config = {"bench": {k: v for k, v in meta.items() if k != "manifest"}, "manifest": manifest}
    run = wandb.init(project=wandb_project(), group=tracking.group, name=f"bench-{meta['dataset']}-summary",
                     job_type="bench-summary", tags=[*tracking.tags, "summary"], dir=str(run_dir),
                     mode=wandb_mode(), config=config)
    try:
        columns = table_columns(rows)
        table = wandb.Table(columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows])
        pairwise = {f"pairwise/{metric}": wandb.Table(columns=PAIR_COLUMNS,
                                                       data=[[pair[c] for c in PAIR_COLUMNS] for pair in pairs])
                    for metric, pairs in meta.get("pairwise", {}).items() if pairs}
        run.log({"comparison": table, **pairwise, **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and not math.isnan(value):
                    run.summary[f"{row['method']}/{key}"] = value
    finally:
        run.finish()
