"""What the rehearsal checks share: synthetic data at the paper's sizes, a paper config built through the same
LightningCLI as ``rsseg fit`` (``pretrained: true`` loads from the rehearsal cache), timed training steps and
the comparison of a module's tensors with a checkpoint's."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import redirect_stdout
from pathlib import Path

import torch
import yaml
from lightning import Callback

REPO = Path(__file__).resolve().parents[2]


def experiment(path: str) -> str:
    """``experiments/<path>`` of this checkout, as a string for ``--config``."""
    return str(REPO / "experiments" / path)


def work_folder(family: str) -> Path:
    """Where a family's checks keep their synthetic data and stage checkpoints (``RSSEG_REHEARSAL_WORK``, else
    ``.cache/rehearsal-work``), reused by later runs."""
    folder = Path(os.environ.get("RSSEG_REHEARSAL_WORK", REPO / ".cache" / "rehearsal-work")) / family
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def synthetic_root(dataset: str, work: Path, patch_size: int = 1024, protocol: str | None = None) -> Path:
    """A root of ``dataset``'s synthetic twin under ``work`` (prepared into patches where the dataset is, with
    ``protocol`` or the preparer's default)."""
    from rsseg.data.registry import PREPARERS
    from rsseg.data.synthetic import write_synthetic

    raw = work / f"{dataset}_raw"
    if not raw.exists():
        write_synthetic(dataset, raw, seed=0)
    if dataset not in PREPARERS:
        return raw
    root = work / (f"{dataset}_prepared" if protocol is None else f"{dataset}_{protocol}_{patch_size}")
    if not (root / "manifest.json").exists():
        PREPARERS[dataset](raw, root, patch_size=patch_size, progress=False,
                           **({} if protocol is None else {"protocol": protocol}))
    return root


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """A file of the (offline) hub cache, resolved as the loaders resolve it."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision))


class SafetensorsTensors(Mapping):
    """A safetensors file's tensors, read one at a time (memory-mapped; a 3.4 GB UNet is never held twice),
    optionally only the keys ``keep`` accepts."""

    def __init__(self, path: Path, keep: Callable[[str], bool] = lambda key: True) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._keys = [k for k in self._file.keys() if keep(k)]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def printed_config(configs: Sequence[str], overrides: Sequence[str] = ()) -> dict:
    """``rsseg fit --config … --print_config``, parsed: what a user sees before a run."""
    from rsseg.lightning_cli import build_cli

    text = io.StringIO()
    with redirect_stdout(text):
        try:
            build_cli(["fit", *[a for c in configs for a in ("--config", c)], *overrides, "--print_config"])
        except SystemExit:
            pass
    return yaml.safe_load(text.getvalue())


def paper_cli(configs: Sequence[str], root: Path, overrides: Sequence[str] = ()):
    """The LightningCLI of ``rsseg fit --config …`` built without running (model, datamodule, trainer), on
    ``root``, batch 1, CPU, no logger and none of the config's callbacks (no checkpoints of random weights);
    returns (cli, seconds to build: the pretrained weights load here)."""
    from rsseg.lightning_cli import build_cli

    started = time.perf_counter()
    cli = build_cli([*[a for c in configs for a in ("--config", c)], "--data.init_args.root", str(root),
                     "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0",
                     "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
                     "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
                     "--trainer.enable_checkpointing", "false",  # no multi-GB checkpoint of random weights
                     "--trainer.default_root_dir", str(root.parent / "runs"), *overrides], run=False)
    return cli, time.perf_counter() - started


class StepTimer(Callback):
    """Seconds of each training batch (forward, backward, optimiser step), and its image's shape (the crop and
    batch size really used)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.shapes: list[list[int]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        image = batch.get("image") if isinstance(batch, Mapping) else None
        self.shapes.append(list(image.shape) if isinstance(image, torch.Tensor) else [])
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(round(time.perf_counter() - self._start, 2))
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is not None and not torch.isfinite(torch.as_tensor(loss)).all():
            raise FloatingPointError(f"training step {batch_idx}: loss {loss}")


def fit_steps(cli, steps: int = 2) -> tuple[list[float], list[list[int]]]:
    """``steps`` training steps of the built CLI's model on its datamodule; each step's seconds and image shape."""
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit_loop.epoch_loop.max_steps = steps
    cli.trainer.fit(cli.model, cli.datamodule)
    if len(timer.seconds) != steps:
        raise RuntimeError(f"{len(timer.seconds)} training steps ran, {steps} expected")
    return timer.seconds, timer.shapes


def state_matches(expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]) -> dict:
    """How a checkpoint's tensors (``expected``, keys mapped to the module's) were loaded into ``actual``:
    tensors in the checkpoint the module lacks (``missing``), and those loaded with other values (``differ``)."""
    missing = sorted(k for k in expected if k not in actual)
    differ = sorted(k for k in expected if k in actual and not torch.equal(expected[k].float(),
                                                                            actual[k].detach().float().cpu()))
    return {"tensors": len(expected), "missing": missing, "differ": differ}


def parameters_m(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)
