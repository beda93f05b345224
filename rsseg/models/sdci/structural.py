"""SDCI's structural branch (paper 002, §3.2, Eq. 7): DINO features of every layer and its last attention.

SDCI-v2 uses DINOv2 ViT-B/14 with registers (the released code's default), SDCI-v1 DINO ViT-B/8; both
load through transformers by hub id or local folder, or randomly from a config for tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# version → (hub id, input side: the released code's 532 px = 38 × 38 patches of 14, and 384 px = 48 × 48 of 8)
DINO_VERSIONS = {
    "v2": ("facebook/dinov2-with-registers-base", 532),
    "v1": ("facebook/dino-vitb8", 384),
}


def load_dino(name_or_path: str, pretrained: bool = True, config: dict | None = None) -> nn.Module:
    """A DINO ViT from transformers (DINOv2, DINOv2 with registers, or DINO v1's ViT) that can return its
    attention maps (eager attention), frozen in eval mode."""
    from rsseg.pretrained import load_transformers_model

    model = load_transformers_model(name_or_path, pretrained, config, "DINO", "sdci", attn_implementation="eager")
    return model.requires_grad_(False).eval()


class StructuralBranch(nn.Module):
    """``forward(image)`` takes an ImageNet-normalised B×3×H×W batch at the DINO input size and returns
    ``features`` (B×N×hw×D: every layer's patch tokens through the final LayerNorm, Eq. 7), ``attention``
    (B×hw×hw: the last layer's attention between patch tokens, averaged over heads) and the grid (h, w).
    The [CLS] token and any registers are dropped."""

    def __init__(self, dino: nn.Module) -> None:
        super().__init__()
        self.dino = dino
        config = dino.config
        self.patch_size = config.patch_size
        self.prefix = 1 + getattr(config, "num_register_tokens", 0)

    def train(self, mode: bool = True) -> StructuralBranch:
        return super().train(False)  # always frozen

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        grid = (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        extra = {"interpolate_pos_encoding": True} if self.dino.config.model_type == "vit" else {}
        last_attention = _last_attention_module(self.dino)
        if last_attention is None:  # transformers < 5: attention weights only with output_attentions
            out = self.dino(pixel_values=image, output_hidden_states=True, output_attentions=True, **extra)
            last = out.attentions[-1]
        else:  # only the last layer's weights are kept (all N: N × B × heads × (hw)² floats, ≈ 3 GB for v1)
            captured = []
            hook = last_attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
            try:
                out = self.dino(pixel_values=image, output_hidden_states=True, **extra)
            finally:
                hook.remove()
            [last] = captured
        layers = torch.stack(out.hidden_states[1:], 1)  # the N blocks' outputs (index 0: the embeddings)
        features = self.dino.layernorm(layers)[:, :, self.prefix:]
        attention = last.mean(1)[:, self.prefix:, self.prefix:]
        return {"features": features, "attention": attention, "grid": grid}


def _last_attention_module(dino: nn.Module) -> nn.Module | None:
    """The last block's attention module, which in transformers ≥ 5 returns (output, weights) on every call
    under eager attention; None where the model does not declare it (older transformers)."""
    kind = (getattr(dino, "_can_record_outputs", None) or {}).get("attentions")
    if not isinstance(kind, type):
        return None
    modules = [m for m in dino.modules() if isinstance(m, kind)]
    return modules[-1] if modules else None
