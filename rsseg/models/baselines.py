"""Baseline segmentation networks from segmentation-models-pytorch.

They are comparison rows in every benchmark and IDGBR's coarse models. One factory, no Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


SMP_MODEL_PARTS = ("encoder.", "decoder.", "segmentation_head.", "classification_head.")


class SMPNet(nn.Module):
    """An smp architecture as rsseg's other networks: ``SMPNet(num_classes, arch, backbone, pretrained)``.

    Args:
        num_classes: classes of the logits (B×num_classes×H×W); the task gives it.
        arch: smp architecture name (``unet``, ``deeplabv3plus``, ``segformer``, ``upernet``, …).
        backbone: smp/timm encoder name (``resnet18``, ``mit_b0``, ``tu-convnext_tiny``, …).
        pretrained: encoder weights: ``None``/``False`` random (offline), ``True`` smp's ``"imagenet"``, an
            smp weight name, or a local encoder ``state_dict`` file.
        in_channels: image bands.
        arch_kwargs: extra keyword arguments of the smp architecture (e.g. ``decoder_channels``).
        encoder, encoder_name, encoder_weights: smp's own names, accepted for ``backbone`` and ``pretrained``
            (an error when both an alias and the rsseg name are given).

    The smp model is ``self.model``; checkpoints written before this class, whose keys lack the ``model.``
    level, still load (:meth:`_load_from_state_dict` adds it).
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "unet",
        backbone: str = "resnet18",
        pretrained: bool | str | None = None,
        in_channels: int = 3,
        arch_kwargs: dict[str, Any] | None = None,
        encoder: str | None = None,
        encoder_name: str | None = None,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        backbone = _alias(backbone, "backbone", "resnet18", encoder=encoder, encoder_name=encoder_name)
        pretrained = _alias(pretrained, "pretrained", None, encoder_weights=encoder_weights)
        weights = "imagenet" if pretrained is True else (pretrained or None)
        self.arch, self.backbone_name, self.weights = arch, backbone, weights
        self.model = build_smp_model(arch, backbone, weights, in_channels, num_classes, **(arch_kwargs or {}))

    @property
    def backbone(self) -> nn.Module:
        """The smp encoder (``encoder`` in smp's words)."""
        return self.model.encoder

    encoder = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].startswith(SMP_MODEL_PARTS)]:
            state_dict[f"{prefix}model.{key[len(prefix):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _alias(value: Any, name: str, default: Any, **aliases: Any) -> Any:
    """``value`` of the rsseg argument ``name``, or the one smp alias given (an error if both are set)."""
    given = {alias: v for alias, v in aliases.items() if v is not None}
    if not given:
        return value
    if len(given) > 1 or value != default:
        names = ", ".join([*([name] if value != default else []), *given])
        raise ValueError(f"SMPNet: {names} name the same setting; give only {name}")
    return next(iter(given.values()))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
