"""SDCI's score fusion (paper 002): zero-shot scores, CAF's cross-attention fusion (§3.2, Eq. 8–9) and
BCDR's bidirectional cross-graph diffusion (§3.3, Eq. 10–15), batched on the scores' device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALIGN_MODES = ("grid", "released", "flat")
GRAPH_FEATURES = ("mean", "last")


def zero_shot_scores(features: torch.Tensor, text: torch.Tensor, keep: int, logit_scale: float = 50.0) -> torch.Tensor:
    """softmax(logit_scale · cos(feature, text)) over all C text rows, keeping the first ``keep`` columns
    (…×hw×D, C×D → …×hw×keep): the released code's scores, where any rows after the classes (background,
    mean of the classes) act only as softmax distractors."""
    cosine = F.normalize(features.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    return torch.softmax(logit_scale * cosine, dim=-1)[..., :keep]


def grid_resample(scores: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Token scores B×hw×K on grid ``src`` resampled bilinearly to grid ``dst``."""
    if src == dst:
        return scores
    maps = scores.transpose(1, 2).unflatten(-1, src)
    return F.interpolate(maps, size=dst, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


def align_attention(attention: torch.Tensor, src: tuple[int, int], dst: tuple[int, int],
                    mode: str = "grid") -> torch.Tensor:
    """Align(·) of Eq. 8–9: a B×n×n attention between the tokens of grid ``src`` as one between those of
    grid ``dst`` (docs/methods.md §4).

    * ``"released"``: the released ``CLIP.resample``: the key axis, then the query axis, each resampled
      bilinearly on its token grid (align_corners False), with no mass correction (rows then sum to about
      n_dst / n_src of the source's, so the aligned map weighs the other branch by the grids' size ratio).
    * ``"grid"`` (default): the same, scaled by n_src / n_dst so each row keeps its attention mass.
    * ``"flat"``: the n×n matrix resized as one image (``resample1`` in the code, defined but not called;
      it mixes tokens of neighbouring grid rows).
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"align mode must be one of {ALIGN_MODES}, got {mode!r}")
    n, m = src[0] * src[1], dst[0] * dst[1]
    if src == dst:
        return attention
    if mode == "flat":
        return F.interpolate(attention.unsqueeze(1), size=(m, m), mode="bilinear", align_corners=False)[:, 0]
    batch = attention.shape[0]
    keys = grid_resample(attention.reshape(batch * n, 1, n).transpose(1, 2), src, dst)  # (B·n)×m×1
    keys = keys.reshape(batch, n, m)
    queries = grid_resample(keys, src, dst)  # rows (queries) resampled: B×m×m
    return queries if mode == "released" else queries * (n / m)


def cross_fuse(level_scores: torch.Tensor, own: torch.Tensor, other: torch.Tensor, weight: float = 1.0,
               last_threshold: float = 0.2) -> torch.Tensor:
    """Eq. 8 (and 9 with the branches swapped): (A_own + λ₁·Align(A_other)) · S_N + mean(S_1…S_{N−1}).

    ``level_scores`` B×N×hw×K; ``own`` and ``other`` B×hw×hw already on this branch's grid. The last
    level's scores are zeroed below ``last_threshold`` × their per-class maximum first (the released
    code's step; the paper is silent; 0 turns it off).
    """
    last = level_scores[:, -1]
    if last_threshold > 0:
        last = last * (last >= last_threshold * last.amax(1, keepdim=True))
    return (own + weight * other) @ last + level_scores[:, :-1].mean(1)


def graph_features(features: torch.Tensor, which: str = "mean") -> torch.Tensor:
    """The node features of a branch's graph: Eq. 10's mean over levels (``"mean"``) or the last level
    (``"last"``, the released code's choice); B×N×hw×D → B×hw×D."""
    if which not in GRAPH_FEATURES:
        raise ValueError(f"graph features must be one of {GRAPH_FEATURES}, got {which!r}")
    return features.mean(1) if which == "mean" else features[:, -1]


def knn_transition(features: torch.Tensor, k: int = 30, temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 11–12: T = Norm_row(exp(S_K(F Fᵀ) / τ)) with F ℓ2-normalised and S_K keeping each row's K largest
    off-diagonal cosine similarities. Returned sparse: neighbour indices and weights, each B×n×K. (The
    released code divides by the row sum + 1e-6; with weights exp(cos/τ) that guard changes them by
    1e-6 / Σ exp(cos/τ), < 1e-6 relative whenever a row's nearest neighbour has cosine ≥ 0, and is left
    out; docs/methods.md §4.8.)"""
    unit = F.normalize(features.float(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    similarity.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    values, indices = similarity.topk(min(k, similarity.shape[-1] - 1), dim=-1)
    return indices, torch.softmax(values / temperature, dim=-1)


def diffuse(scores: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, alpha: float = 0.9,
            steps: int = 40) -> torch.Tensor:
    """Eq. 13–15: S⁽ᵗ⁾ = α·T·S⁽ᵗ⁻¹⁾ + (1 − α)·S' from S⁽⁰⁾ = S', ``steps`` times; T sparse (knn_transition)."""
    batch, n, k = indices.shape
    flat = (indices + torch.arange(batch, device=indices.device).view(-1, 1, 1) * n).reshape(-1)
    start, current = scores, scores
    for _ in range(steps):
        neighbours = current.reshape(batch * n, -1)[flat].reshape(batch, n, k, -1)
        current = alpha * (weights.unsqueeze(-1) * neighbours).sum(2) + (1 - alpha) * start
    return current
