"""The reproducibility manifest of a run: code, libraries, device, seed, protocol and data checksum.

Written into every bench results folder and logged with every W&B run, so a number can be traced back to
the exact code, environment and data that produced it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("rsseg", "torch", "torchvision", "lightning", "torchmetrics", "segmentation-models-pytorch", "timm",
            "transformers", "diffusers", "open-clip-torch", "albumentations", "wandb", "numpy")


def package_versions() -> dict[str, str | None]:
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: installed(name) for name in PACKAGES}


@lru_cache(maxsize=1)
def git_revision() -> dict[str, str | bool | None]:
    """The checkout's commit and whether it has uncommitted changes (None outside a git checkout)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_info() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cuda": torch.version.cuda if cuda else None,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def data_checksum(root: str | Path) -> dict[str, str]:
    """SHA-256 identifying a data root: of its ``manifest.json`` where ``rsseg prepare`` wrote one (it lists
    every tile, patch and split), else of the sorted list of every file's relative path and size (roots read
    as released). Cheap on large datasets: file contents are not read."""
    root = Path(root)
    manifest = root / "manifest.json"
    digest = hashlib.sha256()
    if manifest.is_file():
        digest.update(manifest.read_bytes())
        return {"sha256": digest.hexdigest(), "of": "manifest.json"}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return {"sha256": digest.hexdigest(), "of": "file list (relative paths and sizes)"}


def run_manifest(datamodule=None, seed: int | None = None) -> dict:
    """Everything needed to reproduce a run; ``datamodule`` adds its dataset, protocol, root and checksum
    (a wrapping datamodule such as IDGBR's coarse-map one answers for the dataset it wraps)."""
    manifest = {"rsseg": version("rsseg"), "git": git_revision(), "versions": package_versions(),
                **device_info(), "seed": seed}
    spec = getattr(datamodule, "spec", None)
    root = getattr(datamodule, "root", None)
    if spec is not None:
        manifest |= {"dataset": spec.name, "protocol": spec.protocol}
    if root is not None and Path(root).is_dir():
        manifest |= {"data_root": str(root), "data_checksum": data_checksum(root)}
    return manifest
