"""Where rsseg finds its own files outside the package."""

from __future__ import annotations

from pathlib import Path


def default_experiments_dir() -> Path:
    """``./experiments`` when run from a checkout, else the one beside the installed package."""
    here = Path("experiments")
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "experiments"
