"""Lightning callbacks for cross-cutting concerns: inference speed, memory and FLOPs, evaluation samples,
per-unit evaluation counts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback

from rsseg.data.synthetic.files import write_atomically
from rsseg.profiling import EvalMemory, count_gflops

log = logging.getLogger(__name__)


def _synchronize(pl_module) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


def one_sample(batch: Any) -> Any:
    """A copy of a batch dict's first sample (tensors, lists and nested dicts sliced along the batch), made
    where it runs: outside inference mode its tensors are ordinary ones."""
    if isinstance(batch, dict):
        return {k: one_sample(v) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch[:1].clone()
    return batch[:1] if isinstance(batch, list | tuple) else batch


class _EvaluationHooks(Callback):
    """Routes the test loop (``stage="test"``) or the validation loop (``"validate"``) to ``_start``,
    ``_batch_start``, ``_batch_end`` and ``_end``."""

    def __init__(self, stage: str = "test") -> None:
        if stage not in ("test", "validate"):
            raise ValueError(f"stage must be 'test' or 'validate', got {stage!r}")
        self.stage = stage

    def _start(self, trainer, pl_module) -> None: ...
    def _batch_start(self, pl_module, batch) -> None: ...
    def _batch_end(self, trainer, pl_module, outputs, batch) -> None: ...
    def _end(self, trainer, pl_module) -> None: ...

    def _active(self, trainer, stage: str) -> bool:
        # a validation loop inside fit is not a `validate` run
        return self.stage == stage and (stage == "test" or trainer.state.fn == "validate")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if self._active(trainer, "test"):
            self._start(trainer, pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer, "test"):
            self._batch_start(pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer, "test"):
            self._batch_end(trainer, pl_module, outputs, batch)

    def on_test_end(self, trainer, pl_module) -> None:
        if self._active(trainer, "test"):
            self._end(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._active(trainer, "validate"):
            self._start(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer, "validate"):
            self._batch_start(pl_module, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer, "validate"):
            self._batch_end(trainer, pl_module, outputs, batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._active(trainer, "validate"):
            self._end(trainer, pl_module)


class InferenceProfiler(_EvaluationHooks):
    """Model time (data loading excluded) and images of the last test loop (``stage="validate"``: of the
    last ``validate`` run), for images/s; the memory of that loop, ``eval_memory_mib`` (see
    :class:`~rsseg.profiling.EvalMemory`: the CUDA peak allocated, or on a CPU the peak RSS increase over
    the start of the loop, so that methods run in one process compare), with ``memory`` holding its
    baseline, peak and increase; and the GFLOPs of one image through the model's ``predict_step`` at the
    evaluated size (counted after the loop, so it cannot disturb the evaluation)."""

    def __init__(self, stage: str = "test") -> None:
        super().__init__(stage)
        self.seconds = 0.0
        self.images = 0
        self.eval_memory_mib: float | None = None
        self.memory: EvalMemory | None = None
        self.gflops: float | None = None
        self._start_time = 0.0
        self._first_batch = None

    def _start(self, trainer, pl_module) -> None:
        self.seconds, self.images, self._first_batch = 0.0, 0, None
        self.memory = EvalMemory(pl_module.device)
        self.memory.start()

    def _batch_start(self, pl_module, batch) -> None:
        _synchronize(pl_module)
        self._start_time = time.perf_counter()

    def _batch_end(self, trainer, pl_module, outputs, batch) -> None:
        _synchronize(pl_module)
        self.seconds += time.perf_counter() - self._start_time
        self.images += int(batch["image"].shape[0])
        if self._first_batch is None:
            self._first_batch = batch

    def _end(self, trainer, pl_module) -> None:
        if self.memory is not None:
            self.eval_memory_mib = round(self.memory.read(), 1)
        if self._first_batch is not None:
            try:
                self.gflops = round(count_gflops(lambda: pl_module.predict_step(one_sample(self._first_batch), 0)), 3)
            except Exception as error:  # noqa: BLE001 — a FLOP count is a nicety; never lose the evaluation
                log.warning("could not count the FLOPs of %s: %s", type(pl_module).__name__, error)
            self._first_batch = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class EvaluationSamples(_EvaluationHooks):
    """Keeps the first ``num_samples`` images of an evaluation run with their target and prediction (the
    ``pred`` that the task's test/validation step returns), for prediction panels and W&B images.

    Each sample: ``id``, ``image`` (H×W×3 uint8, de-normalised with the datamodule's statistics; the first
    three bands of multi-band images), ``target`` and ``pred`` (H×W int64), and ``text`` where the batch
    has sentences (referring segmentation). Only rank 0 keeps samples.
    """

    def __init__(self, num_samples: int = 4, stage: str = "test") -> None:
        super().__init__(stage)
        self.num_samples = num_samples
        self.samples: list[dict] = []
        self.classes: list[str] = []
        self.palette: list[tuple[int, int, int]] = []

    def _start(self, trainer, pl_module) -> None:
        self.samples = []
        spec = getattr(trainer.datamodule, "spec", None)
        if spec is not None and getattr(spec, "classes", None):
            self.classes, self.palette = list(spec.classes), [tuple(c) for c in spec.palette]
        else:  # referring segmentation: the referred object or not
            self.classes, self.palette = ["background", "target"], [(0, 0, 0), (255, 255, 255)]

    def _batch_end(self, trainer, pl_module, outputs, batch) -> None:
        if not trainer.is_global_zero or len(self.samples) >= self.num_samples:
            return
        if not isinstance(outputs, dict) or "pred" not in outputs:
            return
        from rsseg.tasks.segmentation import data_statistics

        images = batch["image"]
        if images.is_floating_point():
            mean, std = data_statistics(trainer.datamodule, images.device)
            images = ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        ids = _sample_ids(batch, len(images))
        texts = batch.get("text")
        for i in range(min(len(images), self.num_samples - len(self.samples))):
            sample = {
                "id": ids[i],
                "image": images[i, :3].permute(1, 2, 0).cpu().numpy(),
                "target": batch["mask"][i].cpu().numpy().astype(np.int64),
                "pred": outputs["pred"][i].cpu().numpy().astype(np.int64),
            }
            if texts is not None:
                sample["text"] = texts[i]
            self.samples.append(sample)


def _sample_ids(batch: dict, n: int) -> list[str]:
    ids = (batch.get("meta") or {}).get("id")
    return [str(v) for v in ids] if ids is not None else [str(i) for i in range(n)]


class UnitMatrixWriter(Callback):
    """Saves the task's per-unit counts of each evaluation as ``per_unit_<key>.npz`` in ``trainer.log_dir``
    (the logger's folder; ``default_root_dir`` without a logger), for confidence intervals over units.

    ``key`` is ``val`` or ``test`` (DANet adds ``val_native``/``test_native``); the arrays are the task's
    ``unit_record(key)``: ``names`` aligned with ``confmats`` (n×K×K, rows = target) plus ``class_names``,
    ``ignore_index`` and ``exclude_from_mean`` for semantic tasks, or ``names``, ``intersections``,
    ``unions`` and ``empty_iou`` for referring ones. Each validation during fit replaces ``per_unit_val.npz``
    (the last epoch's stays); the sanity check writes nothing. Rank 0 writes, atomically.
    """

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, pl_module, ("val", "val_native"))

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, ("test", "test_native"))

    def _write(self, trainer, pl_module, keys: tuple[str, ...]) -> None:
        kept = getattr(pl_module, "unit_matrices", {})  # the same on every rank: gathered at the epoch's end
        if any(key in kept for key in keys):
            folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir is collective: every rank asks
            save_unit_records(trainer, pl_module, keys, folder)


def save_unit_records(trainer, pl_module, keys: tuple[str, ...], folder: Path) -> dict[str, Path]:
    """``folder/per_unit_<key>.npz`` for each of ``keys`` the task kept (rank 0 writes; every rank gets the
    paths)."""
    kept = getattr(pl_module, "unit_matrices", {})
    paths = {key: folder / f"per_unit_{key}.npz" for key in keys if key in kept}
    if paths and trainer.is_global_zero:
        folder.mkdir(parents=True, exist_ok=True)
        for key, path in paths.items():
            write_unit_record(path, pl_module.unit_record(key))
    return paths


def write_unit_record(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``arrays`` as an uncompressed ``.npz`` at ``path``, which appears only once complete."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(f, **arrays)

    return write_atomically(path, save)
