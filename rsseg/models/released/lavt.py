"""LAVT's released checkpoints (``yz93/LAVT-RIS``) loaded into rsseg's LAVT: ``DANet(agent_alignment=False)``.

File format: ``train.py`` saves a ``.pth`` dict with ``model`` (the LAVT module's state dict: ``backbone.*``,
the ``MultiModalSwinTransformer``, and ``classifier.*``, the ``SimpleDecoding`` decoder), ``bert_model``
(the separate BERT, transformers naming, pooler removed), and ``optimizer``, ``epoch``, ``args`` (an
``argparse.Namespace``), ``lr_scheduler``. ``lavt_one`` checkpoints have no ``bert_model``: their BERT is
inside ``model`` as ``text_encoder.*``. The layouts (docs/methods.md §2.1):

* Swin: the original Swin naming (``layers.i.blocks``, patch merging at the *end* of stage i as
  ``layers.i.downsample``); timm's ``checkpoint_filter_fn`` moves it to the start of stage i+1 and drops
  the ``relative_position_index`` buffers. timm's patch merging concatenates the 2×2 neighbours in the
  original order, so no weight is permuted.
* PWAM and the language gate (``layers.i.fusion``, ``layers.i.res_gate``): 1×1 Conv1d weights (C×C×1)
  become Linear weights (C×C); ``norm{i}`` are the stage-output LayerNorms.
* Decoder: ``conv{1,2}_{4,3,2}``/``bn…`` are the three fusion blocks of ``TopDownDecoder``.
* Classifier: LAVT's 1×1 conv to 2 channels (background, target) followed by a softmax; rsseg keeps one
  logit, the target-minus-background difference (the same softmax: p(target) = σ(z₁ − z₀)), so the
  weights and biases are differenced.
* BERT: transformers' ``BertModel`` names, prefixed with ``text_encoder.model.``; ``pooler.*`` (LAVT
  discards the pooler, as rsseg does) and the ``embeddings.position_ids`` buffer (not a weight) are dropped.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rsseg.models.released.checks import few, load_strictly

__all__ = ["convert_state_dict", "load_released_checkpoint"]

_DECODER = {"4": 0, "3": 1, "2": 2}  # SimpleDecoding's suffix → TopDownDecoder.fuse index
_PWAM = {
    "vis_project.0": "vis_project.0",
    "image_lang_att.f_query.0": "query",
    "image_lang_att.f_key.0": "key",
    "image_lang_att.f_value.0": "value",
    "image_lang_att.W.0": "out",
    "project_mm.0": "project_mm.0",
}
_DROPPED_TEXT = re.compile(r"^(pooler\..*|embeddings\.position_ids)$")


class _SwinView(nn.Module):
    """The names timm's ``checkpoint_filter_fn`` looks up (``patch_embed``, ``layers``) on rsseg's encoder."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.patch_embed = encoder.patch_embed
        self.layers = encoder.stages


def _convert_backbone(backbone: Mapping[str, Tensor], net: nn.Module, unknown: list[str]) -> dict[str, Tensor]:
    from timm.models.swin_transformer import checkpoint_filter_fn

    out, swin = {}, {}
    for key, value in backbone.items():
        if m := re.fullmatch(r"layers\.(\d+)\.fusion\.(.+)\.(weight|bias)", key):
            stage, module, kind = m.groups()
            if module not in _PWAM:
                unknown.append(f"backbone.{key}")
                continue
            out[f"encoder.fusions.{stage}.{_PWAM[module]}.{kind}"] = value.squeeze(-1) if kind == "weight" else value
        elif m := re.fullmatch(r"layers\.(\d+)\.res_gate\.([02])\.weight", key):
            out[f"encoder.gates.{m[1]}.{m[2]}.weight"] = value
        elif m := re.fullmatch(r"norm(\d+)\.(weight|bias)", key):
            out[f"encoder.norms.{m[1]}.{m[2]}"] = value
        elif key.startswith(("patch_embed.", "layers.")):
            swin[key] = value  # original Swin naming: timm converts it
        else:
            unknown.append(f"backbone.{key}")
    view = _SwinView(net.encoder)
    wrong = []  # timm's filter would resize these silently: a different window or patch size is an error here
    for key, value in swin.items():
        if key.endswith("relative_position_bias_table") or key == "patch_embed.proj.weight":
            try:
                target = view.get_parameter(key)
            except AttributeError:
                continue  # a block the model lacks: reported as unexpected by the loader
            if target.shape != value.shape:
                wrong.append(f"backbone.{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    if wrong:
        raise ValueError(f"shape mismatch (checkpoint vs model; window or patch size?): {few(wrong)}")
    for key, value in checkpoint_filter_fn(swin, view).items():
        out["encoder." + re.sub(r"^layers\.", "stages.", key)] = value
    return out


def _convert_classifier(classifier: Mapping[str, Tensor], unknown: list[str]) -> dict[str, Tensor]:
    out = {}
    for key, value in classifier.items():
        if m := re.fullmatch(r"(conv|bn)([12])_([432])\.(.+)", key):
            kind, which, level, rest = m.groups()
            index = (0 if kind == "conv" else 1) + (3 if which == "2" else 0)
            out[f"decoder.fuse.{_DECODER[level]}.{index}.{rest}"] = value
        elif key in ("conv1_1.weight", "conv1_1.bias"):
            if value.shape[0] != 2:
                raise ValueError(f"classifier.{key} has {value.shape[0]} output channels, LAVT's has 2")
            out[f"classifier.{key.split('.')[1]}"] = value[1:] - value[:1]  # target minus background logit
        else:
            unknown.append(f"classifier.{key}")
    return out


def convert_state_dict(released: Mapping[str, Tensor], net: nn.Module,
                       bert: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """LAVT's ``model`` state dict (and ``bert_model``, or ``text_encoder.*`` inside ``model``) → ``net``'s names.

    ``net`` is the target rsseg ``DANet`` built with ``agent_alignment=False``; it is only read (timm's
    filter checks the patch-embedding and relative-position table sizes against it). Raises ``ValueError``
    naming the keys it does not know.
    """
    parts: dict[str, dict[str, Tensor]] = {"backbone": {}, "classifier": {}, "text_encoder": {}}
    unknown: list[str] = []
    for key, value in released.items():
        prefix, _, rest = key.partition(".")
        if prefix in parts and rest:
            parts[prefix][rest] = value
        else:
            unknown.append(key)
    text = parts["text_encoder"]
    if bert is not None:
        if text:
            raise ValueError("both a separate BERT state dict and text_encoder.* keys in the model were given")
        text = dict(bert)
    out = _convert_backbone(parts["backbone"], net, unknown) | _convert_classifier(parts["classifier"], unknown)
    out |= {f"text_encoder.model.{k}": v for k, v in text.items() if not _DROPPED_TEXT.match(k)}
    if unknown:
        raise ValueError(f"unknown LAVT keys: {few(unknown)}")
    return out


def _load_file(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):  # train.py also saves its args
        return torch.load(path, map_location="cpu", weights_only=True)


def load_released_checkpoint(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a LAVT ``.pth`` (``model`` + ``bert_model``, or a ``lavt_one`` ``model``) into ``net`` strictly.

    ``net``: rsseg's ``DANet(agent_alignment=False, pwam_heads=<--mha>, ...)`` with the checkpoint's Swin
    (``swin_base_patch4_window12_384`` for the released weights) and text encoder (``bert-base-uncased``).
    Raises ``ValueError`` naming the file and the missing, unexpected or mis-shaped parameters.
    """
    path = Path(path)
    checkpoint = _load_file(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise ValueError(f"{path}: not a LAVT checkpoint (no 'model' state dict)")
    if getattr(net, "classifier", None) is None:
        raise ValueError(f"{path}: LAVT checkpoints load into DANet(agent_alignment=False), this net has RAAM")
    try:
        state = convert_state_dict(checkpoint["model"], net, checkpoint.get("bert_model"))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return load_strictly(net, state, path)
