"""The bench plan of a dataset: which methods run, and each profile's preparation and overrides.

Plans live in ``experiments/bench/<dataset>.yaml``; each method's full config is
``experiments/<method>/<dataset>.yaml`` and a profile may add one override config (e.g. the smoke run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


class PlanError(ValueError):
    """A missing or inconsistent bench plan (names the plan file)."""


def default_experiments_dir() -> Path:
    """``./experiments`` when run from a checkout, else the one beside the installed package."""
    here = Path("experiments")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "experiments"


@dataclass(frozen=True)
class BenchPlan:
    dataset: str
    profile: str
    configs: dict[str, Path]  # method → its config file, in run order
    prepare: dict = field(default_factory=dict)
    overrides: Path | None = None


def load_plan(dataset: str, profile: str, methods: list[str] | None = None,
              experiments: Path | None = None) -> BenchPlan:
    experiments = experiments or default_experiments_dir()
    path = experiments / "bench" / f"{dataset}.yaml"
    if not path.is_file():
        raise PlanError(f"no bench plan for {dataset!r}: {path} is missing")
    plan = yaml.safe_load(path.read_text())
    profiles = plan.get("profiles", {})
    if profile not in profiles:
        raise PlanError(f"{path}: unknown profile {profile!r}; choose one of {sorted(profiles)}")
    known = list(plan["methods"])
    unknown = sorted(set(methods or ()) - set(known))
    if unknown:
        raise PlanError(f"{path}: methods {unknown} are not in this plan; choose from {known}")
    configs = {m: experiments / m / f"{dataset}.yaml" for m in (methods or known)}
    for method, config in configs.items():
        if not config.is_file():
            raise PlanError(f"{path}: method {method!r} has no config {config}")
    chosen = profiles[profile] or {}
    overrides = chosen.get("config")
    return BenchPlan(
        dataset=dataset,
        profile=profile,
        configs=configs,
        prepare=dict(chosen.get("prepare", {})),
        overrides=experiments / overrides if overrides else None,
    )
