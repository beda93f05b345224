"""SDCI's pretrained models (paper 002): open_clip ViT-L/14 with the ``openai`` tag and DINO through transformers
(DINOv2 ViT-B/14 with registers for SDCI-v2, DINO ViT-B/8 for SDCI-v1).

Where the libraries look (read from the installed sources, open_clip 3.3 / transformers 5):

* open_clip ``create_model("ViT-L-14", pretrained="openai")``: ``get_pretrained_cfg`` gives
  ``hf_hub="timm/vit_large_patch14_clip_224.openai/"`` (trailing slash: no file name), and ``download_pretrained``
  prefers the hub over the OpenAI URL whenever huggingface_hub is installed. ``download_pretrained_from_hf`` then
  asks for ``open_clip_model.safetensors`` first (``_get_safe_alternatives`` of ``open_clip_pytorch_model.bin``)
  and only falls back to the ``.bin``. ``load_checkpoint`` reads a plain open_clip state dict (the OpenAI JIT
  format is the URL path only, not taken when the hub is there). The repository gets the safetensors file the
  loader takes and ``open_clip_config.json`` written by open_clip's own ``save_config_for_hf``; the weights are
  those of ``create_model("ViT-L-14", force_quick_gelu=True)`` (the tag's ``quick_gelu``: the activation has no
  parameters, so the state dict is the same either way).
* transformers ``AutoModel.from_pretrained(id)``: ``config.json`` + ``model.safetensors``, written by
  ``save_pretrained`` of the architecture built from the configuration transformers' own conversion scripts
  use for these repositories (``convert_dinov2_with_registers_to_hf.py``: ``Dinov2WithRegistersConfig(
  image_size=518, patch_size=14)`` for ``dinov2_vitb14_reg``; ``convert_dino_to_pytorch.py``: ``ViTConfig()``
  with ``patch_size=8``, saved as ``ViTModel(config, add_pooling_layer=False)`` — so the real checkpoint has no
  pooler and ``AutoModel`` initialises ``pooler.dense`` afresh; SDCI never uses it). The image processors of
  those scripts are saved too (``preprocessor_config.json``); rsseg does not read them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from rsseg.rehearsal.common import (
    SafetensorsTensors,
    cached_file,
    experiment,
    paper_cli,
    parameters_m,
    printed_config,
    state_matches,
    synthetic_root,
    work_folder,
)
from rsseg.rehearsal.registry import Entry

CLIP_MODEL, CLIP_TAG = "ViT-L-14", "openai"
CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"  # open_clip's pretrained cfg (checked in the checks)
DINO_V2_REPO = "facebook/dinov2-with-registers-base"  # rsseg.models.sdci.structural.DINO_VERSIONS["v2"]
DINO_V1_REPO = "facebook/dino-vitb8"  # DINO_VERSIONS["v1"]
PAPER_CONFIG = "sdci/potsdam.yaml"
CROP = 512  # the paper's full 512² Potsdam tiles


# ----------------------------------------------------------------------------------------------- writers

def open_clip_hub(model_name: str = CLIP_MODEL, tag: str = CLIP_TAG) -> tuple[str, str | None]:
    """(repository, file name or None) open_clip downloads for ``model_name`` with ``tag``."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg or not cfg.get("hf_hub"):
        raise ValueError(f"open_clip has no hub repository for {model_name} / {tag}")
    repo_id, filename = os.path.split(cfg["hf_hub"])
    return repo_id, filename or None


def save_open_clip(model: torch.nn.Module, model_config: dict, folder: Path) -> None:
    """An open_clip hub repository: the state dict as ``open_clip_model.safetensors`` (what
    ``download_pretrained_from_hf`` asks for first) and ``open_clip_config.json`` (open_clip's own writer)."""
    import safetensors.torch
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.push_to_hf_hub import save_config_for_hf

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(folder / HF_SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    save_config_for_hf(model, folder / HF_CONFIG_NAME, model_config=model_config)


def write_clip(folder: Path) -> None:
    """``timm/vit_large_patch14_clip_224.openai``: random ViT-L/14 CLIP in open_clip's layout."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(CLIP_MODEL, CLIP_TAG)
    quick_gelu = bool(cfg.get("quick_gelu", False))
    model = open_clip.create_model(CLIP_MODEL, pretrained=None, force_quick_gelu=quick_gelu)
    model_config = open_clip.get_model_config(CLIP_MODEL)
    if quick_gelu:
        model_config["quick_gelu"] = True
    save_open_clip(model, model_config, folder)


def dino_v2_config(**overrides):
    """DINOv2 ViT-B/14 with registers as transformers' conversion script configures ``dinov2_vitb14_reg``."""
    from transformers import Dinov2WithRegistersConfig

    return Dinov2WithRegistersConfig(**{"image_size": 518, "patch_size": 14, **overrides})


def dino_v1_config(**overrides):
    """DINO ViT-B/8 as transformers' ``convert_dino_to_pytorch.py`` configures ``dino_vitb8``."""
    from transformers import ViTConfig

    return ViTConfig(**{"patch_size": 8, **overrides})


def save_dino_v2(config, folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2WithRegistersModel
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    Dinov2WithRegistersModel(config).eval().save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, resample=PILImageResampling.BICUBIC,
                      image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(folder)


def save_dino_v1(config, folder: Path) -> None:
    from transformers import ViTImageProcessor, ViTModel

    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder)  # base_model=True, as converted
    ViTImageProcessor().save_pretrained(folder)


def write_dino_v2(folder: Path) -> None:
    save_dino_v2(dino_v2_config(), folder)


def write_dino_v1(folder: Path) -> None:
    save_dino_v1(dino_v1_config(), folder)


def entries() -> list[Entry]:
    return [
        Entry(CLIP_REPO, "open_clip", "SDCI semantic branch (ViT-L-14, pretrained openai)", write_clip),
        Entry(DINO_V2_REPO, "transformers", "SDCI-v2 structural branch (dino_version v2)", write_dino_v2),
        Entry(DINO_V1_REPO, "transformers", "SDCI-v1 structural branch (dino_version v1)", write_dino_v1),
    ]


# ----------------------------------------------------------------------------------------------- checks

def _load_proof(checkpoint: Mapping[str, torch.Tensor], module: torch.nn.Module) -> dict:
    """state_matches of the checkpoint (keys as the library maps them: identity for open_clip's and
    transformers' base-model checkpoints here) against ``module``, plus the module's tensors the
    checkpoint lacks (initialised by the library)."""
    actual = module.state_dict()
    record = state_matches(checkpoint, actual)
    record["not_in_checkpoint"] = sorted(k for k in actual if k not in checkpoint)
    return record


def _clip_proof(net) -> dict:
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    repo_id, filename = open_clip_hub()
    if repo_id != CLIP_REPO or filename is not None:
        raise AssertionError(f"open_clip now loads {CLIP_MODEL}/{CLIP_TAG} from {repo_id}/{filename or ''}: "
                             f"the rehearsal writes {CLIP_REPO}")
    record = _load_proof(SafetensorsTensors(cached_file(repo_id, HF_SAFE_WEIGHTS_NAME)), net.clip)
    blocks = net.clip.visual.transformer.resblocks
    record["quick_gelu"] = type(blocks[0].mlp.gelu).__name__
    return record


class RenamedKeys(Mapping):
    """A checkpoint's tensors under the names ``rename`` gives its keys (None: a key the mapping cannot
    follow, which raises)."""

    def __init__(self, checkpoint: Mapping[str, torch.Tensor], rename) -> None:
        self.checkpoint = checkpoint
        self.names = {rename(k): k for k in checkpoint}
        if len(self.names) != len(checkpoint):
            raise AssertionError("two checkpoint tensors map to one module tensor")

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.checkpoint[self.names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def transformers_renamer(model):
    """Checkpoint key → module key as ``from_pretrained`` renames it (transformers 5 loads the hub's legacy
    names, e.g. ``encoder.layer.0.attention.attention.query``, into renamed modules such as
    ``encoder.layer.0.attention.q_proj``, through ``conversion_mapping``; ``save_pretrained`` reverses it).
    transformers 4 (no conversion mapping) loads these base-model checkpoints under their own names."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers < 5
        return lambda key: key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()

    def rename(key: str) -> str:
        renamed, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if converted is not None:  # a split or merge (e.g. SwiGLU weights): not a one-to-one tensor
            raise AssertionError(f"{key}: transformers converts it ({converted}), not a plain rename")
        return renamed

    return rename


def _dino_proof(net, repo_id: str) -> dict:
    dino = net.structural.dino
    checkpoint = RenamedKeys(SafetensorsTensors(cached_file(repo_id, "model.safetensors")), transformers_renamer(dino))
    record = _load_proof(checkpoint, dino)
    record["renamed_keys"] = sum(1 for new, old in checkpoint.names.items() if new != old)
    record["class"] = type(net.structural.dino).__name__
    return record


def _printed_net(overrides: list[str]) -> dict:
    printed = printed_config([experiment(PAPER_CONFIG)], overrides)
    net = printed["model"]["init_args"]["net"]["init_args"]
    shown = {k: net.get(k) for k in ("clip_model", "clip_pretrained", "dino_version", "dino_model",
                                     "dino_pretrained")}
    if (shown["clip_model"], shown["clip_pretrained"], shown["dino_pretrained"]) != (CLIP_MODEL, CLIP_TAG, True):
        raise AssertionError(f"{PAPER_CONFIG} as printed does not ask for the pretrained models: {shown}")
    return shown


def _test_batch(cli) -> dict:
    """One test batch through the Trainer (the task's test_step, full SDCI pipeline) with stage timings."""
    net = cli.model.net
    timings: dict = {}
    shapes: list = []
    forward = net.forward

    def timed_forward(image, timings_=None):
        shapes.append(list(image.shape))
        return forward(image, timings)

    net.forward = timed_forward
    started = time.perf_counter()
    try:
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    finally:
        del net.forward
    seconds = time.perf_counter() - started
    if len(shapes) != 1 or shapes[0][-2:] != [CROP, CROP]:
        raise AssertionError(f"expected one {CROP}² forward, got inputs {shapes}")
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    miou = next((v for k, v in metrics.items() if "miou" in k.lower()), None)
    if miou is None or not torch.isfinite(torch.tensor(miou)):
        raise AssertionError(f"no finite mIoU after the test batch: {metrics}")
    return {"test_batch_s": round(seconds, 1), "sdci_stage_s": {k: round(v, 2) for k, v in timings.items()},
            "input_shape": shapes[0], "test_miou_meaningless": round(miou, 4)}


def _sdci(dino_version: str, dino_repo: str) -> dict:
    from rsseg.models.sdci.structural import DINO_VERSIONS

    if DINO_VERSIONS[dino_version][0] != dino_repo:
        raise AssertionError(f"SDCI's {dino_version} DINO is now {DINO_VERSIONS[dino_version][0]}, not {dino_repo}")
    version = [] if dino_version == "v2" else ["--model.init_args.net.init_args.dino_version", dino_version]
    record: dict = {"repos": [CLIP_REPO, dino_repo], "printed": _printed_net(version)}
    if record["printed"]["dino_version"] != dino_version:
        raise AssertionError(f"printed dino_version {record['printed']['dino_version']}, expected {dino_version}")
    root = synthetic_root("potsdam", work_folder("sdci"), patch_size=CROP, protocol="official")
    cli, seconds = paper_cli([experiment(PAPER_CONFIG)], root, ["--trainer.limit_test_batches", "1", *version])
    net = cli.model.net
    record.update(load_s=round(seconds, 1), params_m=parameters_m(net), clip_params_m=parameters_m(net.clip),
                  dino_params_m=parameters_m(net.structural.dino))
    record["clip"] = _clip_proof(net)
    record["dino"] = _dino_proof(net, dino_repo)
    for part in ("clip", "dino"):
        if record[part]["missing"] or record[part]["differ"]:
            raise AssertionError(f"{part} checkpoint not loaded: {json.dumps(record[part])[:2000]}")
    record.update(_test_batch(cli))
    return record


def check_v2() -> dict:
    """SDCI-v2 on Potsdam as shipped: CLIP ViT-L/14 openai + DINOv2-B/14-reg, one 512² test batch."""
    return _sdci("v2", DINO_V2_REPO)


def check_v1() -> dict:
    """SDCI-v1 (``dino_version v1``): the same CLIP + DINO ViT-B/8, one 512² test batch."""
    return _sdci("v1", DINO_V1_REPO)


def checks() -> dict:
    return {"sdci/sdci_potsdam_v2": check_v2, "sdci/sdci_v1_dino": check_v1}
