"""DANet: dual alignments for referring remote-sensing segmentation (ACM MM 2024), as a plain nn.Module.

Equation numbers refer to the paper (DANet, ACM MM 2024; docs/papers.md); no official code exists, so everything
the paper leaves open is our reading and says so. On top of the LAVT baseline (``rsseg.models.lavt``):

* **Explicit affinity alignment** (§3.2, Eq. 1–3) is a training loss over the stage features, with no
  learnable parameters of its own; :func:`affinity_alignment_loss` computes it from the features and
  the sentence activations this model returns. The task owns its switches: Eq. 3's reading (literal,
  or the target-only default, :func:`affinity_loss`) and Eq. 1's temperature.
* **Reliable agent alignment** (§3.3, Eq. 4–9, :class:`ReliableAgentAlignment`) turns the sentence
  feature L_g into a classifier L̂_g aligned through the K most reliable pixels ("agents") of X. The
  paper's X is "F_4 after the bottleneck" without a definition of the bottleneck; we take the fused,
  normalised F_4 itself (stride 32, 225 pixels at 480²).
* **Prediction** (Eq. 10): Y = E × L̂_gᵀ with E the decoder's features. Bilinear upsampling is linear,
  so the product is taken at stride 4 and the one-channel map upsampled (the same Y, without a
  C×H×W tensor).

``agent_alignment=False`` keeps LAVT's fixed 1×1 classifier; with the affinity loss off as well (a task
switch) the model is the LAVT baseline. The output is one logit per pixel: LAVT's two-channel softmax
is the same model as a sigmoid of the channel difference (see ``rsseg.tasks.danet``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsseg.extras import require
from rsseg.models.lavt import DEFAULT_SWIN, DEFAULT_TEXT_ENCODER, LanguageAwareSwin, TextEncoder, TopDownDecoder


@dataclass
class DANetOutput:
    logits: Tensor  # B×1×H×W at the input size
    features: list[Tensor]  # F_1..F_4, B×C_i×h_i×w_i (for the affinity loss)
    activations: list[Tensor]  # sentence activation per stage, B×h_i×w_i (Eq. 2's a(x, y))
    agents: Tensor | None = None  # B×K indices of the agents in F_4's flattened grid


# --------------------------------------------------------------------------------------------------
# Explicit affinity alignment (§3.2)


AFFINITY_READINGS = ("rows", "sum", "literal")


def self_affinity(features: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 1 for B×N×C tokens: Softmax over each row of F̃F̃ᵀ/‖F̃‖²/τ, the B×N×N visual affinity A_F.

    ‖F̃‖² is read per pixel pair (f_m·f_n / ‖f_m‖‖f_n‖, the cosine affinity of the affinity learning the
    paper cites [13]); the row softmax makes the affinities of a pixel compete, so raising those to the
    target means lowering those to the background. ``temperature`` τ (ours; the paper's Eq. 1 is τ = 1)
    divides the cosines: with cosines in [−1, 1] a row's largest weight is at most e²/(e² + N − 1) at τ = 1,
    smaller τ lets a row concentrate on the pixels it matches. A zero vector has cosine 0 with every pixel.
    """
    if not temperature > 0:
        raise ValueError(f"the affinity temperature must be > 0, got {temperature}")
    unit = F.normalize(features.float(), dim=-1)
    return (unit @ unit.transpose(-1, -2) / temperature).softmax(-1)


def target_affinity(labels: Tensor) -> Tensor:
    """Self-affinity of a binary pseudo-label map (B×N → B×N×N): 1 on pairs of target pixels, else 0.

    This is the per-pair normalised product of Eq. 1 applied to one-channel 0/1 features (the cosine of two
    target pixels is 1; a background pixel is a zero vector), without Eq. 1's softmax, so that Eq. 3
    constrains "only ... within the target" as §3.2 says. The literal Self-Affinity(Â_tv) (with the softmax)
    is ``self_affinity(labels[..., None])``: see :func:`affinity_loss`'s ``"literal"`` reading.
    """
    labels = labels.float()
    return labels[:, :, None] * labels[:, None, :]


def pseudo_labels(activation: Tensor, alpha: float = 0.8) -> Tensor:
    """Eq. 2: Â_tv = [a(x, y) > α] after scaling each map's activation to [0, 1] (min–max, ours).

    The paper thresholds a(x, y) at α = 0.8 without saying how a is scaled; min–max per image is the
    usual normalisation of activation maps. A flat map gives no foreground.
    """
    flat = activation.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scaled = (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    return (scaled > alpha).view_as(activation)


def affinity_loss(features: Tensor, targets: Tensor, reading: str = "rows", temperature: float = 1.0) -> Tensor:
    """Eq. 3 per image, ‖A_F ⊙ S − S‖²_F with A_F from ``features`` (B×C×h×w, Eq. 1 at ``temperature``) and
    S the pseudo-target's affinity from ``targets`` (B×h×w bool), averaged over images. Three readings:

    * ``"literal"``: Eq. 3 as printed. S = Self-Affinity(Â_tv), Eq. 1 (same τ) applied to the one-channel
      0/1 map, i.e. a row softmax: a target row puts e^{1/τ}/(|T|e^{1/τ} + N − |T|) on target columns and
      1/(…) on background ones, a background row 1/N everywhere. S is dense, so background pairs are
      constrained too (towards A_F = 1, with weight S²), and the value is dominated by Σ S², small and
      nearly constant: λ_af multiplies a weak term.
    * ``"sum"``: S = :func:`target_affinity` (0/1, no softmax), so the norm is Σ_{m,n ∈ T} (A_F[m,n] − 1)²,
      the reading of §3.2's "only ... within the target"; it grows with the square of the object's size.
    * ``"rows"`` (default, ours): ``"sum"`` divided by the image's |T|, so every target pixel's row weighs
      the same whatever the object's size. Its value stays close to |T| (the softmax rows sum to one, so
      most A_F[m,n] stay far below 1): read its changes, not its size.

    An image without pseudo-target contributes 0 under ``"rows"``/``"sum"`` (under ``"literal"`` its S is
    uniform 1/N and it still counts).
    """
    if reading not in AFFINITY_READINGS:
        raise ValueError(f"the Eq. 3 reading must be one of {AFFINITY_READINGS}, got {reading!r}")
    labels = targets.flatten(1)
    affinity = self_affinity(features.flatten(2).transpose(1, 2), temperature)
    if reading == "literal":
        target = self_affinity(labels[:, :, None].float(), temperature)
    else:
        target = target_affinity(labels)
    per_image = ((affinity * target - target) ** 2).sum((1, 2))
    if reading == "rows":
        per_image = per_image / labels.sum(1).clamp_min(1)
    return per_image.mean()


def affinity_alignment_loss(features: Sequence[Tensor], activations: Sequence[Tensor],
                            stages: Sequence[int] = (2, 3, 4), alpha: float = 0.8,
                            reading: str = "rows", temperature: float = 1.0) -> Tensor:
    """L_affinity summed over the stages in ``stages`` (1-based: F_1..F_4; paper default {F_2, F_3, F_4},
    Table 4), Eq. 3 in ``reading`` with Eq. 1 at ``temperature`` (:func:`affinity_loss`). Pseudo-labels
    carry no gradient: only the visual affinity A_F is pulled towards them."""
    if not stages or any(s not in (1, 2, 3, 4) for s in stages):
        raise ValueError(f"affinity stages must be a non-empty subset of 1..4, got {tuple(stages)}")
    total = features[0].new_zeros((), dtype=torch.float32)
    for stage in stages:
        targets = pseudo_labels(activations[stage - 1].detach(), alpha)
        total = total + affinity_loss(features[stage - 1], targets, reading, temperature)
    return total


# --------------------------------------------------------------------------------------------------
# Reliable agent alignment (§3.3)


class ReliableAgentAlignment(nn.Module):
    """RAAM (Eq. 4–9): the sentence feature L_g becomes a classifier aligned through reliable pixels.

    Eq. 4–5: word queries Q = L_c W^Q, pixel keys/values K = X W^K, V = X W^V; corr = QKᵀ/√C_k (the
    "distance" is the scaled dot product, ours). Eq. 6: reliability r_m = Σ_n corr_{n,m} over the real
    words (padding excluded); the top-K pixels are the agents F^A. Eq. 7: corr^g = softmax over agents of
    (L_g W^{Qg})(F^A W^K)ᵀ/√C_k, corr^p_m = softmax over agents of (f_m W^{Qp})(F^A W^K)ᵀ/√C_k (a pixel
    query projection of its own: the paper's W^Q maps text widths). Eq. 8: align_m = corr^g·corr^pᵀ_m.
    Eq. 9: L̂_g = Σ_m align_m V_m, followed by a transformer layer (self-attention + FFN, post-norm) on
    the classifier token as §3.3 describes. C_k (``key_dim``) and the layer's width are ours. On one token
    that self-attention is its value and output projections only (a softmax over one key is 1): the query
    and key rows of its ``in_proj`` never receive a gradient, as in any one-token reading of §3.3.

    **How W^Q trains (ours).** Read literally, Eq. 4–6 use W^Q only to rank pixels, and a top-K passes
    indices, not values: W^Q would never receive a gradient. We keep the forward pass exactly Eq. 6–9
    (hard top-K, agents used unweighted) and give the selection a straight-through gradient: each agent
    f^A_k enters Eq. 7 as f^A_k · ρ_k / sg(ρ_k), ρ = softmax_m(r_m) over all h·w pixels (Eq. 6's
    reliabilities), sg = stop-gradient. The factor is exactly 1 in the forward pass; backward it is the
    gradient of weighting each agent by its softmax reliability, so r_k (and through Eq. 5, W^Q and W^K)
    rises for agents whose features the loss wants amplified and falls otherwise, relative to all pixels.
    Of the candidate readings this one changes no value of Eq. 4–10 (a soft, reliability-weighted
    selection would change Eq. 7; sharing W^Q with Eq. 7's pixel query needs C = C_t).
    """

    def __init__(self, visual_dim: int, text_dim: int, out_dim: int, key_dim: int = 256, num_agents: int = 32,
                 heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.0) -> None:
        super().__init__()
        if num_agents < 1:
            raise ValueError(f"num_agents must be ≥ 1, got {num_agents}")
        self.num_agents, self.scale = num_agents, 1 / math.sqrt(key_dim)
        self.word_query = nn.Linear(text_dim, key_dim)  # W^Q
        self.key = nn.Linear(visual_dim, key_dim)  # W^K
        self.value = nn.Linear(visual_dim, out_dim)  # W^V
        self.sentence_query = nn.Linear(text_dim, key_dim)  # W^{Qg}
        self.pixel_query = nn.Linear(visual_dim, key_dim)  # W^Q applied to pixels in Eq. 7
        self.refine = nn.TransformerEncoderLayer(out_dim, heads, ffn_dim, dropout, batch_first=True)

    def reliability(self, pixel_keys: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """Eq. 5–6: r_m = Σ_n corr_{n,m} over the real words (B×N)."""
        corr = self.word_query(words) @ pixel_keys.transpose(1, 2) * self.scale  # B×L×N
        return (corr * word_mask[:, :, None].to(corr.dtype)).sum(1)

    def select_agents(self, pixel_keys: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """Eq. 6: indices (B×K) of the K pixels with the largest summed correlation to the words."""
        return self._top_k(self.reliability(pixel_keys, words, word_mask))[0]

    def _top_k(self, reliability: Tensor) -> tuple[Tensor, Tensor]:
        """(agents B×K, straight-through factors B×K: 1 in value, ∂ of softmax-reliability weighting)."""
        agents = reliability.topk(min(self.num_agents, reliability.shape[1]), dim=1).indices
        log_rho = reliability.float().log_softmax(1).gather(1, agents)  # log ρ_k, ρ = softmax over all pixels
        return agents, (log_rho - log_rho.detach()).exp().to(reliability.dtype)

    def aligned_classifier(self, x: Tensor, words: Tensor, word_mask: Tensor,
                           sentence: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 4–9: (L̂_g B×C_v before the refinement layer, agents B×K, align B×N)."""
        pixels = x.flatten(2).transpose(1, 2)  # B×N×C
        keys = self.key(pixels)
        agents, straight_through = self._top_k(self.reliability(keys, words, word_mask))
        chosen = pixels.gather(1, agents[:, :, None].expand(-1, -1, pixels.shape[-1]))  # F^A
        agent_keys = self.key(chosen * straight_through[..., None])  # F^A W^K (the factor is 1 in value)
        corr_g = (self.sentence_query(sentence)[:, None] @ agent_keys.transpose(1, 2) * self.scale).softmax(-1)
        corr_p = (self.pixel_query(pixels) @ agent_keys.transpose(1, 2) * self.scale).softmax(-1)  # B×N×K
        align = (corr_p @ corr_g.transpose(1, 2))[..., 0]  # Eq. 8
        classifier = (align[..., None] * self.value(pixels)).sum(1)  # Eq. 9
        return classifier, agents, align

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor, sentence: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` B×C×h×w (X), words B×L×C_t, mask B×L, sentence B×C_t → (L̂_g B×C_v, agents B×K)."""
        classifier, agents, _ = self.aligned_classifier(x, words, word_mask, sentence)
        return self.refine(classifier[:, None])[:, 0], agents


# --------------------------------------------------------------------------------------------------
# The network


class DANet(nn.Module):
    """DANet (and, with ``agent_alignment=False`` and no affinity loss, LAVT) for image + sentence → mask.

    Args:
        backbone: timm Swin name (default Swin-B, window 12, 384, ImageNet-22k: LAVT's weights).
        pretrained: load the backbone's timm weights; ``backbone_checkpoint``: a local weight file instead.
        img_size: input size the Swin is built for (480, the RRSIS protocol).
        drop_path_rate: stochastic depth of the Swin (LAVT: 0.3).
        backbone_kwargs: extra ``timm.create_model`` arguments (a small Swin for tests).
        text_encoder: transformers hub id or local folder (default ``bert-base-uncased``).
        text_pretrained: load its weights; ``text_config`` builds a random one from a config dict instead.
        text_frozen: keep the text encoder fixed (LAVT and DANet fine-tune it; an option for small runs).
        text_train_layers: train only the text encoder's first N layers, embeddings and the rest frozen
            (LAVT's released training: 10 of BERT-base's 12); None trains all of it.
        pwam_heads: heads of each PWAM (LAVT: 1).
        decoder_channels: width of the top-down decoder and so of E and L̂_g (LAVT: 512).
        agent_alignment: RAAM + Eq. 10 classifier (True) or LAVT's fixed 1×1 classifier (False).
        num_agents, key_dim, agent_heads, agent_ffn_dim: RAAM's K (paper 32), C_k and refinement layer.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_SWIN,
        pretrained: bool = True,
        backbone_checkpoint: str | None = None,
        img_size: int = 480,
        drop_path_rate: float = 0.3,
        backbone_kwargs: dict | None = None,
        text_encoder: str = DEFAULT_TEXT_ENCODER,
        text_pretrained: bool = True,
        text_config: dict | None = None,
        text_frozen: bool = False,
        text_train_layers: int | None = None,
        pwam_heads: int = 1,
        decoder_channels: int = 512,
        agent_alignment: bool = True,
        num_agents: int = 32,
        key_dim: int = 256,
        agent_heads: int = 8,
        agent_ffn_dim: int = 2048,
    ) -> None:
        super().__init__()
        require("transformers", "refer", "DANet" if agent_alignment else "LAVT")  # fail here, not mid-build
        self.text_encoder = TextEncoder(text_encoder, text_pretrained, text_config, text_frozen,
                                        text_train_layers)
        self.encoder = LanguageAwareSwin(
            self.text_encoder.dim, backbone, pretrained, backbone_checkpoint, img_size, drop_path_rate,
            pwam_heads, **(backbone_kwargs or {}),
        )
        self.decoder = TopDownDecoder(self.encoder.dims, decoder_channels)
        self.agent_alignment = None
        self.classifier = None
        if agent_alignment:
            self.agent_alignment = ReliableAgentAlignment(
                self.encoder.dims[3], self.text_encoder.dim, decoder_channels, key_dim, num_agents, agent_heads,
                agent_ffn_dim,
            )
        else:
            self.classifier = nn.Conv2d(decoder_channels, 1, 1)

    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> DANetOutput:
        text = self.text_encoder(input_ids, attention_mask)
        features, activations = self.encoder(image, text)
        embedding = self.decoder(features)  # E at stride 4
        agents = None
        if self.agent_alignment is not None:
            classifier, agents = self.agent_alignment(features[3], text.words, text.mask, text.sentence)
            logits = torch.einsum("bchw,bc->bhw", embedding, classifier)[:, None]  # Eq. 10
        else:
            logits = self.classifier(embedding)
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return DANetOutput(logits, features, activations, agents)
