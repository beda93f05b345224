"""IDGBR: boundary refinement of a coarse label map by latent diffusion (paper 004, §III).

The parts, each named after the paper:

* :class:`LabelEmbedding` — the shallow label encoder E_e (an embedding table to 3 channels, Eq. 12:
  E = 2·sigmoid(E_0) − 1) and decoder D_e (two 1×1 convolutions 3 → 128 → K), trained on their own.
* the frozen Stable Diffusion VAE (E_I, D_I; with E_e/D_e it forms E_S, D_S of §III-A);
* the trainable denoising UNet ε_θ (diffusers ``UNet2DConditionModel``, SD v1.5 architecture) on the
  noisy label latent z_t alone;
* :class:`ConditionalGuidanceNetwork` (§III-C) — a frozen pseudo-siamese copy of the UNet's encoder
  (12 down blocks + mid) applied to c_I = E_I(x) and c_r = E_S(y_r), and L = 13
  :class:`GuidanceModule` (zero 1×1 convolution, Eq. 8, then cross-attention, Eq. 9–10; or the released
  code's :class:`ReleasedGuidanceModule`) whose outputs f_g are added to the UNet's long skip connections
  and mid block;
* :func:`sample_timesteps` (uniform or cubic, Eq. 13) and DDIM sampling with classifier-free guidance
  (Algorithm 2) in :meth:`IDGBR.sample`.

The UNet is run in two halves (:func:`unet_encode`, :func:`unet_decode`) so that f_zt is computed once
per step: the released code runs the UNet encoder twice per step (once for the guidance modules, once
inside the full forward), and recomputes the frozen condition features at every sampling step; here
they are computed once per image, and the guided and unguided CFG branches share one encoder pass. The
results are the same (tests/test_parity_idgbr.py checks one prediction and a sampling run against the
released code; docs/methods.md §3.8).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsseg.extras import require

logger = logging.getLogger(__name__)

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Stable Diffusion v1.5's UNet and VAE (their diffusers configs), for random-weight builds of the full size.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# Stable Diffusion v1.5's noise schedule (its scheduler/scheduler_config.json), for random-weight builds.
SD15_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                 "num_train_timesteps": 1000}
PROMPT_TOKENS = 77  # CLIP's context length: the empty prompt's embedding is 77 × cross_attention_dim


# --- label embedding (E_e, D_e) -------------------------------------------------------------------
class LabelEmbedding(nn.Module):
    """E_e and D_e of §III-A: class index → 3-channel code in [−1, 1] (Eq. 12) and back to K logits.

    ``noise_std`` is the Gaussian noise added to the code before decoding in training (the paper's
    variance 0.25 → std 0.5; the released code uses 0.15). ``train_table=False`` keeps the embedding
    table at its N(0, 1) initialisation as the released code does (its ``encode`` runs under no_grad);
    the paper learns it.
    """

    def __init__(self, num_classes: int, channels: int = 3, hidden: int = 128, noise_std: float = 0.5,
                 train_table: bool = True) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
        self.num_classes = num_classes
        self.noise_std = noise_std
        self.table = nn.Embedding(num_classes, channels)
        self.table.weight.requires_grad_(train_table)
        self.decoder = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, num_classes, 1))

    def encode(self, labels: Tensor) -> Tensor:
        """B×H×W class indices → B×C×H×W code, Eq. 12."""
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {int(labels.min())}…"
                             f"{int(labels.max())} (replace ignored pixels before encoding)")
        return 2 * torch.sigmoid(self.table(labels).permute(0, 3, 1, 2)) - 1

    def decode(self, code: Tensor) -> Tensor:
        """B×C×H×W code → B×K×H×W logits."""
        return self.decoder(code)

    def forward(self, labels: Tensor) -> Tensor:
        """Logits of the (noised, in training) code of ``labels``: the embedding network's own objective."""
        code = self.encode(labels)
        if self.training and self.noise_std > 0:
            code = code + self.noise_std * torch.randn_like(code)
        return self.decode(code)


# --- the UNet in two halves -----------------------------------------------------------------------
@dataclass
class UNetFeatures:
    """The encoder half's outputs: the 12 skip features (f_zt of §III-C), the mid-block output and the
    time embedding the decoder half needs."""

    skips: tuple[Tensor, ...]
    mid: Tensor
    emb: Tensor


def _check_plain_unet(unet) -> None:
    cfg = unet.config
    extras = {k: cfg.get(k) for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim")}
    if any(v is not None for v in extras.values()) or cfg.get("center_input_sample"):
        raise ValueError(f"IDGBR needs a Stable-Diffusion-style UNet without extra embeddings, got {extras}")


def unet_encode(unet, sample: Tensor, timestep: Tensor | int, context: Tensor) -> UNetFeatures:
    """Steps 1–4 of ``UNet2DConditionModel.forward`` (time embedding, conv_in, down blocks, mid block)."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    hidden = unet.conv_in(sample)
    skips: tuple[Tensor, ...] = (hidden,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context)
        else:
            hidden, res = block(hidden_states=hidden, temb=emb)
        skips += res
    if getattr(unet.mid_block, "has_cross_attention", False):
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=context)
    else:
        hidden = unet.mid_block(hidden, emb)
    return UNetFeatures(skips, hidden, emb)


def unet_decode(unet, features: UNetFeatures, context: Tensor, residuals: list[Tensor] | None = None) -> Tensor:
    """Steps 5–6 of ``UNet2DConditionModel.forward``; ``residuals`` (12 skips + mid) are added to the
    skip connections and the mid-block output first, as diffusers' ControlNet residuals are."""
    skips, hidden = features.skips, features.mid
    if residuals is not None:
        skips = tuple(s + r for s, r in zip(skips, residuals[:-1], strict=True))
        hidden = hidden + residuals[-1]
    factor = 2**unet.num_upsamplers
    forward_size = any(dim % factor for dim in skips[0].shape[-2:])
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and forward_size:
            upsample_size = skips[-1].shape[2:]
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        hidden = block(hidden_states=hidden, temb=features.emb, res_hidden_states_tuple=res,
                       upsample_size=upsample_size, **kwargs)
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)


def skip_channels(unet) -> list[int]:
    """Channels of the 12 skip features and the mid block (13 for SD v1.5), from the UNet's config."""
    cfg = unet.config
    widths = list(cfg.block_out_channels)
    layers = cfg.layers_per_block
    layers = [layers] * len(widths) if isinstance(layers, int) else list(layers)
    channels = [widths[0]]
    for i, (width, count) in enumerate(zip(widths, layers, strict=True)):
        channels += [width] * count + ([width] if i < len(widths) - 1 else [])
    return channels + [widths[-1]]


def skip_resolutions(unet) -> list[int]:
    """Side of the 12 skip features and the mid block for a ``sample_size`` latent (64, …, 8 for SD v1.5),
    the grids the released guidance modules' positional embeddings are defined on."""
    cfg = unet.config
    size, count = cfg.sample_size, len(cfg.block_out_channels)
    size = size[0] if isinstance(size, (tuple, list)) else size
    layers = cfg.layers_per_block
    layers = [layers] * count if isinstance(layers, int) else list(layers)
    sides = [size]
    for i, n in enumerate(layers):
        sides += [size >> i] * n + ([size >> (i + 1)] if i < count - 1 else [])
    return sides + [size >> (count - 1)]


# --- conditional guidance network (§III-C) ----------------------------------------------------------
class GuidanceModule(nn.Module):
    """One conditional guidance module: f' = ZConv([f_zt, f_c]) (Eq. 8), f_g = f' + Attn(f', f_c, f_c)
    (Eq. 9–10) with multi-head scaled-dot-product attention over the flattened positions.

    The 1×1 convolution is zero-initialised (the paper's ZConv) and so is the attention's output
    projection, so a fresh module outputs exactly zero and the UNet starts as pretrained. Queries and
    keys/values are LayerNormed before their projections (pre-norm; the paper does not say). Attention width
    and heads: the released code's 512 and 8; its block itself is :class:`ReleasedGuidanceModule`.
    """

    def __init__(self, channels: int, width: int = 512, heads: int = 8) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.zero_conv = nn.Conv2d(3 * channels, channels, 1)
        self.norm_query = nn.LayerNorm(channels)
        self.norm_cond = nn.LayerNorm(2 * channels)
        self.to_q = nn.Linear(channels, width)
        self.to_kv = nn.Linear(2 * channels, 2 * width)
        self.to_out = nn.Linear(width, channels)
        for layer in (self.zero_conv, self.to_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, noisy: Tensor, cond: Tensor) -> Tensor:
        fused = self.zero_conv(torch.cat([noisy, cond], dim=1))  # Eq. 8
        b, c, h, w = fused.shape
        query = self.to_q(self.norm_query(fused.flatten(2).transpose(1, 2)))
        key, value = self.to_kv(self.norm_cond(cond.flatten(2).transpose(1, 2))).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (query, key, value))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # Eq. 9
        return fused + self.to_out(attended).transpose(1, 2).reshape(b, c, h, w)  # Eq. 10


class QuickGELU(nn.Module):
    """x·σ(1.702·x), CLIP's GELU approximation (the released attention MLP's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ConditionStreamLayer(nn.Module):
    """One attention layer of the released guidance module: the condition tokens c are the residual stream,
    c ← c + MHA(LN(q), LN(c), LN(c)), then c ← c + MLP(LN(c)) (×4, QuickGELU); the queries q (from f') pass
    through unchanged, so with several layers every one attends from the same q."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v, self.norm_mlp = (nn.LayerNorm(width) for _ in range(4))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))

    def forward(self, query: Tensor, cond: Tensor) -> Tensor:
        cond = cond + self.attn(self.norm_q(query), self.norm_k(cond), self.norm_v(cond), need_weights=False)[0]
        return cond + self.mlp(self.norm_mlp(cond))


class ReleasedGuidanceModule(nn.Module):
    """The guidance module as the released code builds it (its ``DformerBlock``; docs/methods.md §3.4):
    f' = ZConv([f_zt, f_c]) (Eq. 8), then f_g = f' + Proj(LN(A)) where A is the output of
    :class:`ConditionStreamLayer` s run on query tokens LN(W_q f' + P) and condition tokens LN(W_k f_c + P).

    Unlike the paper's Eq. 9–10 (:class:`GuidanceModule`) the attention output is added to the *condition*
    stream, followed by an MLP, and both token sets get the same learned positional embedding P, defined on
    the level's ``resolution`` × ``resolution`` grid (the latent of a 512² image) and resized bicubically for
    other grids. ``zero_conv`` and ``proj`` start at zero, so a fresh module outputs zero while its attention
    still learns; see :class:`ConditionalGuidanceNetwork` for the released all-zero initialisation.
    """

    def __init__(self, channels: int, width: int = 512, heads: int = 8, layers: int = 1, resolution: int = 64) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.grid = resolution
        self.zero_conv = nn.Conv2d(3 * channels, channels, 1)
        self.to_q = nn.Conv2d(channels, width, 1, bias=False)
        self.to_k = nn.Conv2d(2 * channels, width, 1, bias=False)
        self.pos = nn.Parameter(width**-0.5 * torch.randn(resolution * resolution, width))
        self.norm_q, self.norm_k, self.norm_out = (nn.LayerNorm(width) for _ in range(3))
        self.layers = nn.ModuleList(ConditionStreamLayer(width, heads) for _ in range(layers))
        self.proj = nn.Conv2d(width, channels, 1, bias=False)
        for weight in (self.zero_conv.weight, self.zero_conv.bias, self.proj.weight):
            nn.init.zeros_(weight)

    def position(self, h: int, w: int) -> Tensor:
        """P on an h×w grid (HW × width)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos
        grid = self.pos.float().T.reshape(1, -1, self.grid, self.grid)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2)[0].T.to(self.pos.dtype)

    def tokens(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        return norm(x.flatten(2).transpose(1, 2) + self.position(*x.shape[-2:]))

    def forward(self, noisy: Tensor, cond: Tensor) -> Tensor:
        fused = self.zero_conv(torch.cat([noisy, cond], dim=1))  # Eq. 8
        query = self.tokens(self.to_q(fused), self.norm_q)
        stream = self.tokens(self.to_k(cond), self.norm_k)
        for layer in self.layers:
            stream = layer(query, stream)
        attended = self.norm_out(stream).transpose(1, 2).reshape(*fused.shape[:1], -1, *fused.shape[2:])
        return fused + self.proj(attended)


GUIDANCE_ATTENTION = ("paper", "released")
GUIDANCE_INIT = ("zero_out", "released")


class ConditionalGuidanceNetwork(nn.Module):
    """The frozen pseudo-siamese UNet encoder (θ_c) and the L = 13 guidance modules.

    ``encoder`` is a copy of the denoising UNet taken before fine-tuning, kept frozen, with its decoder
    half removed. Condition features f_c = concat(F(c_I; θ_c), F(c_r; θ_c)) are computed at the fixed
    ``timestep`` (the released code's t = 1; the paper does not say) once per image.

    ``attention``: ``"paper"`` (:class:`GuidanceModule`, Eq. 9–10) or ``"released"``
    (:class:`ReleasedGuidanceModule`, the released code's block; ``layers`` attention layers each).
    ``init``: ``"zero_out"`` zeroes only the fusion convolution and the output projection, so the network
    starts as a no-op but its attention trains; ``"released"`` zeroes *every* parameter as the released code
    does. Then every LayerNorm gain, every projection and the positional embedding are zero, the attention
    path outputs zero and gets zero gradient forever, and only the fusion convolution (Eq. 8) ever learns:
    f_g = ZConv([f_zt, f_c]). That is what produced the paper's numbers, so the reproduction configs choose
    it; the default keeps the attention the paper describes trainable.
    """

    def __init__(self, unet, width: int = 512, heads: int = 8, timestep: int = 1, attention: str = "paper",
                 layers: int = 1, init: str = "zero_out") -> None:
        super().__init__()
        if attention not in GUIDANCE_ATTENTION or init not in GUIDANCE_INIT:
            raise ValueError(f"guidance attention must be one of {GUIDANCE_ATTENTION} and init one of "
                             f"{GUIDANCE_INIT}, got {attention!r} and {init!r}")
        self.encoder = copy.deepcopy(unet)
        self.encoder.up_blocks = nn.ModuleList()
        self.encoder.conv_norm_out = self.encoder.conv_act = self.encoder.conv_out = None
        self.encoder.requires_grad_(False).eval()
        self.timestep = timestep
        if attention == "paper":
            blocks = (GuidanceModule(c, width, heads) for c in skip_channels(unet))
        else:
            blocks = (ReleasedGuidanceModule(c, width, heads, layers, r)
                      for c, r in zip(skip_channels(unet), skip_resolutions(unet), strict=True))
        self.blocks = nn.ModuleList(blocks)
        if init == "released":
            for parameter in self.blocks.parameters():
                nn.init.zeros_(parameter)

    def train(self, mode: bool = True) -> ConditionalGuidanceNetwork:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout
        return self

    @torch.no_grad()
    def condition(self, image_latent: Tensor, label_latent: Tensor, context: Tensor) -> list[Tensor]:
        """f_c for each of the 13 levels: 2C channels (image features ‖ coarse-label features)."""
        both = torch.cat([image_latent, label_latent])  # one encoder pass for both conditions
        feats = unet_encode(self.encoder, both, self.timestep, context.expand(both.shape[0], -1, -1))
        return [torch.cat(f.chunk(2), dim=1) for f in (*feats.skips, feats.mid)]

    def forward(self, noisy: UNetFeatures, cond: list[Tensor]) -> list[Tensor]:
        """f_g for each level, to be added to the UNet's skips and mid block."""
        return [block(f, c) for block, f, c in zip(self.blocks, (*noisy.skips, noisy.mid), cond, strict=True)]


# --- timesteps (Eq. 13) ---------------------------------------------------------------------------------
def sample_timesteps(batch: int, num_train_timesteps: int = 1000, cubic: bool = False,
                     device: torch.device | str | None = None, generator: torch.Generator | None = None) -> Tensor:
    """t ~ U{0, …, T−1}; with ``cubic``, t ← ⌊(1 − (t/T)³)·T⌋ clamped to T − 1 (Eq. 13), which favours
    high-noise steps (mean 0.75·T instead of 0.5·T)."""
    t = torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device)
    return cubic_timesteps(t, num_train_timesteps) if cubic else t


def cubic_timesteps(t: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """Eq. 13 applied to integer timesteps ``t``, in float32 as the released code computes it: its rounding
    moves t = 800 to 487 (exact arithmetic: 488), and the released training ran with that map."""
    T = num_train_timesteps
    return ((1 - (t.float() / T) ** 3) * T).clamp(max=T - 1).long()


# --- the model ------------------------------------------------------------------------------------------
class IDGBR(nn.Module):
    """Latent-diffusion refiner: (image, coarse label map) → refined class logits.

    Args:
        num_classes: K, the classes of the label embedding.
        label_embedding: the pretrained :class:`LabelEmbedding` (frozen here); a fresh one when None. With
            ``num_classes``, what :class:`rsseg.tasks.IDGBRTask` gives (``net(num_classes, label_embedding)``).
        sd_model: Stable Diffusion v1.5 in diffusers format (hub id or local folder) for UNet, VAE and the
            empty-prompt embedding, loaded when ``pretrained``.
        pretrained: load ``sd_model``; False builds the same architecture randomly initialised (or the
            smaller ``unet_config`` / ``vae_config`` dicts, e.g. for tests), with a zero prompt embedding.
        vae: a diffusers ``AutoencoderKL`` (hub id or folder) replacing ``sd_model``'s VAE, e.g.
            ``stabilityai/sd-vae-ft-mse`` or an autoencoder fitted offline; loaded even when not ``pretrained``.
        guidance_width, guidance_heads: attention size of the guidance modules.
        guidance_timestep: the fixed timestep of the pseudo-siamese encoder.
        guidance_attention, guidance_layers, guidance_init: the guidance modules' form and initialisation,
            see :class:`ConditionalGuidanceNetwork` (the released code: ``"released"``, 1, ``"released"``).
        condition_sample: encode the image and the coarse map with a sample of the VAE posterior, as the
            released code does in training and inference, instead of its mean (the default: deterministic
            conditions; the posterior's spread is small).
        use_image, use_coarse: Table VIII's guidance switches; a switched-off condition is replaced by a
            zero latent (the released code's ``no_rough`` ablation).
        beta_schedule, beta_start, beta_end, num_train_timesteps: the DDIM noise schedule. Each one left
            None is the loaded model's: with ``pretrained``, read from ``sd_model``'s
            ``scheduler/scheduler_config.json`` (what the released code loads, and the schedule the pretrained
            UNet was trained under: SD v1.5's ``scaled_linear``, β = linspace(√8.5e-4, √1.2e-2, 1000)²);
            without, SD v1.5's values (``scaled_linear``, 8.5e-4, 1.2e-2, 1000). ``beta_schedule: linear`` is
            the paper's wording taken literally (β linear from 8.5e-4 to 1.2e-2), which the pretrained UNet
            was not trained under.
        repa_source: which encoder feature REPA aligns: ``"unet"`` (the paper: the last hidden state of the
            denoising UNet's encoder) or ``"guidance"`` (the released code: the last down-level guidance
            output).
    """

    def __init__(
        self,
        num_classes: int,
        label_embedding: LabelEmbedding | None = None,
        sd_model: str = DEFAULT_SD_MODEL,
        pretrained: bool = True,
        unet_config: dict | None = None,
        vae_config: dict | None = None,
        vae: str | None = None,
        guidance_width: int = 512,
        guidance_heads: int = 8,
        guidance_timestep: int = 1,
        guidance_attention: str = "paper",
        guidance_layers: int = 1,
        guidance_init: str = "zero_out",
        condition_sample: bool = False,
        use_image: bool = True,
        use_coarse: bool = True,
        beta_schedule: str | None = None,
        beta_start: float | None = None,
        beta_end: float | None = None,
        num_train_timesteps: int | None = None,
        repa_source: str = "unet",
    ) -> None:
        super().__init__()
        DDIMScheduler = require("diffusers", "idgbr", "IDGBR").DDIMScheduler
        if pretrained:  # Stable Diffusion's CLIP text encoder gives the empty prompt's embedding
            require("transformers", "idgbr", "IDGBR with pretrained Stable Diffusion")
        if repa_source not in ("unet", "guidance"):
            raise ValueError(f"repa_source must be 'unet' or 'guidance', got {repa_source!r}")
        self.unet, self.vae, context = _load_stable_diffusion(sd_model, pretrained, unet_config, vae_config)
        if vae is not None:
            self.vae = _load_vae(vae)
        _check_plain_unet(self.unet)
        self.vae.requires_grad_(False).eval()
        self.register_buffer("context", context, persistent=True)
        self.guidance = ConditionalGuidanceNetwork(self.unet, guidance_width, guidance_heads, guidance_timestep,
                                                   guidance_attention, guidance_layers, guidance_init)
        self.condition_sample = condition_sample
        self.label_embedding = label_embedding or LabelEmbedding(num_classes)
        if self.label_embedding.num_classes != num_classes:
            raise ValueError(f"label embedding has {self.label_embedding.num_classes} classes, expected {num_classes}")
        self.label_embedding.requires_grad_(False).eval()
        self.num_classes = num_classes
        self.use_image, self.use_coarse = use_image, use_coarse
        self.repa_source = repa_source
        schedule = {"beta_schedule": beta_schedule, "beta_start": beta_start, "beta_end": beta_end,
                    "num_train_timesteps": num_train_timesteps}
        if any(v is None for v in schedule.values()):
            defaults = _pretrained_schedule(sd_model) if pretrained else SD15_SCHEDULE
            schedule = {k: defaults[k] if v is None else v for k, v in schedule.items()}
        self.scheduler = DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                       prediction_type="epsilon")
        self.scaling_factor = self.vae.config.scaling_factor

    def train(self, mode: bool = True) -> IDGBR:
        super().train(mode)
        self.vae.eval()
        self.label_embedding.eval()
        return self

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent pixel (8 for SD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def repa_channels(self) -> int:
        """Channels of the feature REPA aligns (the last skip: 1280 for SD v1.5)."""
        return skip_channels(self.unet)[-2]

    # --- encoders / decoders ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: Tensor, sample: bool = False) -> Tensor:
        """VAE latent of an image given in the VAE's range (SD: [−1, 1]); the mean unless ``sample``."""
        dist = self.vae.encode(image).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.scaling_factor

    @torch.no_grad()
    def encode_labels(self, labels: Tensor, sample: bool = False) -> Tensor:
        """E_S(y) = E_I(E_e(y)): the latent of a B×H×W label map."""
        return self.encode_image(self.label_embedding.encode(labels), sample)

    def decode_labels(self, latent: Tensor) -> Tensor:
        """D_S(z) = D_e(D_I(z)): B×K×H×W logits."""
        return self.label_embedding.decode(self.vae.decode(latent / self.scaling_factor).sample)

    def condition(self, image: Tensor, coarse: Tensor) -> list[Tensor]:
        """f_c from the image (VAE range) and the coarse label map, with the ablation switches applied."""
        image_latent = self.encode_image(image, self.condition_sample)
        coarse_latent = self.encode_labels(coarse, self.condition_sample)
        if not self.use_image:
            image_latent = torch.zeros_like(image_latent)
        if not self.use_coarse:
            coarse_latent = torch.zeros_like(coarse_latent)
        return self.guidance.condition(image_latent, coarse_latent, self.context)

    # --- denoising ---------------------------------------------------------------------------------
    def forward(self, noisy: Tensor, timesteps: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        """ε̂(z_t, t | c_I, c_r) and the feature REPA aligns (B×C×h×w)."""
        context = self.context.expand(noisy.shape[0], -1, -1)
        feats = unet_encode(self.unet, noisy, timesteps, context)
        guide = self.guidance(feats, cond)
        hidden = feats.skips[-1] if self.repa_source == "unet" else guide[-2]
        return unet_decode(self.unet, feats, context, guide), hidden

    def guided_noise(self, noisy: Tensor, timestep: Tensor, cond: list[Tensor], guidance_scale: float) -> Tensor:
        """ε = ε_u + w·(ε_c − ε_u): the unconditional branch is the UNet without guidance residuals; both
        branches share one encoder pass."""
        context = self.context.expand(noisy.shape[0], -1, -1)
        feats = unet_encode(self.unet, noisy, timestep, context)
        guided = unet_decode(self.unet, feats, context, self.guidance(feats, cond))
        if guidance_scale == 1:
            return guided
        plain = unet_decode(self.unet, feats, context)
        return plain + guidance_scale * (guided - plain)

    @torch.no_grad()
    def sample(self, image: Tensor, coarse: Tensor, steps: int = 25, guidance_scale: float = 3.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Algorithm 2: DDIM from pure noise (η = 0) under CFG, then D_S: B×K×H×W logits.

        ``generator`` (a CPU generator) draws the initial noise, so a seed fixes the result on any device.
        """
        factor = self.latent_factor
        if image.shape[-1] % factor or image.shape[-2] % factor:
            raise ValueError(f"image size {tuple(image.shape[-2:])} must be a multiple of {factor} (the VAE's)")
        cond = self.condition(image, coarse)
        shape = (image.shape[0], self.unet.config.in_channels, image.shape[-2] // factor, image.shape[-1] // factor)
        latent = torch.randn(shape, generator=generator).to(image.device, image.dtype)
        scheduler = copy.deepcopy(self.scheduler)  # set_timesteps mutates it
        scheduler.set_timesteps(steps, device=image.device)
        latent = latent * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            noise = self.guided_noise(latent, t, cond, guidance_scale)
            latent = scheduler.step(noise, t, latent, eta=0.0).prev_sample
        return self.decode_labels(latent)


def _pretrained_schedule(sd_model: str) -> dict:
    """The noise schedule of ``sd_model``'s ``scheduler/scheduler_config.json`` (hub id or local folder; read
    only for pretrained models, from the same place as their weights)."""
    scheduler = require("diffusers", "idgbr", "IDGBR").DDIMScheduler
    try:
        config = scheduler.load_config(sd_model, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise OSError(
            f"cannot read the noise scheduler of {sd_model!r} ({error}); without internet it must already be in "
            "the Hugging Face cache, or set beta_schedule, beta_start, beta_end and num_train_timesteps"
        ) from error
    return {k: config.get(k, SD15_SCHEDULE[k]) for k in SD15_SCHEDULE}


def _load_vae(name_or_path: str) -> nn.Module:
    autoencoder = require("diffusers", "idgbr", "IDGBR").AutoencoderKL
    try:
        return autoencoder.from_pretrained(name_or_path)
    except OSError as error:
        raise OSError(f"cannot load the VAE {name_or_path!r} ({error}); pass a local diffusers folder") from error


def _load_stable_diffusion(sd_model: str, pretrained: bool, unet_config: dict | None,
                           vae_config: dict | None) -> tuple[nn.Module, nn.Module, Tensor]:
    """UNet, VAE and the empty prompt's CLIP embedding (1 × 77 × D) of Stable Diffusion."""
    diffusers = require("diffusers", "idgbr", "IDGBR")
    AutoencoderKL, UNet2DConditionModel = diffusers.AutoencoderKL, diffusers.UNet2DConditionModel
    if not pretrained:
        unet = UNet2DConditionModel(**(unet_config or SD15_UNET))
        vae = AutoencoderKL(**(vae_config or SD15_VAE))
        return unet, vae, torch.zeros(1, PROMPT_TOKENS, unet.config.cross_attention_dim)
    transformers = require("transformers", "idgbr", "IDGBR with pretrained Stable Diffusion")
    CLIPTextModel, CLIPTokenizer = transformers.CLIPTextModel, transformers.CLIPTokenizer
    try:
        unet = UNet2DConditionModel.from_pretrained(sd_model, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(sd_model, subfolder="vae")
        tokenizer = CLIPTokenizer.from_pretrained(sd_model, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(sd_model, subfolder="text_encoder")
    except OSError as error:
        raise OSError(
            f"cannot load Stable Diffusion {sd_model!r} ({error}); without internet it must already be in the "
            "Hugging Face cache, or pass a local diffusers folder (or pretrained=False for random weights)"
        ) from error
    tokens = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        context = text_encoder(tokens.input_ids).last_hidden_state
    logger.info("loaded Stable Diffusion from %s (UNet %.0f M parameters)", sd_model,
                sum(p.numel() for p in unet.parameters()) / 1e6)
    return unet, vae, context

