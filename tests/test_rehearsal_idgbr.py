"""Rehearsal of IDGBR's pretrained paths (rsseg.rehearsal.idgbr): Stable Diffusion v1.5 and DINOv2-g written with
random weights into a Hugging Face cache and loaded offline through experiments/idgbr/potsdam.yaml.

The heavy tests write ≈ 8.8 GB and need ≈ 11 GiB of memory (SD v1.5 and DINOv2-g side by side in the step):
    RSSEG_REHEARSAL_CACHE=.cache/rehearsal .venv/bin/python -m pytest -m heavy tests/test_rehearsal_idgbr.py
The light test writes tiny models of the same classes through the same writers and loads them offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsseg.rehearsal.hub import writing_repo
from rsseg.rehearsal.idgbr import DINO_REPO, SD_REPO, sd15_configs, write_dinov2_giant, write_stable_diffusion
from rsseg.rehearsal.run import offline_environment
from tests.idgbr_tiny import TINY_UNET, TINY_VAE

REPO = Path(__file__).resolve().parents[1]
CACHE = os.environ.get("RSSEG_REHEARSAL_CACHE", str(REPO / ".cache" / "rehearsal"))

OFFLINE_LOAD = r"""
import json, os, sys
from pathlib import Path
import torch
from rsseg.models.idgbr import IDGBR
from rsseg.models.repa import DinoPatchFeatures
from rsseg.rehearsal.common import state_matches
from rsseg.rehearsal.hub import snapshot
from rsseg.rehearsal.common import SafetensorsTensors
from rsseg.rehearsal.idgbr import DINO_REPO, SD_REPO, ConvertedTensors, tokenizer_agreement
from transformers import CLIPTokenizer

home = os.environ["HF_HOME"]
sd, dino_folder = snapshot(home, SD_REPO), snapshot(home, DINO_REPO)
net = IDGBR(6, sd_model=SD_REPO, pretrained=True, guidance_width=32, guidance_heads=2)
dino = DinoPatchFeatures(DINO_REPO, pretrained=True)
unet_file, vae_file = (sd / part / "diffusion_pytorch_model.safetensors" for part in ("unet", "vae"))
dino_file = SafetensorsTensors(dino_folder / "model.safetensors")
record = {
    "unet": state_matches(SafetensorsTensors(unet_file), net.unet.state_dict()),
    "vae": state_matches(SafetensorsTensors(vae_file), net.vae.state_dict()),
    "dino": state_matches(ConvertedTensors(dino_file, dino.model), dino.model.state_dict()),
    "context_nonzero": bool(net.context.abs().sum() > 0),
    "context_shape": list(net.context.shape),
    "tokenizer": tokenizer_agreement(CLIPTokenizer.from_pretrained(SD_REPO, subfolder="tokenizer"))[""],
    "beta_end": net.scheduler.config.beta_end,
}
print(json.dumps(record))
"""


def test_sd15_configs_are_diffusers_conversion_of_v1_inference():
    unet, vae = sd15_configs()  # raises if rsseg's SD15_UNET / SD15_VAE disagree
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    assert unet["sample_size"] == 64 and unet["attention_head_dim"] == 8 and unet["layers_per_block"] == 2
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["scaling_factor"] == 0.18215


def test_tiny_repos_written_by_the_writers_load_offline(tmp_path):
    """The same writers with tiny configs of the same classes: IDGBR(pretrained=True) and REPA's DINOv2 load every
    tensor from the hub layout offline, the empty prompt goes through the written tokenizer and text encoder."""
    from transformers import CLIPTextConfig, Dinov2Config

    text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)
    with writing_repo(tmp_path, SD_REPO) as folder:
        write_stable_diffusion(folder, TINY_UNET, TINY_VAE, text)
    with writing_repo(tmp_path, DINO_REPO) as folder:
        write_dinov2_giant(folder, Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                use_swiglu_ffn=True, image_size=56, patch_size=14))
    snapshot_files = sorted(str(p.relative_to(tmp_path)).split("/", 3)[-1]
                            for p in (tmp_path / "hub").rglob("*") if p.is_file() and "snapshots" in p.parts)
    for name in ("unet/diffusion_pytorch_model.safetensors", "unet/config.json", "vae/config.json",
                 "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                 "scheduler/scheduler_config.json", "model.safetensors", "preprocessor_config.json"):
        assert any(f.endswith(name) for f in snapshot_files), (name, snapshot_files)
    assert not any(f.endswith("tokenizer.json") for f in snapshot_files)  # the hub's SD v1.5 has none
    child = subprocess.run([sys.executable, "-c", OFFLINE_LOAD], capture_output=True, text=True, timeout=300,
                           env=offline_environment(tmp_path), cwd=REPO)
    assert child.returncode == 0, child.stderr[-3000:]
    record = json.loads(child.stdout.strip().splitlines()[-1])
    for part in ("unet", "vae", "dino"):
        assert record[part]["tensors"] > 0 and not record[part]["missing"] and not record[part]["differ"], record
    assert record["context_nonzero"] and record["context_shape"] == [1, 77, 32]
    assert record["tokenizer"] == [49406, 49407] and record["beta_end"] == 0.012


@pytest.fixture(scope="module")
def cache():
    from rsseg.rehearsal.cache import write_cache

    write_cache(CACHE, only=[SD_REPO, DINO_REPO])
    return CACHE


def _assert_clean(record: dict) -> None:
    assert "error" not in record, record.get("traceback", record["error"])
    parts = {**record["sd"], "dino": record["dino"]}
    for name, part in parts.items():
        if isinstance(part, dict) and "missing" in part:
            assert part["tensors"] > 0 and not part["missing"] and not part["differ"], (name, part)
    assert record["sd"]["context_equal"] and record["sd"]["schedule_equal"]


@pytest.mark.heavy
def test_idgbr_potsdam_loads_every_pretrained_tensor(cache):
    from rsseg.rehearsal.run import run_check

    record = run_check("idgbr/idgbr_potsdam_load", cache)
    _assert_clean(record)
    assert record["printed"]["net.pretrained"] and record["printed"]["repa_pretrained"]


@pytest.mark.heavy
def test_idgbr_training_step_and_ddim_sampling(cache):
    from rsseg.rehearsal.run import run_check

    record = run_check("idgbr/idgbr_step", cache)
    _assert_clean(record)
    assert len(record["step_s"]) == 1 and "train/loss_repa" in record["logged"]
    assert record["sample_shape"][1] == 6
