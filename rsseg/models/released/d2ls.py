"""D2LS's released checkpoints (``XavierJiezou/D2LS``) loaded into rsseg's ``D2LS``.

Build the network with the released switches, ``D2LS(N, head="pixel_shuffle", final_token_attention=True)``
(docs/methods.md §1.2). File format: the GeoSeg/PyTorch Lightning ``.ckpt`` written by the released
``train.py`` (``Supervision_Train`` keeps the network as ``self.net``, and ``test_loveda.py`` restores it with
``Supervision_Train.load_from_checkpoint``): a dict whose ``state_dict`` holds the network's parameters
under the ``net.`` prefix. A bare state dict of ``DynamicDictionaryLearning`` (no prefix) is accepted too.
Only the ConvNeXt backbones (``model="convnext_*"``) have an rsseg counterpart. The layouts:

* Backbone: torchvision's ConvNeXt as ``Sequential(features, avgpool)``, hence ``backbone.0.<features
  index>``; ``features[0]`` is the stem, the odd indices the stages' blocks, the even ones the downsampling
  layers in front of stages 2–4. timm's ConvNeXt names them ``stem_*``, ``stages_i.blocks``,
  ``stages_i.downsample``; torchvision's layer scale is C×1×1, timm's ``gamma`` is C.
* Per-stage MLPs (``linear_c``) and the modulator's first MLP are ``nn.Linear`` on tokens; rsseg uses 1×1
  convolutions (C'×C → C'×C×1×1). The modulator's pooled branches are 1×1 convolutions on a 1×1 map; rsseg
  uses ``nn.Linear`` (C×C×1×1 → C×C).
* Modulator (Eq. 12–13): the released code max-pools the first half of its projected channels and
  average-pools the second, concatenated [max, avg]; rsseg average-pools the first and max-pools the
  second, concatenated [avg, max]. The halves of the projection's output rows and of the fusing MLP's
  input columns are swapped, which gives the same A.
* Aggregator (Eq. 10): the released code concatenates the stages in reverse order [F_4, F_3, F_2, F_1];
  rsseg in order [F_1, …, F_4], so the four column blocks of the 1×1 weight are reversed.
* Interaction blocks: ``cross_attn_token_to_image``/``norm2`` and ``cross_attn_image_to_token``/``norm4``
  are Eq. 15's two attentions. The blocks also build ``self_attn``, ``norm1``, ``mlp`` and ``norm3`` that
  their forward never calls; those keys (``NEVER_USED``) are dropped: they do not change the output.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rsseg.models.released.checks import few, load_strictly

__all__ = ["NEVER_USED", "convert_state_dict", "load_released_checkpoint"]

NEVER_USED = re.compile(r"^decoder\.interactor\.layers\.\d+\.(self_attn|norm1|mlp|norm3)\.")
"""Released parameters that no forward pass reads (InteractorBlock's SAM leftovers)."""

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^pe_layer\.positional_encoding_gaussian_matrix$", "positions.gaussian"),
        (r"^decoder\.token\.basic_queries\.", "generator.static."),
        (r"^decoder\.token\.token_mlp\.", "generator.expand."),
        (r"^decoder\.feature_modulator\.mlp2\.(0|2)\.", r"generator.modulator.fuse.\1."),
        (r"^decoder\.interactor\.layers\.(\d+)\.cross_attn_token_to_image\.", r"interactor.stages.\1.dict_to_image."),
        (r"^decoder\.interactor\.layers\.(\d+)\.norm2\.", r"interactor.stages.\1.dict_norm."),
        (r"^decoder\.interactor\.layers\.(\d+)\.cross_attn_image_to_token\.", r"interactor.stages.\1.image_to_dict."),
        (r"^decoder\.interactor\.layers\.(\d+)\.norm4\.", r"interactor.stages.\1.image_norm."),
        (r"^decoder\.interactor\.final_attn_token_to_image\.", "interactor.final."),
        (r"^decoder\.interactor\.norm_final_attn\.", "interactor.final_norm."),
        (r"^decoder\.upsampler\.1\.", "head.upscale.1."),
    ]
]
_TO_CONV = [  # nn.Linear on tokens → 1×1 convolution
    (re.compile(r"^linear_c\.(\d)\.proj\.(weight|bias)$"), r"encoder.stage_mlps.\1.\2"),
    (re.compile(r"^decoder\.feature_modulator\.mlp1\.proj\.(weight|bias)$"), r"generator.modulator.proj.\1"),
]
_TO_LINEAR = [  # 1×1 convolution on a pooled 1×1 map → nn.Linear
    (re.compile(r"^decoder\.feature_modulator\.gmp_branch\.1\.(weight|bias)$"), r"generator.modulator.max_mlp.\1"),
    (re.compile(r"^decoder\.feature_modulator\.gap_branch\.1\.(weight|bias)$"), r"generator.modulator.avg_mlp.\1"),
]
_HYPER_MLP = re.compile(r"^decoder\.output_hypernetwork_mlps\.layers\.(\d)\.(weight|bias)$")
_BACKBONE = re.compile(r"^backbone\.0\.(\d)\.(.+)$")
_BLOCK_PARTS = {"block.0.": "conv_dw.", "block.2.": "norm.", "block.3.": "mlp.fc1.", "block.5.": "mlp.fc2."}


def _backbone_key(index: int, rest: str, value: Tensor) -> tuple[str, Tensor] | None:
    """torchvision ``features[index].<rest>`` → timm ConvNeXt name (None if unknown)."""
    prefix = "encoder.backbone."
    if index == 0:
        m = re.fullmatch(r"([01])\.(weight|bias)", rest)
        return (f"{prefix}stem_{m[1]}.{m[2]}", value) if m else None
    if index % 2 == 0:  # downsampling in front of stage index // 2: LayerNorm2d, 2×2 conv
        m = re.fullmatch(r"([01])\.(weight|bias)", rest)
        return (f"{prefix}stages_{index // 2}.downsample.{m[1]}.{m[2]}", value) if m else None
    m = re.fullmatch(r"(\d+)\.(.+)", rest)
    if m is None:
        return None
    block, part = m[1], m[2]
    stage = f"{prefix}stages_{(index - 1) // 2}.blocks.{block}."
    if part == "layer_scale":
        return stage + "gamma", value.reshape(-1)
    for old, new in _BLOCK_PARTS.items():
        if part.startswith(old) and part[len(old):] in ("weight", "bias"):
            return stage + new + part[len(old):], value
    return None


def _convert_one(key: str, value: Tensor) -> tuple[str, Tensor] | None:
    if m := _BACKBONE.match(key):
        return _backbone_key(int(m[1]), m[2], value)
    if key == "aggregator.weight":  # columns [F_4 | F_3 | F_2 | F_1] → [F_1 | … | F_4]
        return "encoder.aggregator.weight", torch.cat(value.chunk(4, dim=1)[::-1], dim=1)
    for pattern, new in _TO_CONV:
        if pattern.match(key):
            return pattern.sub(new, key), value[..., None, None] if value.ndim == 2 else value
    for pattern, new in _TO_LINEAR:
        if pattern.match(key):
            return pattern.sub(new, key), value.flatten(1) if value.ndim == 4 else value
    if m := _HYPER_MLP.match(key):
        return f"head.dict_mlp.{2 * int(m[1])}.{m[2]}", value  # ReLUs sit between rsseg's Linears
    for pattern, new in _RENAMES:
        if pattern.match(key):
            return pattern.sub(new, key), value
    return None


def _swap_halves(value: Tensor, dim: int) -> Tensor:
    first, second = value.chunk(2, dim=dim)
    return torch.cat((second, first), dim=dim)


def _modulator_order(converted: dict[str, Tensor]) -> None:
    """Released [max of 1st half, avg of 2nd half] → rsseg [avg of 1st half, max of 2nd half], in place."""
    for name in ("generator.modulator.proj.weight", "generator.modulator.proj.bias"):
        if name in converted:
            converted[name] = _swap_halves(converted[name], 0)
    if "generator.modulator.fuse.0.weight" in converted:
        converted["generator.modulator.fuse.0.weight"] = _swap_halves(converted["generator.modulator.fuse.0.weight"], 1)


def convert_state_dict(released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``DynamicDictionaryLearning`` state dict (ConvNeXt backbone, no ``net.`` prefix) → rsseg ``D2LS`` names.

    ``NEVER_USED`` keys are dropped; any other key without an rsseg counterpart (a Swin/ResNet backbone,
    the ``has_conv``/``last_line`` ablations' ``decoder.output_head``) raises ``ValueError`` naming it.
    """
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, value in released.items():
        if NEVER_USED.match(key):
            continue
        out = _convert_one(key, value)
        if out is None:
            unknown.append(key)
        else:
            converted[out[0]] = out[1]
    if unknown:
        raise ValueError(f"unknown D2LS keys (only the ConvNeXt, default-decoder model converts): {few(unknown)}")
    _modulator_order(converted)
    return converted


def _read(path: Path) -> Mapping[str, Tensor]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as error:
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({error})") from error
    if isinstance(blob, Mapping) and isinstance(blob.get("state_dict"), Mapping):
        blob = blob["state_dict"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, Tensor) for v in blob.values()):
        raise ValueError(f"{path}: not a D2LS checkpoint (no 'state_dict' of tensors)")
    if any(k.startswith("net.") for k in blob):
        blob = {k[len("net."):]: v for k, v in blob.items() if k.startswith("net.")}
    return blob


def load_released_checkpoint(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a released D2LS ``.ckpt`` (or bare state dict) into ``net`` strictly; returns ``net``."""
    path = Path(path)
    head, interactor = getattr(net, "head", None), getattr(net, "interactor", None)
    if getattr(head, "kind", None) != "pixel_shuffle" or getattr(interactor, "final", None) is None:
        raise ValueError(
            f"{path}: released D2LS weights load into D2LS(head='pixel_shuffle', final_token_attention=True)"
        )
    try:
        state = convert_state_dict(_read(path))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return load_strictly(net, state, path)
