"""Baseline segmentation networks from segmentation-models-pytorch.

They are comparison rows in every benchmark and IDGBR's coarse models. One factory, no Lightning.
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

SMP_ARCHITECTURES = tuple(sorted(smp.MODEL_ARCHITECTURES_MAPPING))


def build_smp_model(
    arch: str = "unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    num_classes: int = 6,
    **arch_kwargs,
) -> nn.Module:
    """Build ``smp.create_model(arch, encoder)`` with logits of shape B×num_classes×H×W.

    ``encoder_weights`` is an smp weight name (``"imagenet"``: downloaded by smp on first use) or a
    local file holding an encoder ``state_dict``; ``None`` initialises randomly (offline default).
    """
    arch_key = arch.lower().replace("-", "").replace("_", "")
    if arch_key not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(f"unknown smp architecture {arch!r}; choose one of {', '.join(SMP_ARCHITECTURES)}")
    local_weights = encoder_weights is not None and Path(encoder_weights).is_file()
    model = smp.create_model(
        arch_key,
        encoder_name=encoder,
        encoder_weights=None if local_weights else encoder_weights,
        in_channels=in_channels,
        classes=num_classes,
        **arch_kwargs,
    )
    if local_weights:
        state = torch.load(encoder_weights, map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(state.get("state_dict", state))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
