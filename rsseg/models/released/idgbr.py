"""IDGBR's released checkpoints (``KeyanHu-git/IDGBR``) loaded into rsseg's :class:`rsseg.models.IDGBR`.

The released code keeps four diffusers models, each saved with ``save_pretrained`` as a folder holding
``config.json`` and ``diffusion_pytorch_model.safetensors`` (docs/methods.md §3.2, §3.8):

* ``label_embed_net`` — ``LabelEmbedNet``, shipped in the repository as ``weight/labelembednet{2,8}/``:
  ``embedding_table.weight`` (K×3) and ``embedding_conv.{0,2}`` (1×1 convolutions 3→128→K);
* ``interact_net`` — ``InteractNet``, the 13 guidance modules ``attn_blocks_down.{0..11}`` and
  ``attn_blocks_mid`` (``DformerBlock``: ``conv`` and ``attn.*``);
* ``unet_gen`` — the fine-tuned denoising UNet, diffusers ``UNet2DConditionModel`` names;
* ``unet_ori`` — the frozen UNet encoder (``conv_in``, ``time_embedding``, ``down_blocks``, ``mid_block``),
  loaded from Stable Diffusion's ``unet`` folder in training.

A training checkpoint (``checkpoint-N/``) has ``unet_gen/`` and ``interact_net/``; an exported pipeline
also has ``unet_ori/``, ``label_embed_net/`` and ``vae/``. The target is an IDGBR built with the released
switches (``guidance_attention="released"``; the guidance sizes of the checkpoint: width 512, 8 heads, 1
layer for the released InteractNet).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rsseg.models.released.checks import few, load_strictly

ENCODER_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
DECODER_PREFIXES = ("up_blocks.", "conv_norm_out.", "conv_out.")
# DformerBlock / CrossAttentionLayer / ResidualAttentionBlock names → ReleasedGuidanceModule names
_GUIDANCE_NAMES = [
    (r"^conv\.", "zero_conv."),
    (r"^attn\.positional_embedding$", "pos"),
    (r"^attn\.conv1_q\.", "to_q."),
    (r"^attn\.conv1_k\.", "to_k."),
    (r"^attn\.ln_pre_q\.", "norm_q."),
    (r"^attn\.ln_pre_k\.", "norm_k."),
    (r"^attn\.ln_post\.", "norm_out."),
    (r"^attn\.proj\.", "proj."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.attn\.", r"layers.\1.attn."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.ln_1q\.", r"layers.\1.norm_q."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.ln_1k\.", r"layers.\1.norm_k."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.ln_1v\.", r"layers.\1.norm_v."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.ln_2\.", r"layers.\1.norm_mlp."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"layers.\1.mlp.0."),
    (r"^attn\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"layers.\1.mlp.2."),
]
_LABEL_NAMES = {"embedding_table.weight": "table.weight", "embedding_conv.0.weight": "decoder.0.weight",
                "embedding_conv.0.bias": "decoder.0.bias", "embedding_conv.2.weight": "decoder.2.weight",
                "embedding_conv.2.bias": "decoder.2.bias"}


def convert_label_embedding(released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``LabelEmbedNet`` → :class:`rsseg.models.idgbr.LabelEmbedding` names (same layouts)."""
    unknown = released.keys() - _LABEL_NAMES.keys()
    if unknown:
        raise ValueError(f"unknown LabelEmbedNet keys: {few(unknown)}")
    return {_LABEL_NAMES[k]: v for k, v in released.items()}


def convert_guidance(released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``InteractNet`` → ``ConditionalGuidanceNetwork.blocks`` names: ``attn_blocks_down.i`` is level i and
    ``attn_blocks_mid`` the last level (same layouts)."""
    downs = {int(m.group(1)) for k in released if (m := re.match(r"attn_blocks_down\.(\d+)\.", k))}
    mid_index = max(downs) + 1 if downs else 0
    state, unknown = {}, []
    for key, value in released.items():
        if m := re.match(r"attn_blocks_down\.(\d+)\.(.+)$", key):
            level, rest = int(m.group(1)), m.group(2)
        elif key.startswith("attn_blocks_mid."):
            level, rest = mid_index, key[len("attn_blocks_mid."):]
        else:
            unknown.append(key)
            continue
        for pattern, target in _GUIDANCE_NAMES:
            if re.match(pattern, rest):
                state[f"blocks.{level}.{re.sub(pattern, target, rest)}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown InteractNet keys: {few(unknown)}")
    return state


def convert_state_dict(released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``SIDModel``-style state dict (``unet_gen.*``, ``interact_net.*``, ``label_embed_net.*``,
    ``unet_ori.*``, optionally ``vae.*``) → rsseg IDGBR names (``unet.*``, ``guidance.blocks.*``,
    ``label_embedding.*``, ``guidance.encoder.*``, ``vae.*``).

    ``unet_ori`` may be a full Stable Diffusion UNet: its decoder half (unused by the frozen encoder) is
    dropped. ``projectors.*`` (the REPA head, used only while training) is skipped. Any other prefix raises.
    """
    parts: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in released.items():
        prefix, _, rest = key.partition(".")
        if prefix in ("unet_gen", "interact_net", "label_embed_net", "unet_ori", "vae"):
            parts.setdefault(prefix, {})[rest] = value
        elif prefix != "projectors":
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown IDGBR keys: {few(unknown)}")
    state: dict[str, Tensor] = {}
    state.update({f"unet.{k}": v for k, v in parts.get("unet_gen", {}).items()})
    state.update({f"vae.{k}": v for k, v in parts.get("vae", {}).items()})
    state.update({f"guidance.{k}": v for k, v in convert_guidance(parts.get("interact_net", {})).items()})
    labels = convert_label_embedding(parts.get("label_embed_net", {}))
    state.update({f"label_embedding.{k}": v for k, v in labels.items()})
    encoder = parts.get("unet_ori", {})
    odd = [k for k in encoder if not k.startswith(ENCODER_PREFIXES + DECODER_PREFIXES)]
    if odd:
        raise ValueError(f"unknown unet_ori keys: {few(odd)}")
    state.update({f"guidance.encoder.{k}": v for k, v in encoder.items() if k.startswith(ENCODER_PREFIXES)})
    return state


def load_state(net: nn.Module, state: Mapping[str, Tensor], source: str) -> nn.Module:
    """Load converted weights into ``net``; every parameter must be given except the VAE and the prompt
    embedding (``vae.*``, ``context``: from the Stable Diffusion ``net`` was built with) when absent."""
    optional = [k for k in net.state_dict()
                if (k.startswith("vae.") and not any(s.startswith("vae.") for s in state)) or k == "context"]
    return load_strictly(net, state, source, optional)


def read_diffusers_folder(folder: str | Path) -> dict[str, Tensor]:
    """The state dict of a diffusers ``save_pretrained`` folder (``diffusion_pytorch_model.safetensors``, or
    the ``.bin`` written without safetensors)."""
    folder = Path(folder)
    safe, legacy = folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin"
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(str(safe), device="cpu")
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no diffusion_pytorch_model.safetensors or .bin (not a diffusers model folder)")


def load_released_checkpoint(net: nn.Module, checkpoint_dir: str | Path, label_embed_dir: str | Path | None = None,
                             sd_model_dir: str | Path | None = None) -> nn.Module:
    """Load a released IDGBR checkpoint into ``net`` (an IDGBR built with ``guidance_attention="released"``).

    ``checkpoint_dir``: a training ``checkpoint-N/`` or an exported pipeline folder (its ``unet_gen/``,
    ``interact_net/`` and, when present, ``unet_ori/``, ``label_embed_net/``, ``vae/`` subfolders).
    ``label_embed_dir``: the label embedding folder when the checkpoint has none (``weight/labelembednet8``).
    ``sd_model_dir``: Stable Diffusion v1.5 in diffusers format, whose ``unet`` is the frozen encoder when the
    checkpoint has no ``unet_ori/`` (what the released training loads). Raises ``ValueError`` naming the
    folder and the missing, unexpected or mis-shaped parameters; nothing is loaded then.
    """
    checkpoint_dir = Path(checkpoint_dir)
    sources = {"unet_gen": checkpoint_dir / "unet_gen", "interact_net": checkpoint_dir / "interact_net"}
    optional = {"unet_ori": [checkpoint_dir / "unet_ori"] + ([Path(sd_model_dir) / "unet"] if sd_model_dir else []),
                "label_embed_net": [checkpoint_dir / "label_embed_net"] + ([Path(label_embed_dir)] if label_embed_dir
                                                                         else []),
                "vae": [checkpoint_dir / "vae"]}
    for name, candidates in optional.items():
        found = next((c for c in candidates if c.is_dir()), None)
        if found is not None:
            sources[name] = found
        elif name != "vae":
            raise ValueError(f"{checkpoint_dir}: no {name} weights (looked in {', '.join(map(str, candidates))}); "
                             f"pass {'sd_model_dir' if name == 'unet_ori' else 'label_embed_dir'}")
    released = {}
    for name, folder in sources.items():
        released.update({f"{name}.{k}": v for k, v in read_diffusers_folder(folder).items()})
    try:
        state = convert_state_dict(released)
    except ValueError as error:
        raise ValueError(f"{checkpoint_dir}: {error}") from error
    return load_state(net, state, str(checkpoint_dir))


def load_released_label_embedding(folder: str | Path, noise_std: float = 0.15):
    """A shipped ``LabelEmbedNet`` folder (``weight/labelembednet{2,8}/``: ``config.json`` with ``num_classes``
    and ``label_emb_inchannels``, and its weights) as rsseg's :class:`LabelEmbedding`, table frozen and
    training noise σ = 0.15 as released. Raises ``ValueError`` naming the folder on any other content."""
    import json

    from rsseg.models.idgbr import LabelEmbedding

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    embedding = LabelEmbedding(config["num_classes"], config.get("label_emb_inchannels", 3), noise_std=noise_std,
                               train_table=False)
    try:
        state = convert_label_embedding(read_diffusers_folder(folder))
    except ValueError as error:
        raise ValueError(f"{folder}: {error}") from error
    return load_state(embedding, state, str(folder))
