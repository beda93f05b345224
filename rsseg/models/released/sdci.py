"""SDCI's released weights (``yu-ni1989/SDCI``) loaded into rsseg's :class:`rsseg.models.sdci.model.SDCI`.

SDCI is training-free: its "checkpoints" are the two frozen backbones the released code loads
(docs/methods.md §4):

* CLIP: OpenAI's ``ViT-L-14.pt`` through ``clip.load`` — a TorchScript archive whose ``state_dict()`` uses
  OpenAI's names (``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``, …, plus
  the integer entries ``input_resolution``, ``context_length``, ``vocab_size``), or that state dict saved
  as a plain ``.pt``. open_clip's ``CLIP`` uses the same names (so does rsseg, which builds on it); the
  integer entries are dropped. OpenAI's CLIP uses QuickGELU: build rsseg's CLIP with ``quick_gelu=True``
  (``SDCI(clip_quick_gelu=True)``, the default for ``clip_pretrained="openai"``).
* DINOv2: ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14_reg")``, whose weights file
  (``dinov2_vitb14_reg4_pretrain.pth``) is a plain state dict in the hub naming (``blocks.N.attn.qkv``,
  ``blocks.N.ls1.gamma``, ``register_tokens``, ``norm``). rsseg runs transformers'
  ``Dinov2WithRegistersModel``: the fused ``qkv`` is split into ``q_proj``/``k_proj``/``v_proj`` rows
  (query, key, value in that order), ``ls{1,2}.gamma`` → ``layer_scale{1,2}.lambda1``, ``norm`` →
  ``layernorm``. The hub's position-embedding interpolation for the ``_reg`` models (bicubic, antialias,
  output size, no offset) is transformers' too.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rsseg.models.released.checks import check_state, few, load_strictly

__all__ = ["convert_clip_state_dict", "convert_dino_state_dict", "convert_state_dict", "load_released_checkpoint"]

_CLIP_METADATA = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's JIT state dict
_DINO_RENAMES = (
    (r"cls_token", "embeddings.cls_token"),
    (r"mask_token", "embeddings.mask_token"),
    (r"register_tokens", "embeddings.register_tokens"),
    (r"pos_embed", "embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layer.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.o_proj.\2"),
    (r"blocks\.(\d+)\.ls([12])\.gamma", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layer.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"layernorm.\1"),
)


def convert_clip_state_dict(released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI CLIP's state dict → open_clip ``CLIP`` names (the same names; the integer metadata entries
    are dropped). Raises ``ValueError`` on a key that is not OpenAI's CLIP naming."""
    out, unknown = {}, []
    for key, value in released.items():
        if key in _CLIP_METADATA:
            continue
        if not isinstance(value, Tensor) or not re.match(
                r"(visual\.|transformer\.|token_embedding\.|ln_final\.|positional_embedding$|text_projection$"
                r"|logit_scale$)", key):
            unknown.append(key)
            continue
        out[key] = value
    if unknown:
        raise ValueError(f"unknown OpenAI CLIP keys: {few(unknown)}")
    return out


def convert_dino_state_dict(released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DINOv2 hub state dict (``dinov2_vit*14_reg``, ``block_chunks=0``) → transformers'
    ``Dinov2WithRegistersModel`` names. Raises ``ValueError`` on an unknown key (e.g. chunked ``blocks.0.N``
    or a SwiGLU FFN, which SDCI's ViT-B does not use)."""
    out, unknown = {}, []
    for key, value in released.items():
        if m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            if value.shape[0] % 3:
                raise ValueError(f"{key} has {value.shape[0]} rows, not 3 × width")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"encoder.layer.{m[1]}.attention.{name}.{m[2]}"] = part.clone()
            continue
        for pattern, target in _DINO_RENAMES:
            if re.fullmatch(pattern, key):
                out[re.sub(f"^{pattern}$", target, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown DINOv2 hub keys: {few(unknown)}")
    return out


def convert_state_dict(clip: Mapping[str, Tensor], dino: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Both released state dicts → an rsseg ``SDCI`` state dict (``clip.*``, its alias ``semantic.visual.*``
    and ``structural.dino.*``)."""
    clip_sd = convert_clip_state_dict(clip)
    out = {f"clip.{k}": v for k, v in clip_sd.items()}
    out |= {f"semantic.{k}": v for k, v in clip_sd.items() if k.startswith("visual.")}
    out |= {f"structural.dino.{k}": v for k, v in convert_dino_state_dict(dino).items()}
    return out


def _read(path: Path, what: str) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            torchscript = any(name.endswith("constants.pkl") for name in archive.namelist())
        if torchscript:  # OpenAI's released CLIP files are TorchScript archives (their tensors only are read)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{what} file {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def load_released_checkpoint(model: nn.Module, clip_path: str | Path, dino_path: str | Path) -> nn.Module:
    """Load OpenAI's CLIP file (TorchScript ``ViT-L-14.pt`` or its plain state dict) and the DINOv2 hub
    ``.pth`` into an rsseg ``SDCI`` strictly (same architecture: ``clip_model="ViT-L-14"`` with
    ``clip_quick_gelu=True``, ``dino_version="v2"``). Raises ``ValueError`` naming the file and the missing,
    unexpected or mis-shaped keys; nothing is loaded partially."""
    clip_path, dino_path = Path(clip_path), Path(dino_path)
    try:
        clip_sd = convert_clip_state_dict(_read(clip_path, "CLIP"))
    except ValueError as error:
        raise ValueError(f"{clip_path}: {error}") from error
    try:
        dino_sd = convert_dino_state_dict(_read(dino_path, "DINOv2"))
    except ValueError as error:
        raise ValueError(f"{dino_path}: {error}") from error
    dtype = next(model.parameters()).dtype
    clip_sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in clip_sd.items()}
    dino_sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in dino_sd.items()}
    check_state(model.clip, clip_sd, clip_path)  # both checked before either loads: no partial load
    check_state(model.structural.dino, dino_sd, dino_path)
    load_strictly(model.clip, clip_sd, clip_path)
    load_strictly(model.structural.dino, dino_sd, dino_path)
    return model
