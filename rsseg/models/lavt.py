"""LAVT building blocks: text encoder, language-aware Swin (PWAM + language gate), top-down decoder.

LAVT ("Language-Aware Vision Transformer for Referring Image Segmentation", CVPR 2022) is the baseline of
DANet and of the RRSIS methods before it. Its released structure (``yz93/LAVT-RIS``,
docs/methods.md §2.1), rebuilt here on timm's Swin and transformers' encoders:

* **Language encoder**: a transformers encoder by hub id or local folder (BERT-base by default), its last
  hidden states as word features L_c (B×L×C_t, [CLS] and [SEP] included, padding masked) and the [CLS]
  state as sentence feature L_g. No pooler (LAVT sets ``pooler=None``).
* **Language-aware Swin**: after every stage's Swin blocks, the pixel-word attention module (PWAM) fuses the
  words into the pixels — vis = GELU(W_v x); lang = InstanceNorm(W_o · softmax_words(q·kᵀ/√C) v) with
  q = InstanceNorm(W_q x), k/v = W_k/W_v words; mm = GELU(W_m (vis ⊙ lang)) — and a language gate adds
  it back: x ← x + tanh-MLP(mm) ⊙ mm. The stage output given to the decoder is LayerNorm(mm), the
  gated x goes on to the next stage (timm's stages merge patches at their start, so "after the blocks,
  before patch merging" is "after each timm stage").
* **Swin blocks** run as in the original Swin code LAVT ships (:func:`swin_block`), on timm's modules: the
  normalised map is padded to whole windows *before* the cyclic shift, the shift mask is built on the
  padded grid, and every stage keeps its window size and shift however small the map (timm pads after
  shifting and shrinks windows to small maps; both change the features wherever padding happens, e.g.
  LAVT's 30² and 15² stages at 480² with window 12). Inputs of any size are padded to whole patches.
* **Decoder** (``SimpleDecoding``): top-down [F_4 ↑ ⊕ F_3] → 2×(conv3×3 + BN + ReLU), then ⊕ F_2, then
  ⊕ F_1, all at ``hidden`` channels (512), giving E at stride 4; LAVT's fixed 1×1 classifier follows.

Linear layers on token-last tensors stand in for LAVT's 1×1 Conv1d layers (the same maps). Parity with the
released forward pass is pinned by tests/test_parity_lavt.py; its checkpoints load through
``rsseg.models.released.lavt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import Tensor, nn

DEFAULT_SWIN = "swin_base_patch4_window12_384.ms_in22k"  # LAVT's swin_base_patch4_window12_384_22k.pth
DEFAULT_TEXT_ENCODER = "bert-base-uncased"


@dataclass
class TextFeatures:
    words: Tensor  # B×L×C_t, every token's last hidden state (L_c)
    sentence: Tensor  # B×C_t, the [CLS] state (L_g)
    mask: Tensor  # B×L bool, True for real tokens


class TextEncoder(nn.Module):
    """A transformers encoder (BERT family) giving word features and the [CLS] sentence feature.

    ``pretrained=True`` loads ``name_or_path`` (hub id or local folder) with its weights; ``False`` builds
    the same architecture randomly initialised from its config, or from ``config`` (a dict with
    ``model_type`` and the config's fields, e.g. a tiny BERT for tests) when given. Packaged offline
    copies of hub ids are used when installed (:mod:`rsseg.pretrained`). ``frozen`` keeps its weights fixed
    (and dropout off): not LAVT's setting, a cheaper option for small runs. ``train_layers=N`` trains only
    the first N transformer layers and freezes the embeddings and the layers above: LAVT's ``train.py``
    optimises ``encoder.layer[0:10]`` of BERT-base and nothing else of it (dropout stays on, as there).
    """

    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER, pretrained: bool = True,
                 config: dict | None = None, frozen: bool = False, train_layers: int | None = None) -> None:
        super().__init__()
        from rsseg.pretrained import load_transformers_model

        self.model = load_transformers_model(name_or_path, pretrained, config, "text encoder", "refer")
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # the pooled output is never used (LAVT: pooler=None)
        self.dim = self.model.config.hidden_size
        self.frozen = frozen
        if frozen:
            if train_layers is not None:
                raise ValueError("text encoder: frozen and train_layers exclude each other; set one of them")
            self.model.requires_grad_(False)
        elif train_layers is not None:
            self._train_first_layers(train_layers)

    def _train_first_layers(self, count: int) -> None:
        """Freeze the embeddings and every transformer layer from ``count`` on (LAVT: count 10 of 12)."""
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if layers is None:
            raise ValueError(f"text encoder {type(self.model).__name__}: train_layers needs a BERT-style "
                             "encoder.layer list")
        if not 0 <= count <= len(layers):
            raise ValueError(f"text encoder: train_layers must be in [0, {len(layers)}], got {count}")
        self.model.requires_grad_(False)
        for layer in layers[:count]:
            layer.requires_grad_(True)

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(mode and not self.frozen)  # a frozen encoder keeps dropout off

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return TextFeatures(words=hidden, sentence=hidden[:, 0], mask=attention_mask.bool())


def _instance_norm(x: Tensor) -> Tensor:
    """InstanceNorm1d (no affine) of B×N×C tokens: each channel normalised over the N positions."""
    return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)


class PixelWordAttention(nn.Module):
    """PWAM: fuse word features into every pixel; also returns each pixel's activation by the sentence.

    The attention logits are q·kᵀ/√C with C the full key width whatever the number of heads (LAVT's code
    and its paper; with LAVT's one head per stage this is the per-head √d too). The activation is the
    pixel's query times the [CLS] token's key, per head scaled by √d and averaged over heads: the
    text-to-visual activation DANet's affinity alignment thresholds (Eq. 2), obtained from projections
    PWAM already has, so it adds no parameters.
    """

    def __init__(self, dim: int, text_dim: int, heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"PWAM width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.vis_project = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.project_mm = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, text: TextFeatures) -> tuple[Tensor, Tensor]:
        """``x`` B×N×C pixels → (fused B×N×C, sentence activation B×N)."""
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        keep = text.mask[:, :, None].to(x.dtype)  # LAVT zeroes padded keys and values
        q = _instance_norm(self.query(x)).view(b, n, h, d).transpose(1, 2)
        k = (self.key(text.words) * keep).view(b, -1, h, d).transpose(1, 2)
        v = (self.value(text.words) * keep).view(b, -1, h, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2)  # B×h×N×L
        activation = scores[..., 0].mean(1) / math.sqrt(d)
        logits = (c**-0.5 * scores).masked_fill(~text.mask[:, None, None, :], -1e4)
        lang = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        lang = _instance_norm(self.out(lang))
        return self.project_mm(self.vis_project(x) * lang), activation


def language_gate(dim: int) -> nn.Sequential:
    """LAVT's ``res_gate``: how much of the fused feature each channel lets back into the visual stream."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())


def swin_block(block: SwinTransformerBlock, x: Tensor) -> Tensor:
    """One Swin block on B×H×W×C as the original Swin code runs it (LAVT's encoder), with timm's modules.

    The normalised map is padded at the bottom/right to whole windows, then cyclically shifted; the shift
    mask is built on the padded grid (so padded zeros take part in attention as in the original), and the
    crop follows the reverse shift. timm shifts before padding instead, which moves different tokens into
    each window wherever a map is not a whole number of windows.
    """
    b, h, w, c = x.shape
    (wh, ww), shift = block.window_size, tuple(block.shift_size)
    y = F.pad(block.norm1(x), (0, 0, 0, -w % ww, 0, -h % wh))
    hp, wp = y.shape[1:3]
    mask = None
    if any(shift):
        mask = block.get_attn_mask(y)  # the slices of the padded grid, as the original computes them
        y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = block.attn(window_partition(y, (wh, ww)).view(-1, wh * ww, c), mask=mask)
    y = window_reverse(windows.view(-1, wh, ww, c), (wh, ww), hp, wp)
    if any(shift):
        y = torch.roll(y, shifts=shift, dims=(1, 2))
    x = x + block.drop_path1(y[:, :h, :w])
    return x + block.drop_path2(block.mlp(block.norm2(x)))


class LanguageAwareSwin(nn.Module):
    """A timm Swin whose stages are each followed by PWAM and the language gate (LAVT's encoder).

    Returns the four fused, LayerNorm-ed stage outputs F_1..F_4 (B×C_i×H/2^{i+1}×W/2^{i+1}, sizes rounded
    up) and each stage's sentence activation (B×h_i×w_i). ``timm_kwargs`` go to ``timm.create_model`` (e.g.
    a small ``embed_dim``/``depths``/``num_heads``/``window_size`` for tests). The Swin is built with
    ``always_partition`` (a stage keeps its window and shift on maps smaller than the window, as the
    original) and accepts any input size (``img_size`` only sizes timm's bookkeeping); its blocks run
    through :func:`swin_block`. timm's patch merging concatenates the 2×2 neighbours in the original
    order, so original Swin weights load through timm's ``checkpoint_filter_fn`` unchanged.
    """

    def __init__(self, text_dim: int, backbone: str = DEFAULT_SWIN, pretrained: bool = True,
                 checkpoint: str | None = None, img_size: int = 480, drop_path_rate: float = 0.3,
                 pwam_heads: int = 1, **timm_kwargs) -> None:
        super().__init__()
        import timm

        extra = {"pretrained_cfg_overlay": {"file": checkpoint}} if checkpoint else {}
        swin = timm.create_model(backbone, pretrained=pretrained or checkpoint is not None, img_size=img_size,
                                 drop_path_rate=drop_path_rate, num_classes=0, always_partition=True,
                                 strict_img_size=False, **extra, **timm_kwargs)
        if not hasattr(swin, "layers") or not hasattr(swin, "patch_embed"):
            raise ValueError(f"{backbone!r} is not a timm Swin Transformer (no patch_embed/layers)")
        self.patch_embed = swin.patch_embed
        self.absolute_pos_embed = getattr(swin, "absolute_pos_embed", None)
        self.stages = nn.ModuleList(swin.layers)
        self.dims = [info["num_chs"] for info in swin.feature_info]
        self.fusions = nn.ModuleList(PixelWordAttention(d, text_dim, pwam_heads) for d in self.dims)
        self.gates = nn.ModuleList(language_gate(d) for d in self.dims)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)

    def forward(self, image: Tensor, text: TextFeatures) -> tuple[list[Tensor], list[Tensor]]:
        ph, pw = self.patch_embed.patch_size
        image = F.pad(image, (0, -image.shape[-1] % pw, 0, -image.shape[-2] % ph))  # whole patches
        x = self.patch_embed(image)  # B×H×W×C (timm Swin is channels-last)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed
        features, activations = [], []
        for stage, fuse, gate, norm in zip(self.stages, self.fusions, self.gates, self.norms, strict=True):
            x = stage.downsample(x)  # patch merging of the previous stage's gated x (identity at stage 1)
            for block in stage.blocks:
                x = swin_block(block, x)
            b, h, w, c = x.shape
            mm, activation = fuse(x.reshape(b, h * w, c), text)
            x = x + (gate(mm) * mm).view(b, h, w, c)
            features.append(norm(mm).transpose(1, 2).reshape(b, c, h, w))
            activations.append(activation.view(b, h, w))
        return features, activations


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TopDownDecoder(nn.Module):
    """LAVT's ``SimpleDecoding``: F_4 → F_1 fusion at ``hidden`` channels, output E at stride 4."""

    def __init__(self, dims: list[int], hidden: int = 512) -> None:
        super().__init__()
        c1, c2, c3, c4 = dims
        self.hidden = hidden
        self.fuse = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(cin, hidden), *_conv_bn_relu(hidden, hidden))
            for cin in (c4 + c3, hidden + c2, hidden + c1)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[3]
        for fuse, skip in zip(self.fuse, features[2::-1], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = fuse(torch.cat([x, skip], 1))
        return x
