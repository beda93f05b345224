"""The bench plan of a dataset: which methods run, and each profile's preparation and overrides.

Plans live in ``experiments/bench/<dataset>.yaml``; each method's full config is
``experiments/<method>/<dataset>.yaml``. A profile may add a dataset override config (``config``, e.g. the
smoke run's steps and crops) and a per-method one (``method_config: smoke.yaml`` reads
``experiments/<method>/smoke.yaml``, e.g. a small offline backbone), applied in that order after the method's.
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
    method_overrides: dict[str, Path] = field(default_factory=dict)  # method → its profile override

    def config_args(self, method: str) -> list[str]:
        """``--config`` arguments of one method: its config, then the profile's method and dataset overrides."""
        files = [self.configs[method], self.method_overrides.get(method), self.overrides]
        return [arg for f in files if f is not None for arg in ("--config", str(f))]


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
    method_overrides = {}
    if chosen.get("method_config"):
        method_overrides = {m: experiments / m / chosen["method_config"] for m in configs}
        for method, config in method_overrides.items():
            if not config.is_file():
                raise PlanError(f"{path}: profile {profile!r} needs {config} for method {method!r}")
    return BenchPlan(
        dataset=dataset,
        profile=profile,
        configs=configs,
        prepare=dict(chosen.get("prepare", {})),
        overrides=experiments / overrides if overrides else None,
        method_overrides=method_overrides,
    )
