"""IDGBR's pretrained models (paper 004): Stable Diffusion v1.5 (UNet, VAE, CLIP text encoder and tokenizer,
noise schedule) and REPA's DINOv2 ViT-g/14, written with random weights of the real architectures.

Where each configuration comes from (never hand-written key names: every file is saved by its library):

* UNet and VAE: diffusers' own single-file converter (``create_unet_diffusers_config_from_ldm`` and
  ``create_vae_diffusers_config_from_ldm`` in ``diffusers.loaders.single_file_utils``) applied to the original
  ``configs/stable-diffusion/v1-inference.yaml`` of CompVis/stable-diffusion (:data:`SD_V1_INFERENCE`, the
  parts the converter reads) at SD v1's 512² default image size (``DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP["v1"]``). The
  result must equal rsseg's :data:`rsseg.models.idgbr.SD15_UNET` / ``SD15_VAE`` (checked when writing).
* CLIP text encoder: open_clip's ``ViT-L-14`` text tower (``open_clip/model_configs/ViT-L-14.json``: width 768,
  12 heads, 12 layers, context 77, vocabulary 49408; MLP ratio 4 → 3072) as a transformers ``CLIPTextConfig``
  with CLIP's ``quick_gelu``; ``bos/eos_token_id`` 0/2 as in the hub's SD v1.5 ``text_encoder/config.json``
  (the legacy ids transformers' ``CLIPTextTransformer`` still special-cases: "eos_token_id was incorrect
  before PR #24773"); they only affect the pooled output, which rsseg does not use.
* Tokenizer: ``vocab.json`` / ``merges.txt`` derived from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` exactly
  as CLIP's ``SimpleTokenizer`` builds its vocabulary, saved by transformers' ``CLIPTokenizer.save_pretrained``;
  checked against open_clip's tokenizer on a few sentences when written.
* Scheduler: ``PNDMScheduler`` (what the hub's SD v1.5 ``scheduler/scheduler_config.json`` holds) with the
  v1-inference betas (``linear_start`` 0.00085, ``linear_end`` 0.012, 1000 steps, ``scaled_linear``); rsseg
  reads only the schedule from it (``IDGBR._pretrained_schedule``).
* DINOv2 giant: transformers' ``convert_dinov2_to_hf.get_dinov2_config("dinov2_vitg14")`` (image 518,
  patch 14, SwiGLU, hidden 1536, 40 layers, 24 heads), saved by ``Dinov2Model.save_pretrained``, with the
  converter's ``BitImageProcessor``.

``model_index.json`` and the pipeline's safety checker / feature extractor are not written: rsseg loads the
subfolders one by one and never reads them.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from rsseg.rehearsal.common import (
    SafetensorsTensors,
    experiment,
    fit_steps,
    parameters_m,
    printed_config,
    state_matches,
    synthetic_root,
    work_folder,
)
from rsseg.rehearsal.hub import snapshot
from rsseg.rehearsal.registry import Entry

SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DINO_REPO = "facebook/dinov2-giant"
CONFIG = "idgbr/potsdam.yaml"
LABEL_EMBEDDING_CONFIG = "idgbr/label_embedding_potsdam.yaml"
COARSE_NAME = "rehearsal"  # the synthetic coarse map set (the mask rolled by a few pixels)
STEP_CROP = 128  # idgbr_step's reduced crop: 128² image → 16² latents, 8×8 DINO tokens

# The parts of CompVis/stable-diffusion configs/stable-diffusion/v1-inference.yaml diffusers' converter reads.
SD_V1_INFERENCE = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "image_size": 64, "channels": 4,
    "conditioning_key": "crossattn", "scale_factor": 0.18215,
    "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
        "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768, "use_checkpoint": True,
        "legacy": False}},
    "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 512, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
}}}
TOKENIZER_PROBES = ("", "a photograph of an astronaut riding a horse",
                    "Building footprints, low vegetation & trees; cars (clutter) — 2,016 patches!")


# --- configurations ----------------------------------------------------------------------------------------
def sd15_configs() -> tuple[dict, dict]:
    """SD v1.5's UNet and VAE configs as diffusers' single-file converter derives them from v1-inference.yaml;
    an error if rsseg's SD15_UNET / SD15_VAE disagree."""
    import warnings

    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    from rsseg.models.idgbr import SD15_UNET, SD15_VAE

    size = DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP["v1"]
    unet = create_unet_diffusers_config_from_ldm(SD_V1_INFERENCE, {}, image_size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # image_size → sample_size: deprecated, still used
        vae = create_vae_diffusers_config_from_ldm(SD_V1_INFERENCE, {}, image_size=size)
    for name, ours, theirs in (("SD15_UNET", SD15_UNET, unet), ("SD15_VAE", SD15_VAE, vae)):
        differ = {k: (v, theirs.get(k)) for k, v in ours.items() if _plain(v) != _plain(theirs.get(k))}
        if differ:
            raise ValueError(f"rsseg.models.idgbr.{name} differs from diffusers' SD v1 conversion: {differ}")
    return unet, vae


def _plain(value):
    return list(value) if isinstance(value, tuple | list) else value


def clip_text_config():
    """SD v1.5's text encoder: CLIP ViT-L/14's text tower (open_clip's ViT-L-14.json)."""
    import open_clip
    from transformers import CLIPTextConfig

    text = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-L-14.json").read_text())["text_cfg"]
    return CLIPTextConfig(vocab_size=text["vocab_size"], hidden_size=text["width"], intermediate_size=4 * text["width"],
                          projection_dim=768, num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
                          max_position_embeddings=text["context_length"], hidden_act="quick_gelu",
                          layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def dinov2_giant_config():
    """transformers' convert_dinov2_to_hf.get_dinov2_config for dinov2_vitg14."""
    from transformers import Dinov2Config

    config = Dinov2Config(image_size=518, patch_size=14)
    config.use_swiglu_ffn = True
    config.hidden_size = 1536
    config.num_hidden_layers = 40
    config.num_attention_heads = 24
    return config


# --- the CLIP BPE vocabulary -------------------------------------------------------------------------------
def clip_bpe_files(folder: Path) -> tuple[Path, Path]:
    """``vocab.json`` and ``merges.txt`` of CLIP's BPE, from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` the
    way CLIP's SimpleTokenizer reads it: merges are lines 1 … 49152−256−2, the vocabulary is the 256 byte
    characters, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(merge) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != 49408 or len(set(vocab)) != len(vocab):
        raise ValueError(f"CLIP vocabulary of {len(vocab)} tokens ({len(set(vocab))} distinct), expected 49408")
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def tokenizer_agreement(tokenizer) -> dict:
    """transformers' ids of :data:`TOKENIZER_PROBES` against open_clip's (without padding); error if any differ."""
    import open_clip

    reference = open_clip.get_tokenizer("ViT-L-14")
    ids = {}
    for text in TOKENIZER_PROBES:
        theirs = [int(i) for i in reference([text])[0] if int(i) != 0]
        ours = tokenizer(text).input_ids
        if ours != theirs:
            raise ValueError(f"CLIPTokenizer gives {ours} for {text!r}, open_clip {theirs}")
        ids[text] = ours
    return ids


# --- writers ----------------------------------------------------------------------------------------------
def write_stable_diffusion(folder: Path, unet_config: dict | None = None, vae_config: dict | None = None,
                           text_config=None) -> None:
    """unet/, vae/, text_encoder/, tokenizer/ and scheduler/ of SD v1.5 (random weights), one model at a time.
    The configs default to SD v1.5's (:func:`sd15_configs`, :func:`clip_text_config`); the light test passes
    tiny ones of the same classes through the same code."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if unet_config is None or vae_config is None:
        unet_config, vae_config = sd15_configs()
    torch.manual_seed(0)
    for name, build in (("unet", lambda: UNet2DConditionModel(**unet_config)),
                        ("vae", lambda: AutoencoderKL(**vae_config))):
        model = build()
        model.save_pretrained(folder / name, safe_serialization=True)
        del model
        gc.collect()
    text_encoder = CLIPTextModel(text_config or clip_text_config())
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    del text_encoder
    gc.collect()
    # the hub's tokenizer/ holds vocab.json and merges.txt (no tokenizer.json): written as derived, with the
    # tokenizer_config.json transformers saves (its tokenizer.json, absent on the hub, is left out)
    (folder / "tokenizer").mkdir()
    vocab, merges = clip_bpe_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77, pad_token="<|endoftext|>")
    tokenizer_agreement(tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        (folder / "tokenizer" / "tokenizer_config.json").write_text(
            (Path(scratch) / "tokenizer_config.json").read_text())
    tokenizer_agreement(CLIPTokenizer.from_pretrained(folder / "tokenizer"))  # as the hub files load
    params = SD_V1_INFERENCE["model"]["params"]
    PNDMScheduler(num_train_timesteps=params["timesteps"], beta_start=params["linear_start"],
                  beta_end=params["linear_end"], beta_schedule="scaled_linear", skip_prk_steps=True,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")


def write_dinov2_giant(folder: Path, config=None) -> None:
    """config.json, model.safetensors and the converter's preprocessor_config.json of DINOv2 ViT-g/14 (``config``:
    another Dinov2Config, for the light test)."""
    from transformers import BitImageProcessor, Dinov2Model
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    torch.manual_seed(0)
    model = Dinov2Model(config or dinov2_giant_config()).eval()
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    BitImageProcessor(size={"shortest_edge": 256}, resample=PILImageResampling.BICUBIC,
                      image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(folder)


def entries() -> list[Entry]:
    return [
        Entry(SD_REPO, "diffusers+transformers", "rsseg.models.IDGBR (experiments/idgbr/*.yaml)",
              write_stable_diffusion),
        Entry(DINO_REPO, "transformers", "rsseg.tasks.IDGBRTask REPA (repa_model)", write_dinov2_giant),
    ]


# --- checks -------------------------------------------------------------------------------------------------


class ConvertedTensors(Mapping):
    """A checkpoint's tensors under the keys a transformers model holds them by: transformers ≥ 5 renames (and
    splits) some hub keys on load with its per-model conversion list (``conversion_mapping.py``; for Dinov2Model:
    ``attention.attention.query`` → ``attention.q_proj``, …, ``mlp.weights_in`` chunked into ``gate_proj`` and
    ``up_proj``) and reverses it on save, so the written file has the hub's keys. This applies the model's own
    list (``extract_weight_conversions_for_model``) to the file's keys; a transform of another kind is an error,
    not a silent skip."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], model) -> None:
        import re

        from transformers.conversion_mapping import extract_weight_conversions_for_model

        transforms = extract_weight_conversions_for_model(model) or []
        self._tensors = tensors
        self._index: dict[str, tuple[str, int | None, int, int]] = {}
        for key in tensors:
            targets: list[tuple[str, int | None, int, int]] = [(key, None, 1, 0)]
            for transform in transforms:
                kind = type(transform).__name__
                sources, outputs = list(transform.source_patterns), list(transform.target_patterns)
                if not any(re.search(src, targets[0][0]) for src in sources):
                    continue
                if kind == "WeightRenaming" and len(sources) == len(outputs) == 1:
                    targets = [(re.sub(sources[0], outputs[0], t[0]), *t[1:]) for t in targets]
                elif (kind == "WeightConverter" and len(sources) == 1 and len(transform.operations) == 1
                      and type(transform.operations[0]).__name__ == "Chunk"):
                    base = targets[0][0]
                    dim = transform.operations[0].dim
                    targets = [(re.sub(sources[0], out, base), i, len(outputs), dim) for i, out in enumerate(outputs)]
                else:
                    raise NotImplementedError(f"transformers weight transform {transform!r} on {key}")
            for target, chunk, count, dim in targets:
                self._index[target] = (key, chunk, count, dim)

    def __getitem__(self, key: str) -> torch.Tensor:
        source, chunk, count, dim = self._index[key]
        tensor = self._tensors[source]
        return tensor if chunk is None else tensor.chunk(count, dim=dim)[chunk]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _snapshot(repo_id: str) -> Path:
    folder = snapshot(os.environ["HF_HOME"], repo_id)
    if folder is None:
        raise FileNotFoundError(f"no rehearsal snapshot of {repo_id} under HF_HOME={os.environ['HF_HOME']}")
    return folder


def potsdam_root() -> Path:
    """Synthetic Potsdam prepared as the paper config's root is (official protocol, 512² patches; RGB: the
    synthetic twin has no IR band), with a coarse map set: each mask rolled 7 px (ignored pixels → class 0)."""
    from rsseg.data.core.io import read_image, write_png
    from rsseg.data.refinement.coarse import COARSE_DIR, RECORD_FORMAT, RECORD_NAME

    root = synthetic_root("potsdam", work_folder("idgbr"), patch_size=512, protocol="official")
    folder = root / COARSE_DIR / COARSE_NAME
    if not (folder / RECORD_NAME).is_file():
        splits = {}
        for split in ("train", "test"):
            masks = sorted((root / split / "masks").glob("*.png"))
            (folder / split).mkdir(parents=True, exist_ok=True)
            for mask_file in masks:
                mask = read_image(mask_file)
                coarse = torch.from_numpy(mask.astype("int64")).roll(7, dims=1)
                coarse[coarse > 5] = 0
                write_png(folder / split / mask_file.name, coarse.numpy().astype("uint8"))
            splits[split] = {"count": len(masks), "checkpoint": None, "checkpoint_sha256": None,
                             "created": "rehearsal", "model": {"class_path": "rolled mask (rehearsal)"}}
        (folder / RECORD_NAME).write_text(json.dumps({
            "format": RECORD_FORMAT, "name": COARSE_NAME, "dataset": "potsdam", "protocol": "official",
            "num_classes": 6, "splits": splits}, indent=1))
    return root


def label_embedding_checkpoint() -> tuple[Path, float]:
    """Stage 0 as the paper config runs it (``rsseg fit --config experiments/idgbr/label_embedding_potsdam.yaml``),
    cut to 2 optimiser steps: a real LabelEmbeddingTask checkpoint whose weights are essentially its random
    initialisation (lr 1e-5 × 2 steps). Returns its path and the seconds the stage took."""
    from rsseg.lightning_cli import build_cli

    folder = work_folder("idgbr") / "label_embedding"
    ckpt = folder / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt, 0.0
    started = time.perf_counter()
    build_cli(["fit", "--config", experiment(LABEL_EMBEDDING_CONFIG), "--trainer.max_steps", "2",
               "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
               "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(folder),
               "--trainer.enable_progress_bar", "false"])
    if not ckpt.is_file():
        raise FileNotFoundError(f"the label embedding stage wrote no {ckpt}")
    return ckpt, time.perf_counter() - started


def refiner_cli(root: Path, embedding: Path, overrides: list[str] = ()):
    """``rsseg fit --config experiments/idgbr/potsdam.yaml`` built without running, batch 1, CPU, no logger, on
    the synthetic ``root`` and its coarse maps, with the stage-0 checkpoint. common.paper_cli cannot serve
    here: IDGBR's datamodule wraps the dataset's (``--data.init_args.data.init_args.*``), and the config's
    ModelCheckpoint / LearningRateMonitor callbacks need checkpointing and a logger (dropped: ``callbacks []``).
    Returns (cli, seconds to build: SD v1.5 loads here)."""
    from rsseg.lightning_cli import build_cli

    inner = "--data.init_args.data.init_args."
    started = time.perf_counter()
    cli = build_cli(["--config", experiment(CONFIG), inner + "root", str(root), inner + "batch_size", "1",
                     inner + "num_workers", "0", "--data.init_args.coarse", COARSE_NAME,
                     "--model.init_args.label_embedding", str(embedding), "--trainer.callbacks", "[]",
                     "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
                     "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                     "--trainer.default_root_dir", str(work_folder("idgbr") / "runs"), *overrides], run=False)
    return cli, time.perf_counter() - started


def _rss_mib() -> float:
    return round(int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _trim() -> None:
    """Hand freed heap back to the OS (glibc keeps what from_pretrained's state dicts and copies freed)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _check_printed_config() -> dict:
    config = printed_config([experiment(CONFIG)])
    model = config["model"]["init_args"]
    net = model["net"]["init_args"]
    shown = {"net.pretrained": net["pretrained"], "net.sd_model": net["sd_model"], "repa_model": model["repa_model"],
             "repa_pretrained": model["repa_pretrained"], "repa_weight": model["repa_weight"]}
    if not (net["pretrained"] and net["sd_model"] == SD_REPO and model["repa_model"] == DINO_REPO
            and model["repa_pretrained"] and model["repa_weight"] > 0):
        raise AssertionError(f"experiments/{CONFIG} does not ask for the pretrained models: {shown}")
    return shown


def _unet_decoder(key: str) -> bool:
    return key.startswith(("up_blocks.", "conv_norm_out.", "conv_out."))


def stable_diffusion_loaded(net) -> dict:
    """Every tensor of the written unet/, vae/ and text_encoder/ files against what IDGBR holds (the guidance
    network's frozen encoder against the UNet file's encoder half), the empty-prompt context against the
    written text encoder, the tokenizer against open_clip, and the noise schedule against scheduler/."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = _snapshot(SD_REPO)
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    record = {
        "unet": state_matches(SafetensorsTensors(unet_file), net.unet.state_dict()),
        "guidance_encoder": state_matches(SafetensorsTensors(unet_file, lambda k: not _unet_decoder(k)),
                                          net.guidance.encoder.state_dict()),
        "vae": state_matches(SafetensorsTensors(folder / "vae" / "diffusion_pytorch_model.safetensors"),
                             net.vae.state_dict()),
    }
    record["guidance_encoder"]["not_copied"] = ("up_blocks.*, conv_norm_out.*, conv_out.* (the pseudo-siamese "
                                                "encoder drops the decoder half by design)")
    text_encoder = CLIPTextModel.from_pretrained(SD_REPO, subfolder="text_encoder")
    record["text_encoder"] = state_matches(SafetensorsTensors(folder / "text_encoder" / "model.safetensors"),
                                           text_encoder.state_dict())
    tokenizer = CLIPTokenizer.from_pretrained(SD_REPO, subfolder="tokenizer")
    tokens = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        context = text_encoder(tokens.input_ids).last_hidden_state
    record["context_equal"] = bool(torch.equal(context, net.context))
    record["tokenizer_ids"] = tokenizer_agreement(tokenizer)
    del text_encoder
    written = DDIMScheduler.load_config(SD_REPO, subfolder="scheduler")
    schedule = {k: net.scheduler.config[k] for k in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")}
    record["schedule"] = schedule
    record["schedule_equal"] = all(written[k] == v for k, v in schedule.items())
    record["params_m"] = {"unet": parameters_m(net.unet), "vae": parameters_m(net.vae),
                          "guidance_encoder": parameters_m(net.guidance.encoder),
                          "guidance_modules": parameters_m(net.guidance.blocks), "idgbr": parameters_m(net)}
    return record


def dino_loaded(task) -> tuple[dict, object]:
    """REPA's DINOv2 as the task builds it on the first training step (``IDGBRTask._dino_model``), timed, with
    every tensor of model.safetensors compared."""
    started = time.perf_counter()
    dino = task._dino_model()
    seconds = time.perf_counter() - started
    written = SafetensorsTensors(_snapshot(DINO_REPO) / "model.safetensors")
    record = state_matches(ConvertedTensors(written, dino.model), dino.model.state_dict())
    record.update(file_tensors=len(written), module_tensors=len(dino.model.state_dict()),
                  key_mapping="transformers' Dinov2Model conversion list (hub keys → q/k/v/o_proj, gate/up/down_proj)",
                  load_s=round(seconds, 1), params_m=parameters_m(dino.model), dim=dino.dim,
                  hidden_act=dino.model.config.hidden_act, use_swiglu_ffn=dino.model.config.use_swiglu_ffn)
    return record, dino


def _assert_loaded(record: dict) -> None:
    bad = {name: {k: part[k][:5] for k in ("missing", "differ") if part.get(k)} for name, part in record.items()
           if isinstance(part, dict) and (part.get("missing") or part.get("differ"))}
    flags = [k for k in ("context_equal", "schedule_equal") if record.get(k) is False]
    if bad or flags:
        raise AssertionError(f"pretrained tensors not loaded: {bad} {flags}")


def check_potsdam_load() -> dict:
    """experiments/idgbr/potsdam.yaml as shipped (pretrained SD v1.5 and DINOv2-g): built through the CLI from
    the rehearsal cache, every tensor compared."""
    record = {"repo_ids": [SD_REPO, DINO_REPO], "config": CONFIG, "printed": _check_printed_config()}
    root = potsdam_root()
    embedding, record["label_embedding_stage_s"] = label_embedding_checkpoint()
    cli, seconds = refiner_cli(root, embedding)
    record["load_s"] = round(seconds, 1)
    _trim()
    record["rss_after_build_mib"] = _rss_mib()
    record["params_m"] = parameters_m(cli.model)
    record["sd"] = stable_diffusion_loaded(cli.model.net)
    _assert_loaded(record["sd"])
    cli.model.net = torch.nn.Identity()  # SD's 1.4 B parameters go before DINOv2-g's 1.1 B come
    gc.collect()
    record["dino"], _ = dino_loaded(cli.model)
    _assert_loaded({"dino": record["dino"]})
    return record


def check_step() -> dict:
    """One training step of experiments/idgbr/potsdam.yaml (REPA active with DINOv2-g, bf16-mixed as configured)
    and one 2-step DDIM refinement, at a reduced 128² crop, batch 1, CPU; the UNet frozen for the step (see
    ``reduced``)."""
    record = {"repo_ids": [SD_REPO, DINO_REPO], "config": CONFIG, "printed": _check_printed_config()}
    root = potsdam_root()
    embedding, _ = label_embedding_checkpoint()
    cli, seconds = refiner_cli(root, embedding, [
        "--data.init_args.data.init_args.crop_size", str(STEP_CROP),
        "--model.init_args.inference_window", str(STEP_CROP), "--model.init_args.inference_steps", "2",
        "--trainer.max_steps", "1"])
    record["load_s"] = round(seconds, 1)
    _trim()
    task = cli.model
    record["sd"] = stable_diffusion_loaded(task.net)  # before any step
    _assert_loaded(record["sd"])
    record["dino"], _ = dino_loaded(task)
    _assert_loaded({"dino": record["dino"]})
    task.net.unet.requires_grad_(False)
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    record["reduced"] = {
        "crop": f"{STEP_CROP}² (paper 512²): latents 16², DINOv2 input 112² → 8×8 tokens",
        "unet_frozen_for_step": ("the denoising UNet (859.5 M) is frozen for the step: its gradients and AdamW "
                                 "state (≈ 10 GiB fp32) do not fit beside SD + DINOv2-g (≈ 10 GiB) on this shared "
                                 "CPU machine; gradients still flow through it to the guidance modules and the "
                                 "REPA projector, which train"),
        "trainable_params_m": round(trainable / 1e6, 2),
        "sampling": "inference_steps 2 (paper 25), guidance_scale 3 as configured, one 128² window",
        "callbacks": "ModelCheckpoint/LearningRateMonitor dropped (no checkpoint, no logger)",
    }
    watched = ("zero_conv", "repa_projector.mlp.4")
    before = {n: p.detach().clone() for n, p in task.named_parameters()
              if p.requires_grad and any(w in n for w in watched)}
    _trim()
    record["rss_before_step_mib"] = _rss_mib()
    record["step_s"], record["step_shapes"] = fit_steps(cli, 1)
    params = dict(task.named_parameters())
    record["changed_zero_convs"] = sum(not torch.equal(before[n], params[n].detach()) for n in before
                                       if "zero_conv" in n)
    record["max_update"] = {n: float((params[n].detach() - before[n]).abs().max()) for n in before
                            if "blocks.0." in n or "blocks.11." in n or "blocks.12." in n or "repa" in n}
    nonfinite = [n for n, p in params.items() if p.requires_grad and not torch.isfinite(p).all()]
    if nonfinite:
        raise FloatingPointError(f"non-finite parameters after the step: {nonfinite[:5]}")
    record["precision"] = str(cli.trainer.precision)
    logged = {k: round(float(v), 4) for k, v in cli.trainer.logged_metrics.items() if k.startswith("train/")}
    record["logged"] = logged
    if "train/loss_repa" not in logged:
        raise AssertionError(f"REPA did not run in the step: {logged}")
    task._dino = None  # what on_train_batch_start does once REPA ends
    gc.collect()
    batch = next(iter(cli.datamodule.train_dataloader()))
    task.eval()
    started = time.perf_counter()
    with torch.no_grad():
        logits = task.refine_logits(batch["image"], batch["coarse"])
    record["sample_s"] = round(time.perf_counter() - started, 1)
    record["sample_shape"] = list(logits.shape)
    if not torch.isfinite(logits).all() or logits.shape[-2:] != batch["image"].shape[-2:]:
        raise AssertionError(f"2-step DDIM gave {tuple(logits.shape)} (finite: {bool(torch.isfinite(logits).all())})")
    return record


def checks() -> dict[str, Callable[[], dict]]:
    return {"idgbr/idgbr_potsdam_load": check_potsdam_load, "idgbr/idgbr_step": check_step}
