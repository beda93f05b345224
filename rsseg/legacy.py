"""Checkpoints written before issue 19, when each task restated its network's arguments (flat hparams).

Since issue 19 a task takes its network as ``net`` (``{class_path, init_args}``, see :mod:`rsseg.tasks.net`).
:func:`convert_legacy_hparams` moves the network's arguments of an old checkpoint into ``net`` (smp's
``encoder``/``encoder_weights`` become ``backbone``/``pretrained``); :func:`convert_legacy_checkpoint` rewrites
a checkpoint file that way (the smp baselines' weights also move under ``net.model.``, where
:class:`rsseg.models.SMPNet` keeps the smp model; the other networks' weight names are unchanged).
``Task.load_from_checkpoint`` of an rsseg task (:func:`load_legacy`) and ``--ckpt_path`` (its hyper-parameters,
in :mod:`rsseg.lightning_cli`) convert old checkpoints on the fly; ``python -m rsseg.legacy OLD.ckpt NEW.ckpt``
rewrites one.
"""

from __future__ import annotations

import inspect
import io
import sys
from pathlib import Path
from typing import Any

# task class path → (network class path, number of open network arguments, renamed old arguments)
LEGACY_TASKS: dict[str, tuple[str, int, dict[str, str]]] = {
    "rsseg.tasks.SMPSegmentationTask": ("rsseg.models.SMPNet", 1,
                                        {"encoder": "backbone", "encoder_weights": "pretrained"}),
    "rsseg.tasks.D2LSTask": ("rsseg.models.D2LS", 1, {}),
    "rsseg.tasks.DANetTask": ("rsseg.models.DANet", 0, {}),
    "rsseg.tasks.IDGBRTask": ("rsseg.models.IDGBR", 2, {}),
    "rsseg.tasks.SDCITask": ("rsseg.models.sdci.model.SDCI", 0, {}),
}
_MODULE_OF = {  # the modules defining the classes (checkpoints may name either)
    "rsseg.tasks.segmentation.SMPSegmentationTask": "rsseg.tasks.SMPSegmentationTask",
    "rsseg.tasks.d2ls.D2LSTask": "rsseg.tasks.D2LSTask",
    "rsseg.tasks.danet.DANetTask": "rsseg.tasks.DANetTask",
    "rsseg.tasks.idgbr.IDGBRTask": "rsseg.tasks.IDGBRTask",
    "rsseg.tasks.sdci.SDCITask": "rsseg.tasks.SDCITask",
}


def _network_arguments(class_path: str, open_arguments: int) -> list[str]:
    import importlib

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return list(inspect.signature(cls).parameters)[open_arguments:]


def is_legacy(hparams: dict[str, Any], task: str | None = None) -> bool:
    """True for the flat hyper-parameters of an rsseg task from before issue 19 (no ``net``)."""
    task = _MODULE_OF.get(task or hparams.get("_class_path"), task or hparams.get("_class_path"))
    return task in LEGACY_TASKS and "net" not in hparams


def convert_legacy_hparams(hparams: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """``hparams`` with the network's arguments moved into ``net: {class_path, init_args}``. ``task`` (a task
    class path) is read from ``_class_path`` when not given; new-layout hparams come back unchanged."""
    task = task or hparams.get("_class_path")
    if not is_legacy(hparams, task):
        return dict(hparams)
    net_path, open_arguments, renamed = LEGACY_TASKS[_MODULE_OF.get(task, task)]
    names = set(_network_arguments(net_path, open_arguments))
    init_args, rest = {}, {}
    for key, value in hparams.items():
        new = renamed.get(key, key)
        if new in names:
            init_args[new] = value
        else:
            rest[key] = value
    return {**rest, "net": {"class_path": net_path, "init_args": init_args}}


def convert_legacy_state(checkpoint: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """``checkpoint`` (a loaded Lightning checkpoint) in the new layout: hparams and, for the smp baselines,
    the weight names (``net.X`` → ``net.model.X``)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    task = task or hparams.get("_class_path")
    if not is_legacy(hparams, task):
        return checkpoint
    converted = {**checkpoint, "hyper_parameters": convert_legacy_hparams(hparams, task)}
    if LEGACY_TASKS[_MODULE_OF.get(task, task)][0].endswith("SMPNet"):
        converted["state_dict"] = {
            (f"net.model.{k[4:]}" if k.startswith("net.") and not k.startswith("net.model.") else k): v
            for k, v in checkpoint["state_dict"].items()
        }
    return converted


def convert_legacy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Rewrite the checkpoint ``src`` (written before issue 19) in the new layout as ``dst``; a checkpoint
    already in the new layout is copied unchanged. Read with ``weights_only=True`` (no code runs)."""
    import torch

    from rsseg.checkpoints import read_checkpoint

    checkpoint = convert_legacy_state(read_checkpoint(src))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dst)
    return dst


def load_legacy(cls: type, checkpoint_path: Any) -> Any:
    """``checkpoint_path`` as :meth:`load_from_checkpoint` of ``cls`` should read it: unchanged for a checkpoint
    in the new layout (or not a local file), else an in-memory converted copy."""
    import torch

    if not isinstance(checkpoint_path, str | Path) or not Path(checkpoint_path).is_file():
        return checkpoint_path
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    task = f"{cls.__module__}.{cls.__qualname__}"
    if not is_legacy(checkpoint.get("hyper_parameters") or {}, task):
        return checkpoint_path
    buffer = io.BytesIO()
    torch.save(convert_legacy_state(checkpoint, task), buffer)
    buffer.seek(0)
    return buffer


if __name__ == "__main__":  # python -m rsseg.legacy OLD.ckpt NEW.ckpt
    if len(sys.argv) != 3:
        sys.exit("usage: python -m rsseg.legacy OLD.ckpt NEW.ckpt")
    print(convert_legacy_checkpoint(sys.argv[1], sys.argv[2]))
