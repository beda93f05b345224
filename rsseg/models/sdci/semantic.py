"""SDCI's semantic branch (paper 002, §3.2, Eq. 1–6): CLIP's image encoder, CLIPer-style.

Blocks 1…N−1 run unchanged while their attention maps (Eq. 3) are collected; the last block is replaced
by the fused attention of Eq. 5 applied, without residual or MLP, to the normalised input of every block
(the multi-level features F_1…F_N), each then projected into CLIP's joint space (``ln_post``, ``proj``).

Which tokens and which norm (released SDCI at the pinned commit, ``modified_clip/model.py``,
``forward_transformer``, from CLIPer's ``modify()`` with ``fuse_feature=True``): the intermediate features are
block ℓ's own ``ln_1`` of its input tokens (ℓ = 0…N−2; level 0 is the embedding after ``ln_pre``) plus the last
block's input x, and *every* feature then passes through the last block's ``ln_1`` before its attention — so
levels 0…N−2 are normalised twice (their own ``ln_1``, then the last block's), level N−1 once. The attention is
applied with no residual and no MLP, then ``ln_post`` and ``proj``: N levels (24 for ViT-L).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsseg.extras import require

ATTENTION_FUSIONS = ("paper", "released")


def load_clip(model_name: str = "ViT-L-14", pretrained: str | None = "openai", config: dict | None = None,
              quick_gelu: bool | None = None) -> nn.Module:
    """An open_clip CLIP model: ``model_name`` with ``pretrained`` (an open_clip tag such as ``"openai"``
    or a local checkpoint file; None = random weights), or a CLIP built from ``config`` (``embed_dim``,
    ``vision_cfg``, ``text_cfg``: small random models for tests). Returned in eval mode.

    ``quick_gelu``: OpenAI's CLIP weights were trained with QuickGELU (the released SDCI loads them through
    ``clip.load``); open_clip's ``ViT-L-14`` config uses nn.GELU unless forced. None = QuickGELU exactly when
    ``pretrained == "openai"`` (for ``config``: the config's own ``quick_gelu``)."""
    open_clip = require("open_clip", "sdci", "SDCI")
    if config is not None:
        config = dict(config) if quick_gelu is None else {**config, "quick_gelu": quick_gelu}
        model = open_clip.model.CLIP(**config)
    else:
        force = pretrained == "openai" if quick_gelu is None else quick_gelu
        model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=force)
    return model.eval()


def clip_tokenizer(model_name: str = "ViT-L-14"):
    open_clip = require("open_clip", "sdci", "SDCI")
    return open_clip.get_tokenizer(model_name)


@torch.no_grad()
def text_embeddings(clip: nn.Module, tokenizer, classes: list[list[str]], templates: list[str]) -> torch.Tensor:
    """One unit vector per class (C×D): each name in every template, encoded, L2-normalised and averaged
    over templates, then over the class's names (synonyms), and normalised again."""
    device = next(clip.parameters()).device
    rows = []
    for names in classes:
        per_name = []
        for name in names:
            tokens = tokenizer([template.format(name) for template in templates]).to(device)
            embedded = F.normalize(clip.encode_text(tokens).float(), dim=-1)
            per_name.append(F.normalize(embedded.mean(0), dim=-1))
        rows.append(F.normalize(torch.stack(per_name).mean(0), dim=-1))
    return torch.stack(rows)


def fuse_attention(summed: torch.Tensor, layers: int) -> torch.Tensor:
    """Eq. 4–5's attention prior from the sum of the first N−1 layers' maps (B×h×T×T): A_avg = sum / (N−1),
    symmetrised, minus its mean μ, ReLU, ℓ1-normalised per row."""
    average = summed / layers
    symmetric = (average + average.transpose(-1, -2)) / 2
    shifted = (symmetric - symmetric.mean(dim=(-2, -1), keepdim=True)).clamp_min(0)
    return shifted / shifted.sum(-1, keepdim=True).clamp_min(torch.finfo(shifted.dtype).tiny)


def sinkhorn_pass(a: torch.Tensor) -> torch.Tensor:
    """One Sinkhorn pass: columns, then rows normalised to sum 1."""
    tiny = torch.finfo(a.dtype).tiny
    a = a / a.sum(-2, keepdim=True).clamp_min(tiny)
    return a / a.sum(-1, keepdim=True).clamp_min(tiny)


def released_prior(balanced: torch.Tensor) -> torch.Tensor:
    """The released code's prior from the Sinkhorn-balanced summed maps: symmetrised, minus the column
    mean, clamped at 0, rows normalised (its level n sees n passes: its in-place update adds one per level)."""
    a = (balanced + balanced.transpose(-1, -2)) / 2
    a = (a - a.mean(-2, keepdim=True)).clamp_min(0)
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


class SemanticBranch(nn.Module):
    """CLIP ViT features at every level and the branch's attention for CAF.

    ``forward(image)`` takes a CLIP-normalised B×3×H×W batch (H, W multiples of the patch size; the
    position embedding is resized bilinearly to the grid) and returns ``features`` (B×N×hw×D: the N levels'
    patch tokens in CLIP's joint space), ``attention`` (B×hw×hw, patch tokens only: Eq. 6, the head average
    of A_avg; with ``fusion="released"`` the last level's fused map, as the code) and the grid (h, w).

    ``fusion``: ``"paper"`` (Eq. 4–5, one prior for every level) or ``"released"`` (the code's Sinkhorn
    passes, one more per level, and column-mean centring).
    """

    def __init__(self, clip: nn.Module, fusion: str = "paper") -> None:
        super().__init__()
        if fusion not in ATTENTION_FUSIONS:
            raise ValueError(f"fusion must be one of {ATTENTION_FUSIONS}, got {fusion!r}")
        visual = clip.visual
        blocks = visual.transformer.resblocks
        if not all(isinstance(block.attn, nn.MultiheadAttention) for block in blocks):
            raise ValueError("SDCI's semantic branch needs a standard open_clip ViT (nn.MultiheadAttention blocks)")
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("SDCI's semantic branch expects open_clip's batch-first transformer")
        self.visual = visual
        self.fusion = fusion

    @property
    def patch_size(self) -> int:
        return self.visual.conv1.kernel_size[0]

    def _embed(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        visual = self.visual
        x = visual.conv1(image)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._position_embedding(grid).to(x.dtype)
        return visual.ln_pre(x), grid

    def _position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        table = self.visual.positional_embedding
        side = math.isqrt(table.shape[0] - 1)
        if (side, side) == grid:
            return table
        patches = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=grid, mode="bilinear", align_corners=False)
        return torch.cat([table[:1], patches.to(table.dtype).flatten(2)[0].T])

    @staticmethod
    def _heads(block: nn.Module, tokens: torch.Tensor, which: slice) -> torch.Tensor:
        """Rows ``which`` of the block's in-projection applied to ``tokens``, split into heads (…×h×T×d)."""
        attn = block.attn
        projected = F.linear(tokens, attn.in_proj_weight[which], attn.in_proj_bias[which])
        return projected.unflatten(-1, (attn.num_heads, -1)).transpose(-3, -2)

    def _block(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ordinary block (Eq. 1–2), also returning its attention map (Eq. 3) and normalised input."""
        width = x.shape[-1]
        normed = block.ln_1(x)
        q = self._heads(block, normed, slice(0, width))
        k = self._heads(block, normed, slice(width, 2 * width))
        v = self._heads(block, normed, slice(2 * width, 3 * width))
        attention = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)
        mixed = (attention @ v).transpose(-3, -2).flatten(-2)
        x = x + block.ls_1(block.attn.out_proj(mixed))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, attention, normed

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        blocks = self.visual.transformer.resblocks
        x, grid = self._embed(image)
        summed, levels = None, []
        for block in blocks[:-1]:
            x, attention, normed = self._block(block, x)
            summed = attention if summed is None else summed + attention
            levels.append(normed)
        last = blocks[-1]
        levels = [last.ln_1(level) for level in [*levels, x]]  # the released code's second ln_1 (docstring)
        layers = len(blocks) - 1
        values = self._heads(last, torch.stack(levels, 1), slice(2 * x.shape[-1], 3 * x.shape[-1]))  # B×N×h×T×d
        if self.fusion == "paper":
            prior = fuse_attention(summed, layers)
            mixed = prior.unsqueeze(1) @ values
            effective = (summed / layers).mean(1)
        else:  # one level at a time: N priors of h×T×T would not fit in memory at ViT-L size
            balanced, mixed = summed, []
            for level in range(len(levels)):
                balanced = sinkhorn_pass(balanced)
                prior = released_prior(balanced)
                mixed.append(prior @ values[:, level])
            mixed = torch.stack(mixed, 1)
            effective = prior.mean(1)
        features = last.attn.out_proj(mixed.transpose(-3, -2).flatten(-2))
        features = self.visual.ln_post(features)
        if self.visual.proj is not None:
            features = features @ self.visual.proj
        return {"features": features[:, :, 1:], "attention": effective[:, 1:, 1:], "grid": grid}
