"""SDCI (paper 002): training-free open-vocabulary segmentation, CLIP + DINO with CAF, BCDR and CSCP.

``SDCI(image)`` maps a B×3×H×W image in [0, 1] to per-pixel class probabilities B×K×H×W over the K
classes given to :meth:`SDCI.set_text`. Defaults are the paper's (§3, appendix A: λ₁ = 1, K = 30,
τ = 0.07, α = 0.9, T = 40, λ_C = 1, λ_D = 0.2, β = 0.1, w_in = 1, w_cross = 0.1, full 512² images); the
released code's choices where they differ are options (see the argument list).
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn

from rsseg.extras import require
from rsseg.models.sdci.cscp import CSCP, as_distribution
from rsseg.models.sdci.fusion import (
    align_attention,
    cross_fuse,
    diffuse,
    graph_features,
    grid_resample,
    knn_transition,
    zero_shot_scores,
)
from rsseg.models.sdci.semantic import SemanticBranch, clip_tokenizer, load_clip, text_embeddings
from rsseg.models.sdci.structural import DINO_VERSIONS, StructuralBranch, load_dino

SDCI_PACKAGES = ("open_clip", "transformers", "skimage")  # CLIP, DINO, CSCP's superpixels: rsseg[sdci]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_MEAN = (0.485, 0.456, 0.406)  # DINO and DINOv2 take ImageNet-normalised images
DINO_STD = (0.229, 0.224, 0.225)
SCORE_NORMALISATIONS = ("released", "presence")
CLIP_RESIZES = ("torch", "pil")


@contextlib.contextmanager
def _timed(record: dict | None, stage: str, device: torch.device):
    """Adds the stage's wall time (device synchronised) to ``record[stage]``; free when ``record`` is None."""
    if record is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    record[stage] = record.get(stage, 0.0) + time.perf_counter() - start


def _pil_bicubic(image: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The released preprocessing's resize: each [0, 1] image as 8-bit RGB, PIL bicubic to ``size`` (H, W),
    back to [0, 1] (what ``ToTensor`` gives)."""
    import numpy as np
    from PIL import Image

    pixels = (image.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [np.array(Image.fromarray(tile).resize((size[1], size[0]), Image.Resampling.BICUBIC)) for tile in pixels]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(image.device, image.dtype) / 255


class SDCI(nn.Module):
    """The whole SDCI pipeline (frozen, inference only).

    Args:
        clip_model, clip_pretrained: open_clip model name and tag or local file (``None``: random weights);
            ``clip_config`` builds a CLIP from a config instead (small models for tests). ``clip_quick_gelu``:
            QuickGELU as OpenAI's weights need (None: exactly for ``clip_pretrained="openai"``; set it True
            for OpenAI weights loaded by ``rsseg.models.released.sdci.load_released_checkpoint``).
        clip_size: short side CLIP sees, rounded half up to a multiple of its patch as the code (512 → 518,
            37 × 37 tokens). ``clip_resize``: ``"torch"`` (bicubic on the float image) or ``"pil"`` (the
            code's PIL bicubic on the 8-bit image, rounded back to 8 bits; on the CPU).
        dino_version: ``"v2"`` (DINOv2 ViT-B/14 with registers, 532² input; SDCI-v2) or ``"v1"`` (DINO
            ViT-B/8, 384²; SDCI-v1); ``dino_model`` (hub id or folder), ``dino_pretrained``, ``dino_config``
            and ``dino_size`` override the version's defaults.
        attention_fusion: Eq. 4–5 as the paper (``"paper"``) or the code's Sinkhorn variant (``"released"``).
        align: Align(·) of Eq. 8–9: ``"grid"`` (both token axes resampled, row mass kept), ``"released"``
            (the code's ``CLIP.resample``: both token axes resampled, no mass correction) or ``"flat"`` (the
            n×n matrix resized as one image: the code's unused ``resample1``); docs/methods.md §4.
        caf_weight: λ₁ of Eq. 8–9 (0: no cross injection). ``last_threshold``: the code's zeroing of last-level
            scores below this share of their class maximum (0: off; the paper is silent).
        logit_scale: CLIP's temperature for the zero-shot scores (the code's 50).
        knn, temperature, graph_features: Eq. 11–12's K, τ and node features (``"mean"`` over levels as
            Eq. 10, or the ``"last"`` level as the code). ``alpha``, ``diffusion_steps``: Eq. 13–15;
            ``diffusion_half``: run the diffusion in float16 as the released code (default float32).
        use_bcdr, use_cscp: the ablation's modules (Table 2); without CSCP the CLIP branch's map decides.
        score_normalization: turning the diffused scores into maps for CSCP (the paper is silent; the code
            upsamples, divides by the class maximum, multiplies by the class presence — the maximum of the
            fused scores — then min-max normalises each class, which cancels that factor: ``"released"``;
            ``"presence"`` keeps it).
        class_threshold: classes whose presence is at most this are zeroed (the code: 0 for ISPRS, 0.5 for
            LoveDA).
        cscp: keyword arguments of :class:`rsseg.models.sdci.cscp.CSCP` (λ_C, λ_D, β, weights, solver).
    """

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_config: dict | None = None,
        clip_quick_gelu: bool | None = None,
        clip_size: int = 512,
        clip_resize: str = "torch",
        dino_version: str = "v2",
        dino_model: str | None = None,
        dino_pretrained: bool = True,
        dino_config: dict | None = None,
        dino_size: int | None = None,
        attention_fusion: str = "paper",
        align: str = "grid",
        caf_weight: float = 1.0,
        last_threshold: float = 0.2,
        logit_scale: float = 50.0,
        knn: int = 30,
        temperature: float = 0.07,
        graph_features: str = "mean",
        alpha: float = 0.9,
        diffusion_steps: int = 40,
        diffusion_half: bool = False,
        use_bcdr: bool = True,
        use_cscp: bool = True,
        score_normalization: str = "released",
        class_threshold: float = 0.0,
        cscp: dict | None = None,
    ) -> None:
        super().__init__()
        for module in SDCI_PACKAGES:  # all of them up front: missing one fails here, not at the first tile
            require(module, "sdci", "SDCI")
        if dino_version not in DINO_VERSIONS:
            raise ValueError(f"dino_version must be one of {sorted(DINO_VERSIONS)}, got {dino_version!r}")
        if score_normalization not in SCORE_NORMALISATIONS:
            raise ValueError(f"score_normalization must be one of {SCORE_NORMALISATIONS}, "
                             f"got {score_normalization!r}")
        default_dino, default_size = DINO_VERSIONS[dino_version]
        self.clip = load_clip(clip_model, clip_pretrained, clip_config, clip_quick_gelu).requires_grad_(False)
        self.tokenizer = clip_tokenizer(clip_model)
        self.semantic = SemanticBranch(self.clip, attention_fusion)
        self.structural = StructuralBranch(load_dino(dino_model or default_dino, dino_pretrained, dino_config))
        if clip_resize not in CLIP_RESIZES:
            raise ValueError(f"clip_resize must be one of {CLIP_RESIZES}, got {clip_resize!r}")
        self.clip_size, self.dino_size, self.clip_resize = clip_size, dino_size or default_size, clip_resize
        self.align, self.caf_weight, self.last_threshold = align, caf_weight, last_threshold
        self.logit_scale = logit_scale
        self.knn, self.temperature, self.graph_features = knn, temperature, graph_features
        self.alpha, self.diffusion_steps, self.diffusion_half = alpha, diffusion_steps, diffusion_half
        self.use_bcdr, self.use_cscp = use_bcdr, use_cscp
        self.score_normalization, self.class_threshold = score_normalization, class_threshold
        self.cscp = CSCP(**(cscp or {}))
        self.register_buffer("text", torch.empty(0), persistent=False)
        self.num_outputs = 0
        for name, mean, std in (("clip_mean", CLIP_MEAN, CLIP_STD), ("dino_mean", DINO_MEAN, DINO_STD)):
            self.register_buffer(name, torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(name.replace("mean", "std"), torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> SDCI:
        return super().train(False)  # training-free: always in eval mode

    @torch.no_grad()
    def set_text(self, classes: list[list[str]], templates: list[str], distractors: list[list[str]] = ()) -> None:
        """The text bank: one embedding per class (its names averaged over ``templates``), then the
        ``distractors`` (e.g. the released code's "other") and the mean of the class embeddings, which only
        compete in the softmax (the code's background handling). Outputs are the ``classes`` only."""
        rows = text_embeddings(self.clip, self.tokenizer, [*classes, *distractors], templates)
        mean_class = F.normalize(rows[: len(classes)].mean(0, keepdim=True), dim=-1)
        self.text = torch.cat([rows, mean_class]).to(self.clip_mean.device)
        self.num_outputs = len(classes)

    def _clip_input(self, image: torch.Tensor) -> torch.Tensor:
        patch = self.semantic.patch_size
        scale = self.clip_size / min(image.shape[-2:])
        size = [max(1, int(s * scale / patch + 0.5)) * patch for s in image.shape[-2:]]  # half up, as the code
        if self.clip_resize == "pil":
            resized = _pil_bicubic(image, size)
        else:
            resized = F.interpolate(image, size=size, mode="bicubic", align_corners=False)
        return (resized - self.clip_mean) / self.clip_std

    def _dino_input(self, image: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(image, size=(self.dino_size, self.dino_size), mode="bicubic", align_corners=False)
        return (resized - self.dino_mean) / self.dino_std

    def branch_scores(self, image: torch.Tensor, timings: dict | None = None) -> dict:
        """CAF (Eq. 8–9) and, with ``use_bcdr``, BCDR (Eq. 10–15) on a [0, 1] image batch: each branch's
        scores (B×hw×K on the grid of the graph they diffused on), grids, and class presence (B×K).
        ``timings`` (a dict) receives each stage's seconds."""
        if self.num_outputs == 0:
            raise RuntimeError("SDCI has no classes: call set_text() first")
        with _timed(timings, "clip", image.device):
            semantic = self.semantic(self._clip_input(image))
        with _timed(timings, "dino", image.device):
            structural = self.structural(self._dino_input(image))
        for name, branch in (("CLIP", semantic), ("DINO", structural)):
            if branch["features"].shape[-1] != self.text.shape[-1]:
                raise ValueError(f"{name} features are {branch['features'].shape[-1]}-d but the text embeddings "
                                 f"{self.text.shape[-1]}-d: SDCI compares both with the text (ViT-L/14 and ViT-B)")
        with _timed(timings, "caf", image.device):
            out = self._cross_fusion(semantic, structural)
        if self.use_bcdr:
            with _timed(timings, "bcdr", image.device):
                self._diffuse(out, semantic, structural)
        return out

    def _cross_fusion(self, semantic: dict, structural: dict) -> dict:
        """Zero-shot scores of every level and Eq. 8–9; presence = each class's maximum fused score (BCDR
        replaces it by the maximum on the grid it diffuses on, as the code)."""
        clip_grid, dino_grid = semantic["grid"], structural["grid"]
        clip_levels = zero_shot_scores(semantic["features"], self.text, self.num_outputs, self.logit_scale)
        dino_levels = zero_shot_scores(structural["features"], self.text, self.num_outputs, self.logit_scale)
        clip_fused = cross_fuse(clip_levels, semantic["attention"],
                                align_attention(structural["attention"], dino_grid, clip_grid, self.align),
                                self.caf_weight, self.last_threshold)
        dino_fused = cross_fuse(dino_levels, structural["attention"],
                                align_attention(semantic["attention"], clip_grid, dino_grid, self.align),
                                self.caf_weight, self.last_threshold)
        return {"clip": clip_fused, "clip_grid": clip_grid, "dino": dino_fused, "dino_grid": dino_grid,
                "clip_presence": clip_fused.amax(1), "dino_presence": dino_fused.amax(1)}

    def _diffuse(self, out: dict, semantic: dict, structural: dict) -> None:
        """BCDR in place on CAF's ``out``: Eq. 13, CLIP's scores walk DINO's structural graph (on DINO's
        grid); Eq. 14, DINO's scores walk CLIP's semantic graph (on CLIP's grid). Each branch's presence is
        the maximum of its CAF scores resampled onto that grid, before diffusion (the code's
        ``seg_matched.amax``; the paper is silent)."""
        clip_grid, dino_grid = semantic["grid"], structural["grid"]
        clip_graph = knn_transition(graph_features(semantic["features"], self.graph_features), self.knn,
                                    self.temperature)
        dino_graph = knn_transition(graph_features(structural["features"], self.graph_features), self.knn,
                                    self.temperature)
        dtype = torch.float16 if self.diffusion_half else torch.float32
        for branch, graph, src, dst in (("clip", dino_graph, clip_grid, dino_grid),
                                        ("dino", clip_graph, dino_grid, clip_grid)):
            indices, weights = graph
            start = grid_resample(out[branch], src, dst)
            out[f"{branch}_presence"] = start.amax(1)
            start = start.to(dtype)
            out[branch] = diffuse(start, indices, weights.to(dtype), self.alpha, self.diffusion_steps).float()
        out["clip_grid"], out["dino_grid"] = dino_grid, clip_grid

    def score_maps(self, scores: torch.Tensor, grid: tuple[int, int], presence: torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
        """Token scores B×hw×K → B×K×H×W maps in [0, 1] for CSCP (see ``score_normalization``)."""
        maps = F.interpolate(scores.transpose(1, 2).unflatten(-1, grid), size=size, mode="bilinear",
                             align_corners=False)
        # the code's guards: + 1e-5 (ovs/main.py) and + 1e-6 (util/miou.py cam_to_label); docs/methods.md §4
        maps = maps / (maps.amax((-2, -1), keepdim=True) + 1e-5) * presence[..., None, None]
        if self.score_normalization == "released":
            maps = maps - maps.amin((-2, -1), keepdim=True)
            maps = maps / (maps.amax((-2, -1), keepdim=True) + 1e-6)
        return maps * (presence > self.class_threshold)[..., None, None]

    @torch.no_grad()
    def forward(self, image: torch.Tensor, timings: dict | None = None) -> torch.Tensor:
        """Class probabilities B×K×H×W for a B×3×H×W image batch in [0, 1]; ``timings`` (a dict) receives
        each stage's seconds (clip, dino, caf, bcdr, maps, cscp)."""
        size = tuple(image.shape[-2:])
        scores = self.branch_scores(image, timings)
        with _timed(timings, "maps", image.device):
            clip_map = self.score_maps(scores["clip"], scores["clip_grid"], scores["clip_presence"], size)
            dino_map = self.score_maps(scores["dino"], scores["dino_grid"], scores["dino_presence"], size)
        if not self.use_cscp:
            return as_distribution(clip_map)
        with _timed(timings, "cscp", image.device):  # CSCP turns the maps into distributions itself
            pixels = (image * 255).round().clamp(0, 255).to(torch.uint8)
            return self.cscp(pixels, clip_map, dino_map)
