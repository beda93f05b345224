"""Fit a tiny IDGBR refiner with Lightning's FSDPStrategy in two CPU processes (gloo); run by test_idgbr_fsdp.

Lightning's launcher re-executes this script for rank 1. Rank 0 writes ``<out>/fsdp.json``: the number of
FSDP units, and per optimiser step the gradient norm before clipping (as FSDP reduced it over the shards) and
after clipping (recomputed here from every rank's local shards).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from diffusers.models.unets.unet_2d_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel

from rsseg.models.idgbr import GuidanceModule, ReleasedGuidanceModule
from rsseg.tasks.idgbr import IDGBRTask
from tests.idgbr_tiny import TINY_DINO, tiny_idgbr_net
from tests.test_idgbr_task import _RefinementData

CLIP = 1e-3  # far below the tiny model's gradient norm, so every step clips


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with the model wrapped on the CPU. Lightning refuses ``accelerator='cpu'`` for
    FSDP and wraps with ``device_id=root_device.index`` (None on the CPU, which FSDP rejects); FSDP itself
    runs on the CPU once it is told ``device_id=cpu``. Everything else is Lightning's."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                        **self.kwargs)


class RecordingIDGBR(IDGBRTask):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        before = _global_norm(grads)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.norms.append((before, _global_norm(grads)))


def _global_norm(grads: list[torch.Tensor]) -> float:
    """The norm of the whole gradient from each rank's local shard (use_orig_params: views of the shard)."""
    squares = sum((g.double().pow(2).sum() for g in grads), torch.zeros((), dtype=torch.double))
    dist.all_reduce(squares)
    return squares.sqrt().item()


def main(out: Path) -> None:
    torch.manual_seed(0)
    task = RecordingIDGBR(net=tiny_idgbr_net(), num_classes=3, repa_model="tiny", repa_pretrained=False,
                          repa_config=TINY_DINO, repa_hidden=16, repa_steps=2, inference_steps=2,
                          test_per_class_wfm=False, wfm_workers=0)
    task.norms = []
    policy = {CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D,
              GuidanceModule, ReleasedGuidanceModule}  # docs/multi_gpu.md's policy
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=CPUFSDPStrategy(auto_wrap_policy=policy),
                        max_steps=3, limit_val_batches=0, gradient_clip_val=CLIP, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=out)
    trainer.fit(task, _RefinementData())
    units = sum(isinstance(m, FullyShardedDataParallel) for m in trainer.strategy.model.modules())
    if trainer.is_global_zero:
        (out / "fsdp.json").write_text(json.dumps({"units": units, "norms": task.norms, "clip": CLIP}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
