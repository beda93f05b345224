"""Representation alignment (REPA, IDGBR §III-D, Eq. 11): diffusion features aligned to DINOv2 patches.

:class:`DinoPatchFeatures` gives the frozen target y_c (DINOv2 patch tokens of the image, transformers'
``Dinov2Model`` by hub id or local folder), :class:`RepaProjector` is the learnable MLP h_φ, and
:func:`repa_loss` is Eq. 11: the negative cosine similarity of corresponding patches, averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_DINO = "facebook/dinov2-giant"  # the released code's ViT-g/14 (1536-d patches); the paper names no size


class DinoPatchFeatures(nn.Module):
    """Frozen DINOv2: an (ImageNet-normalised) image → B×D×g×g normalised patch tokens.

    The image is resized (bicubic) so that the token grid has one patch per ``stride`` image pixels: 512²
    → 448² → 32 × 32 tokens, as the released code does. ``pretrained=False`` builds the architecture
    randomly initialised from ``config`` (a dict with ``model_type``, e.g. a tiny DINOv2 for tests) or
    from the model's own config.
    """

    def __init__(self, name_or_path: str = DEFAULT_DINO, pretrained: bool = True, config: dict | None = None,
                 stride: int = 16) -> None:
        super().__init__()
        from rsseg.pretrained import load_transformers_model

        self.model = load_transformers_model(name_or_path, pretrained, config, "DINOv2", "idgbr")
        self.model.requires_grad_(False).eval()
        self.patch = self.model.config.patch_size
        self.skip_tokens = 1 + getattr(self.model.config, "num_register_tokens", 0)  # [CLS] and registers
        self.dim = self.model.config.hidden_size
        self.stride = stride

    def train(self, mode: bool = True) -> DinoPatchFeatures:
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        grid_h, grid_w = (math.ceil(s / self.stride) for s in image.shape[-2:])
        resized = F.interpolate(image, size=(grid_h * self.patch, grid_w * self.patch), mode="bicubic",
                                align_corners=False)
        tokens = self.model(pixel_values=resized).last_hidden_state[:, self.skip_tokens:]  # after the final norm
        return tokens.transpose(1, 2).reshape(image.shape[0], -1, grid_h, grid_w)


class RepaProjector(nn.Module):
    """h_φ: a three-layer MLP per position (Linear–SiLU–Linear–SiLU–Linear, Xavier-initialised as in the
    released code; 1280 → 2048 → 2048 → D for SD v1.5 and ViT-g)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 2048) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_channels))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.mlp(hidden.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def repa_loss(projected: Tensor, target: Tensor) -> Tensor:
    """Eq. 11: −mean over patches of cos(y_c, h_φ(h_t)). ``projected`` (B×D×h×w) is resized bilinearly to
    the token grid of ``target`` (B×D×g×g), the "linear expansion" that matches the spatial sizes."""
    if projected.shape[-2:] != target.shape[-2:]:
        projected = F.interpolate(projected, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return -F.cosine_similarity(projected.float(), target.float(), dim=1).mean()
