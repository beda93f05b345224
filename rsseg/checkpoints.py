"""Reading the checkpoints a user or a config names, and reconciling their stored hyper-parameters.

A checkpoint is a pickle: ``torch.load(..., weights_only=False)`` on a file from elsewhere runs whatever
code it carries. rsseg therefore reads every user-named checkpoint with ``weights_only=True`` (tensors and
plain containers only; Lightning's own checkpoints load that way) and turns every way a file can fail to
be a checkpoint into one :class:`CheckpointError` that names it.

``--ckpt_path`` also brings the hyper-parameters the model was trained with. Lightning's CLI lets them
replace whatever the user configured; rsseg keeps what the user set explicitly (``--config`` files and
``--model.*`` flags), takes the checkpoint's values for everything else, and reports every disagreement
(:func:`reconcile_hparams`).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ``ckpt_path`` values that Lightning resolves itself (no file to read here).
LIGHTNING_CKPT_KEYWORDS = frozenset({"best", "last", "hpc", "registry"})
REMOTE_PREFIXES = ("registry:", "http://", "https://", "s3://", "gs://", "gcs://", "az://", "abfs://")


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, not a checkpoint, unsafe, or of another model."""


def names_a_file(ckpt_path: str | Path) -> bool:
    """True when ``ckpt_path`` is a local file path (not ``"last"``, a registry entry or a URL)."""
    text = str(ckpt_path)
    return text not in LIGHTNING_CKPT_KEYWORDS and not text.startswith(REMOTE_PREFIXES)


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint dict at ``path``, read without unpickling code; CheckpointError naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        reason = "is a folder" if path.is_dir() else "no such file"
        raise CheckpointError(f"{path}: {reason} (expected a {what})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if re.search(r"\bglobal\b", str(error), re.IGNORECASE):  # a class or function to import and call: code
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects that would run code when loaded, which a "
                f"{what} never needs (loaded with torch.load(weights_only=True)); use a checkpoint written by "
                "rsseg/Lightning or re-save its state_dict"
            ) from error
        raise CheckpointError(f"{path}: not a PyTorch {what} ({_unpickling_reason(error)})") from error
    except Exception as error:  # any decoder failure: a text file, a truncated or foreign file
        raise CheckpointError(f"{path}: not a PyTorch {what} ({type(error).__name__}: {_first_line(error)})"
                              ) from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning {what} (no state_dict in it)")
    return dict(checkpoint)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _unpickling_reason(error: BaseException) -> str:
    """The specific line of torch's weights-only unpickler error (its other lines are boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "changed the default")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(boilerplate)]
    return specific[-1] if specific else "unreadable pickle"


@dataclass
class Reconciled:
    """What :func:`reconcile_hparams` decided: the values taken from the checkpoint, and the explicit
    settings that differ from it (``name -> (configured, stored)``), which the model is built with."""

    from_checkpoint: dict[str, Any] = field(default_factory=dict)
    overridden: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``name: configured (checkpoint: stored)`` for every overridden setting."""
        return ", ".join(f"{name}={configured!r} (checkpoint: {stored!r})"
                         for name, (configured, stored) in self.overridden.items())


def reconcile_hparams(stored: Mapping[str, Any], configured: Mapping[str, Any], explicit: set[str]) -> Reconciled:
    """Merge a checkpoint's hyper-parameters into a model's configured ``init_args``.

    ``explicit`` names the arguments the user set (config files, command line): they win, and each one
    that differs from the checkpoint is listed. The others take the checkpoint's value (the model is
    rebuilt as it was trained). Stored names the model no longer has are listed as ``unknown``.

    A network given as a dependency (``net: {class_path, init_args}``, :mod:`rsseg.tasks.net`) is reconciled
    argument by argument when the checkpoint's network is of the configured class: ``explicit`` then holds
    dotted names (``net.init_args.backbone``, as jsonargparse lists a namespace's keys) and the report names
    them ``net.backbone``. A network of another class is one setting.
    """
    result = Reconciled()
    for name, value in stored.items():
        if name.startswith("_"):
            continue  # Lightning's bookkeeping (_class_path, _instantiator)
        if name not in configured:
            result.unknown.append(name)
        elif name not in explicit and _same_network(value, configured[name]):
            prefix = f"{name}.init_args."
            inner = reconcile_hparams(value["init_args"], configured[name]["init_args"] or {},
                                      {k[len(prefix):] for k in explicit if k.startswith(prefix)})
            if inner.from_checkpoint:
                result.from_checkpoint[name] = {"class_path": configured[name]["class_path"],
                                                "init_args": inner.from_checkpoint}
            result.overridden |= {f"{name}.{k}": v for k, v in inner.overridden.items()}
            result.unknown += [f"{name}.{k}" for k in inner.unknown]
        elif name in explicit or any(k.startswith(f"{name}.") for k in explicit):
            if _plain(configured[name]) != _plain(value):
                result.overridden[name] = (configured[name], value)
        else:
            result.from_checkpoint[name] = value
    return result


def _same_network(stored: Any, configured: Any) -> bool:
    """Both are ``{class_path, init_args}`` of the same class (``rsseg.models.D2LS`` and
    ``rsseg.models.d2ls.D2LS`` alike)."""
    configured = _plain(configured)
    if not all(isinstance(v, Mapping) and "class_path" in v and "init_args" in v for v in (stored, configured)):
        return False
    return _resolve(stored["class_path"]) == _resolve(configured["class_path"])


def _resolve(class_path: str) -> Any:
    """The class a class path names when its module is imported (else the path itself)."""
    import sys

    module, _, name = str(class_path).rpartition(".")
    return getattr(sys.modules.get(module), name, class_path)


def _plain(value: Any) -> Any:
    """Comparable form: tuples and lists alike, namespaces and dicts alike."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# What a weights-only export keeps of a Lightning checkpoint: enough to rebuild the task and to test or predict.
EXPORT_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", "epoch", "global_step",
               "rsseg_input")


def export_weights(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Write ``src``'s weights and hyper-parameters, without the optimiser and loop states (Adam keeps two
    tensors per trained weight: two thirds of a checkpoint trained end to end), to ``dst``: a checkpoint
    ``rsseg test/predict --ckpt_path`` accept, not one to resume training from. Returns both sizes in bytes."""
    import torch

    checkpoint = read_checkpoint(src)
    dst = Path(dst)
    if dst.resolve() == Path(src).resolve():
        raise CheckpointError(f"{dst}: the export would overwrite its own checkpoint; choose another --out")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    torch.save({k: checkpoint[k] for k in EXPORT_KEYS if k in checkpoint}, partial)
    partial.replace(dst)  # never a half-written file under the final name
    return {"checkpoint": Path(src).stat().st_size, "export": dst.stat().st_size}
