"""The bench plan of a dataset: which methods run, and each profile's preparation and overrides.

Plans live in ``experiments/bench/<dataset>.yaml``; each method's full config is
``experiments/<method>/<dataset>.yaml``. A profile may add a dataset override config (``config``, e.g. the
smoke run's steps and crops) and a per-method one (``method_config: smoke.yaml`` reads
``experiments/<method>/smoke.yaml``, e.g. a small offline backbone), applied in that order after the method's.
``config_name`` names the methods' config files when it differs from the dataset key (``chn6_cug``).

``evaluate: validate`` scores the val split where test labels are private (LoveDA); default ``test``.

``refiner: idgbr`` adds a refined row after each method (or each of ``refine: [...]``, which a profile may
narrow, e.g. the smoke profile refines one coarse baseline): IDGBR trained and
tested on that method's coarse
maps (``experiments/idgbr/<config_name>.yaml`` + the profile's ``idgbr/<method_config>``; the dataset
override is not applied, since the refiner wraps the datamodule). Its label embedding network comes first
(``idgbr/label_embedding_<config_name>.yaml`` + ``idgbr/label_embedding_<method_config>``), and a profile's
``refiner_vae`` (a config of ``LatentAutoencoderTask``) fits the VAE first where no Stable Diffusion
weights are at hand (the offline smoke profile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rsseg.paths import default_experiments_dir

REFINERS = ("idgbr",)


class PlanError(ValueError):
    """A missing or inconsistent bench plan (names the plan file)."""


@dataclass(frozen=True)
class BenchPlan:
    dataset: str
    profile: str
    configs: dict[str, Path]  # method → its config file, in run order
    prepare: dict = field(default_factory=dict)
    overrides: Path | None = None
    method_overrides: dict[str, Path] = field(default_factory=dict)  # method → its profile override
    evaluate: str = "test"
    refiner: str | None = None
    refined: tuple[str, ...] = ()  # the methods whose maps the refiner refines
    refiner_configs: tuple[Path, ...] = ()  # the refiner's config, then its profile override
    label_embedding_configs: tuple[Path, ...] = ()
    refiner_vae: Path | None = None

    def config_files(self, method: str) -> list[Path]:
        """One method's config files: its config, then the profile's method and dataset overrides."""
        return [f for f in (self.configs[method], self.method_overrides.get(method), self.overrides) if f]

    def config_args(self, method: str) -> list[str]:
        return _config_args(self.config_files(method))

    def refiner_args(self) -> list[str]:
        return _config_args(self.refiner_configs)

    def label_embedding_args(self) -> list[str]:
        return _config_args(self.label_embedding_configs)


def _config_args(files) -> list[str]:
    return [arg for f in files if f is not None for arg in ("--config", str(f))]


def merged_config(files) -> dict:
    """What LightningCLI makes of several ``--config`` files: later files win, mappings merge key by key."""
    merged: dict = {}
    for path in files:
        _merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _existing(path: Path, plan: Path, what: str) -> Path:
    if not path.is_file():
        raise PlanError(f"{plan}: {what} needs {path}, which is missing")
    return path


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
    name = plan.get("config_name", dataset)
    configs = {m: experiments / m / f"{name}.yaml" for m in (methods or known)}
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
    refiner = plan.get("refiner")
    refiner_fields = {}
    if refiner is not None:
        if refiner not in REFINERS:
            raise PlanError(f"{path}: unknown refiner {refiner!r}; choose one of {list(REFINERS)}")
        folder, extra = experiments / refiner, chosen.get("method_config")
        refined = tuple(chosen.get("refine") or plan.get("refine") or known)
        if set(refined) - set(known):
            raise PlanError(f"{path}: refine lists methods {sorted(set(refined) - set(known))} that are not in "
                            f"the plan's methods {known}")
        refiner_fields = {
            "refiner": refiner,
            "refined": tuple(m for m in refined if m in configs),
            "refiner_configs": tuple(_existing(folder / f, path, f"refiner {refiner!r}")
                                     for f in (f"{name}.yaml", extra) if f),
            "label_embedding_configs": tuple(_existing(folder / f"label_embedding_{f}", path, "the label embedding")
                                             for f in (f"{name}.yaml", extra) if f),
            "refiner_vae": (_existing(experiments / chosen["refiner_vae"], path, f"profile {profile!r}")
                            if chosen.get("refiner_vae") else None),
        }
    elif chosen.get("refiner_vae"):
        raise PlanError(f"{path}: profile {profile!r} sets refiner_vae but the plan has no refiner")
    evaluate = plan.get("evaluate", "test")
    if evaluate not in ("test", "validate"):
        raise PlanError(f"{path}: evaluate must be 'test' or 'validate', got {evaluate!r}")
    if evaluate != "test" and refiner is not None:
        raise PlanError(f"{path}: the refiner needs test labels (evaluate: test)")
    return BenchPlan(
        dataset=dataset,
        evaluate=evaluate,
        profile=profile,
        configs=configs,
        prepare=dict(chosen.get("prepare", {})),
        overrides=experiments / overrides if overrides else None,
        method_overrides=method_overrides,
        **refiner_fields,
    )
