"""D2LS: dynamic dictionary learning for remote-sensing segmentation (ICCV 2025), as a plain nn.Module.

Equation numbers refer to the paper (D2LS, ICCV 2025; docs/papers.md). The pipeline (Fig. 2):

* **Encoder** (§3.2.1): a timm backbone gives four stages F_1..F_4 (strides 4–32); each goes through a
  per-stage MLP to ``embed_dim`` and is interpolated to F_1's size (Eq. 9); an MLP over their
  concatenation gives E_0 (Eq. 10).
* **Dictionary generator** (§3.2.2): the static dictionary D_s holds one learnable class-ID embedding per
  class (Eq. 11). The modulator maps F_4 through an MLP, splits the channels in two halves, pools one
  globally by average and the other by max, each through its own MLP, concatenates, applies an MLP and
  a softmax over r = 4 entries (Eq. 12–13): A ∈ R^{N×r}. An MLP expands each class embedding into r
  entries and A mixes them: D_d = MLP(D_s) ⊗ A (Eq. 14).
* **Decoder** (§3.2.3): L stages of alternating cross-attention, the dictionary querying the image and
  then the image querying the updated dictionary (Eq. 15); the class logits are the product of the
  upsampled image features with the MLP-projected dictionary (Eq. 16).
* **Two branches** (Eq. 1): the static and the dynamic dictionary run through the same decoder during
  training; inference uses the dynamic branch.

Where the paper is silent, the released code (``XavierJiezou/D2LS``) decides: multi-head attention with
8 heads and internal width ``embed_dim / 2`` (SAM's two-way attention blocks, residual + LayerNorm),
SAM-style random Fourier positional encodings on the image tokens, the initial dictionary as the
tokens' positional encoding, and stochastic depth 0.5 in ConvNeXt-B (torchvision's default). Where they
differ, the paper is the default and the code's behaviour an option:

* ``head="interpolate"`` (Eq. 16: upsample E_L bilinearly, product with MLP(D)) vs ``"pixel_shuffle"``
  (code: two PixelShuffle(2) steps down to ``embed_dim/16`` channels, a 3-layer MLP to the same width).
  Bilinear interpolation is linear, so Eq. 16 is computed as the product at stride 4 followed by the
  upsampling of the N logit maps, which is the same number without an ``embed_dim``×H×W tensor.
* ``final_token_attention=False`` (Eq. 16 uses D_L) vs ``True`` (code: one more dictionary→image
  attention after the L stages).
* The code's blocks also create self-attention and MLP layers they never call; they are not built here.

Ablation switches (paper Tables 1–3, 9, Fig. 6): ``modulator`` (False: A uniform, D_d the mean of the r
expanded entries, independent of the image), ``aggregator`` (False: E_0 = Σ_i F'_i, no learned fusion —
our reading, the paper does not say what replaces it), ``num_stages`` (0 = without interaction),
``branches`` (``"both"``, ``"static"``, ``"dynamic"``), ``embed_dim``, ``backbone``/``frozen``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["D2LS", "D2LSOutput", "dictionary_contrastive_loss"]

Branches = Literal["both", "static", "dynamic"]
HEADS = ("interpolate", "pixel_shuffle")


@dataclass
class D2LSOutput:
    """Training outputs: logits of each branch that ran (B×N×H×W) and the dynamic dictionary (B×N×C')."""

    dynamic_logits: Tensor | None
    static_logits: Tensor | None
    dynamic_dictionary: Tensor | None


def dictionary_contrastive_loss(dictionary: Tensor, eps: float = 1e-6) -> Tensor:
    """L_con = L_intra / (L_inter + ε) over a batch of dictionaries B×N×C' (Eq. 5–8).

    L_intra (Eq. 6) is the mean over samples b and classes i of ‖D^(b,i) − μ_i‖², with μ_i the batch
    mean of class i's embedding (Eq. 7); L_inter (Eq. 8) is the mean over class pairs i < j of
    ‖μ_i − μ_j‖². A batch of one has L_intra = 0.
    """
    if dictionary.ndim != 3 or dictionary.shape[1] < 2:
        raise ValueError(f"expected B×N×C' dictionaries with N ≥ 2 classes, got {tuple(dictionary.shape)}")
    d = dictionary.float()
    centres = d.mean(0)  # N×C'
    intra = (d - centres).pow(2).sum(-1).mean()
    n = centres.shape[0]
    pair_sq = (centres[:, None, :] - centres[None, :, :]).pow(2).sum(-1)  # N×N, symmetric, zero diagonal
    inter = pair_sq.triu(1).sum() / (n * (n - 1) / 2)
    return intra / (inter + eps)


class RandomFourierPositions(nn.Module):
    """Positional encoding of an h×w grid by random Fourier features (as SAM's prompt encoder).

    Coordinates of pixel centres in [-1, 1] are projected by a fixed Gaussian 2×(C/2) matrix, scaled by
    2π, and encoded as [sin, cos]. The matrix is a buffer, so it is saved with the weights.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"positional encoding needs an even dimension, got {dim}")
        self.register_buffer("gaussian", scale * torch.randn(2, dim // 2))

    def forward(self, h: int, w: int) -> Tensor:
        """1×(h·w)×C encoding, rows first."""
        device, dtype = self.gaussian.device, self.gaussian.dtype
        y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), -1)  # h×w×2 as (x, y)
        proj = (2 * grid - 1) @ self.gaussian * (2 * math.pi)
        return torch.cat((proj.sin(), proj.cos()), -1).reshape(1, h * w, -1)


class CrossAttention(nn.Module):
    """Multi-head attention with projections to ``dim / downsample`` (SDPA, so fused kernels where available)."""

    def __init__(self, dim: int, num_heads: int = 8, downsample: int = 2) -> None:
        super().__init__()
        inner = dim // downsample
        if inner % num_heads:
            raise ValueError(f"attention width {inner} (= {dim}/{downsample}) is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(QKᵀ/√d) V, Eq. 15
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class InteractionStage(nn.Module):
    """One stage of Eq. 15: the dictionary queries the image, then the image queries the new dictionary."""

    def __init__(self, dim: int, num_heads: int, downsample: int) -> None:
        super().__init__()
        self.dict_to_image = CrossAttention(dim, num_heads, downsample)
        self.dict_norm = nn.LayerNorm(dim)
        self.image_to_dict = CrossAttention(dim, num_heads, downsample)
        self.image_norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, image: Tensor, token_pe: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        keys = image + image_pe
        tokens = self.dict_norm(tokens + self.dict_to_image(tokens + token_pe, keys, image))
        image = self.image_norm(image + self.image_to_dict(keys, tokens + token_pe, tokens))
        return tokens, image


class Interactor(nn.Module):
    """L interaction stages (Eq. 15), optionally followed by the released code's final dictionary update."""

    def __init__(self, dim: int, num_stages: int, num_heads: int, downsample: int, final_token_attention: bool):
        super().__init__()
        self.stages = nn.ModuleList(InteractionStage(dim, num_heads, downsample) for _ in range(num_stages))
        self.final = CrossAttention(dim, num_heads, downsample) if final_token_attention else None
        self.final_norm = nn.LayerNorm(dim) if final_token_attention else None

    def forward(self, dictionary: Tensor, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        tokens, token_pe = dictionary, dictionary
        for stage in self.stages:
            tokens, image = stage(tokens, image, token_pe, image_pe)
        if self.final is not None:
            tokens = self.final_norm(tokens + self.final(tokens + token_pe, image + image_pe, image))
        return tokens, image


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Backbone stages → per-stage MLP → interpolation to stride 4 (Eq. 9) → aggregator MLP (Eq. 10).

    The aggregator is a linear map of the concatenation, i.e. Σ_i W_i·F'_i with W_i its i-th column
    block, and 1×1 maps commute with bilinear interpolation. So each W_i is applied before the
    interpolation, at its stage's resolution (``fold_aggregator``, the default): the same E_0 (up to
    float rounding) without the 4·C'-channel concatenation at stride 4, and ≈ 3 GMAC less at 512².
    """

    def __init__(self, backbone: nn.Module, dim: int, aggregator: bool, fold_aggregator: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.feature_info.channels()
        if len(channels) != 4:
            raise ValueError(f"D2LS needs four backbone stages, the backbone gives {len(channels)}")
        self.stage_mlps = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)  # a Linear per pixel
        self.aggregator = nn.Conv2d(4 * dim, dim, 1, bias=False) if aggregator else None
        self.fold_aggregator = fold_aggregator

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """E_0 (B×C'×H/4×W/4) and the highest-level backbone feature F_4 for the modulator."""
        features = self.backbone(image)
        size = features[0].shape[-2:]
        mapped = [mlp(f) for mlp, f in zip(self.stage_mlps, features, strict=True)]
        if self.aggregator is None:
            return sum(_resize(m, size) for m in mapped), features[-1]
        if not self.fold_aggregator:
            return self.aggregator(torch.cat([_resize(m, size) for m in mapped], 1)), features[-1]
        blocks = self.aggregator.weight.chunk(4, dim=1)
        fused = sum(_resize(F.conv2d(m, w), size) for m, w in zip(mapped, blocks, strict=True))
        return fused, features[-1]


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Modulator(nn.Module):
    """Attention map A (B×N×r) from F_4 (Eq. 12–13): MLP, split, GAP/GMP branches, MLP, softmax over r."""

    def __init__(self, in_channels: int, dim: int, num_classes: int, ratio: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the modulator splits embed_dim in two halves; {dim} is odd")
        self.num_classes, self.ratio = num_classes, ratio
        self.proj = nn.Conv2d(in_channels, dim, 1)
        self.avg_mlp = nn.Linear(dim // 2, dim // 2)
        self.max_mlp = nn.Linear(dim // 2, dim // 2)
        self.fuse = _mlp([dim, 2 * dim, num_classes * ratio])

    def forward(self, f4: Tensor) -> Tensor:
        # The released code pools the halves the other way round (first half max, [max, avg]); the same
        # function up to a permutation of channels, which its converter applies (docs/methods.md §1.7).
        f_avg, f_max = self.proj(f4).chunk(2, dim=1)
        a_avg = self.avg_mlp(f_avg.mean((2, 3)))
        a_max = self.max_mlp(f_max.amax((2, 3)))
        logits = self.fuse(torch.cat((a_avg, a_max), 1)).view(-1, self.num_classes, self.ratio)
        return logits.softmax(-1)


class DictionaryGenerator(nn.Module):
    """Static dictionary (Eq. 11) and the dynamic dictionary D_d = MLP(D_s) ⊗ A (Eq. 14)."""

    def __init__(self, num_classes: int, dim: int, ratio: int, modulator: Modulator | None) -> None:
        super().__init__()
        self.num_classes, self.dim, self.ratio = num_classes, dim, ratio
        self.static = nn.Embedding(num_classes, dim)
        self.expand = nn.Linear(dim, ratio * dim)
        self.modulator = modulator

    def forward(self, f4: Tensor, dynamic: bool = True) -> tuple[Tensor, Tensor | None]:
        """Static (B×N×C') and dynamic (B×N×C', None unless ``dynamic``) dictionaries."""
        b = f4.shape[0]
        static = self.static.weight
        if not dynamic:
            return static.expand(b, -1, -1), None
        entries = self.expand(static).view(self.num_classes, self.ratio, self.dim)
        if self.modulator is None:
            dynamic = entries.mean(1).expand(b, -1, -1)
        else:
            dynamic = torch.einsum("bnr,nrc->bnc", self.modulator(f4), entries)
        return static.expand(b, -1, -1), dynamic


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a B×C×H×W map (ε = 1e-6 as the released head's LayerNorm2d)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SegmentationHead(nn.Module):
    """Class logits from the final image features and dictionary (Eq. 16)."""

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
        self.kind = kind
        if kind == "pixel_shuffle":
            if dim % 16:
                raise ValueError(f"the pixel-shuffle head needs embed_dim divisible by 16, got {dim}")
            self.upscale = nn.Sequential(
                nn.PixelShuffle(2), LayerNorm2d(dim // 4), nn.GELU(), nn.PixelShuffle(2), nn.GELU()
            )
            self.dict_mlp = _mlp([dim, dim, dim, dim // 16])
        else:
            self.dict_mlp = _mlp([dim, dim, dim, dim])

    def forward(self, tokens: Tensor, image: Tensor, size: tuple[int, int]) -> Tensor:
        """``tokens`` B×N×C', ``image`` B×C'×h×w → logits B×N×H×W at ``size``."""
        weights = self.dict_mlp(tokens)
        if self.kind == "pixel_shuffle":
            image = self.upscale(image)
        logits = torch.einsum("bnc,bchw->bnhw", weights, image)
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class D2LS(nn.Module):
    """Dynamic dictionary learning network (see the module docstring for the paper/code choices).

    Args:
        num_classes: N, the number of classes (one dictionary entry each).
        backbone: timm model name with four ``features_only`` stages (default ConvNeXt-B, FB IN-1k
            weights; the released code used torchvision's ``IMAGENET1K_V1`` ConvNeXt-B).
        pretrained: load the backbone's pretrained weights through timm (downloads by model id).
        backbone_checkpoint: a local weight file for the backbone (timm ``pretrained_cfg_overlay``).
        frozen: freeze the backbone (Table 9's "frozen" setting); it then stays in eval mode.
        drop_path_rate: backbone stochastic depth (0.5 as torchvision's ConvNeXt-B in the released code).
        in_channels: image bands.
        embed_dim: C', the class-ID embedding size (256; Fig. 6).
        num_stages: L, interaction stages (3; 2 on Vaihingen; 0 = without interaction, Table 3).
        num_heads, attention_downsample: attention heads and width reduction (8, 2: released code).
        dictionary_ratio: r, entries per class mixed by the modulator (4).
        modulator, aggregator: Table 3 switches.
        branches: ``"both"`` (train static and dynamic, infer dynamic), ``"static"`` or ``"dynamic"``
            (one branch, used for training and inference; Table 1).
        head: ``"interpolate"`` (paper) or ``"pixel_shuffle"`` (released code).
        final_token_attention: the released code's extra dictionary update after the L stages.
        positional_encoding: add random Fourier positions to the image tokens' keys and queries.
        fold_aggregator: apply Eq. 10's column blocks per stage before the interpolation (same E_0, fewer
            MACs; see ``Encoder``); False concatenates as the released code (its MAC count, Table 10).
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. ``depths``/``dims`` for a tiny ConvNeXt).

    ``rsseg.models.released.d2ls.load_released_checkpoint`` loads the released Lightning checkpoints into
    the model built with ``head="pixel_shuffle", final_token_attention=True`` (docs/methods.md §1).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "convnext_base.fb_in1k",
        pretrained: bool = True,
        backbone_checkpoint: str | None = None,
        frozen: bool = False,
        drop_path_rate: float = 0.5,
        in_channels: int = 3,
        embed_dim: int = 256,
        num_stages: int = 3,
        num_heads: int = 8,
        attention_downsample: int = 2,
        dictionary_ratio: int = 4,
        modulator: bool = True,
        aggregator: bool = True,
        branches: Branches = "both",
        head: str = "interpolate",
        final_token_attention: bool = False,
        positional_encoding: bool = True,
        fold_aggregator: bool = True,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"D2LS needs at least 2 classes, got {num_classes}")
        if branches not in ("both", "static", "dynamic"):
            raise ValueError(f"branches must be 'both', 'static' or 'dynamic', got {branches!r}")
        if num_stages < 0:
            raise ValueError(f"num_stages must be ≥ 0, got {num_stages}")
        self.num_classes, self.branches, self.frozen = num_classes, branches, frozen
        extra = {"pretrained_cfg_overlay": {"file": backbone_checkpoint}} if backbone_checkpoint else {}
        net = timm.create_model(
            backbone, pretrained=pretrained or backbone_checkpoint is not None, features_only=True,
            out_indices=(0, 1, 2, 3), in_chans=in_channels, drop_path_rate=drop_path_rate, **extra,
            **(backbone_kwargs or {}),
        )
        if frozen:
            net.requires_grad_(False)
        self.encoder = Encoder(net, embed_dim, aggregator, fold_aggregator)
        c4 = net.feature_info.channels()[-1]
        self.generator = DictionaryGenerator(
            num_classes, embed_dim, dictionary_ratio,
            Modulator(c4, embed_dim, num_classes, dictionary_ratio) if modulator else None,
        )
        self.positions = RandomFourierPositions(embed_dim) if positional_encoding else None
        self.interactor = Interactor(embed_dim, num_stages, num_heads, attention_downsample, final_token_attention)
        self.head = SegmentationHead(embed_dim, head)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def train(self, mode: bool = True) -> D2LS:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def decode(self, dictionary: Tensor, fused: Tensor, size: tuple[int, int]) -> Tensor:
        """The shared decoder D(dictionary, E_0) of Eq. 1: interaction (Eq. 15) and head (Eq. 16)."""
        b, c, h, w = fused.shape
        image = fused.flatten(2).transpose(1, 2)  # B×hw×C'
        pe = self.positions(h, w).to(image.dtype) if self.positions is not None else torch.zeros_like(image[:1])
        tokens, image = self.interactor(dictionary, image, pe)
        return self.head(tokens, image.transpose(1, 2).reshape(b, c, h, w), size)

    def forward_branches(self, image: Tensor) -> D2LSOutput:
        """Both training branches (Eq. 1) from one encoder pass; only the enabled ones are decoded."""
        fused, f4 = self.encoder(image)
        static, dynamic = self.generator(f4, dynamic=self.branches != "static")
        size = image.shape[-2:]
        return D2LSOutput(
            dynamic_logits=self.decode(dynamic, fused, size) if self.branches != "static" else None,
            static_logits=self.decode(static, fused, size) if self.branches != "dynamic" else None,
            dynamic_dictionary=dynamic,
        )

    def forward(self, image: Tensor) -> Tensor:
        """Inference (§3.1.2): logits B×N×H×W of the dynamic branch (of the static one if it is the only one)."""
        fused, f4 = self.encoder(image)
        static, dynamic = self.generator(f4, dynamic=self.branches != "static")
        return self.decode(static if self.branches == "static" else dynamic, fused, image.shape[-2:])
