"""The SDCI rehearsal (issue 24): open_clip ViT-L/14 ``openai`` and the DINO models through transformers, written
as random weights of the real architectures into a Hugging Face cache and loaded offline (docs/rehearsal.md).

The heavy tests write the real-size repositories (about 2.4 GB) and run the checks (several GiB of memory,
minutes on a CPU): ``pytest -m heavy tests/test_rehearsal_sdci.py`` (cache: ``RSSEG_REHEARSAL_CACHE``, default
``.cache/rehearsal``). The light test writes tiny models of the same classes with the same writers and loads them
through the same library paths, offline, in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RSSEG_REHEARSAL_CACHE", REPO / ".cache" / "rehearsal"))
SDCI_REPOS = ["timm/vit_large_patch14_clip_224.openai", "facebook/dinov2-with-registers-base", "facebook/dino-vitb8"]

LIGHT_CHILD = textwrap.dedent("""
    import json, open_clip
    from open_clip import pretrained
    from rsseg.models.sdci.semantic import load_clip
    from rsseg.models.sdci.structural import load_dino
    from rsseg.rehearsal.common import SafetensorsTensors, cached_file
    from rsseg.rehearsal.sdci import (RenamedKeys, _load_proof, transformers_renamer,
                                      open_clip_hub, CLIP_REPO)
    from tests.sdci_tiny import TINY_CLIP

    # the tiny CLIP under a registered name and tag, the tag's cfg shaped as ViT-L-14 / openai's
    open_clip.factory._MODEL_CONFIGS["rsseg-tiny-clip"] = dict(TINY_CLIP)
    pretrained._PRETRAINED["rsseg-tiny-clip"] = {
        "openai": pretrained._pcfg(url="https://invalid.example/tiny.pt", hf_hub="rsseg-test/tiny-clip/",
                                   quick_gelu=True)}
    clip = load_clip("rsseg-tiny-clip", "openai")  # create_model: tag -> hub -> safetensors -> load_checkpoint
    proof = {"clip": _load_proof(SafetensorsTensors(cached_file("rsseg-test/tiny-clip", "open_clip_model.safetensors")),
                                 clip),
             "quick_gelu": type(clip.visual.transformer.resblocks[0].mlp.gelu).__name__,
             "vitl14_openai_hub": list(open_clip_hub()), "clip_repo": CLIP_REPO}
    for name in ("rsseg-test/tiny-dinov2-reg", "rsseg-test/tiny-dino-v1"):
        dino = load_dino(name)
        checkpoint = RenamedKeys(SafetensorsTensors(cached_file(name, "model.safetensors")), transformers_renamer(dino))
        proof[name] = {**_load_proof(checkpoint, dino), "class": type(dino).__name__}
    print(json.dumps(proof))
""")


def test_writers_save_files_the_loaders_take_offline(tmp_path):
    """The CLIP and DINO writers (same functions as the real-size repositories, tiny configurations) give hub
    repositories open_clip's tag path and transformers' AutoModel load offline, every tensor where it belongs."""
    import open_clip

    from rsseg.rehearsal import sdci
    from rsseg.rehearsal.hub import writing_repo
    from rsseg.rehearsal.run import offline_environment
    from tests.sdci_tiny import TINY_CLIP, TINY_DINO_V1, TINY_DINO_V2

    home = tmp_path / "hf"
    with writing_repo(home, "rsseg-test/tiny-clip") as folder:
        model = open_clip.model.CLIP(**TINY_CLIP, quick_gelu=True)
        model.visual.image_mean, model.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        sdci.save_open_clip(model, {**TINY_CLIP, "quick_gelu": True}, folder)
    with writing_repo(home, "rsseg-test/tiny-dinov2-reg") as folder:
        sdci.save_dino_v2(sdci.dino_v2_config(**{k: v for k, v in TINY_DINO_V2.items() if k != "model_type"}), folder)
    with writing_repo(home, "rsseg-test/tiny-dino-v1") as folder:
        sdci.save_dino_v1(sdci.dino_v1_config(**{k: v for k, v in TINY_DINO_V1.items() if k != "model_type"}), folder)

    child = subprocess.run([sys.executable, "-c", LIGHT_CHILD], cwd=REPO, env=offline_environment(home),
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    proof = json.loads(child.stdout.strip().splitlines()[-1])
    assert proof["vitl14_openai_hub"] == [proof["clip_repo"], None]
    assert proof["quick_gelu"] == "QuickGELU"
    assert proof["clip"]["tensors"] > 0 and not proof["clip"]["missing"] and not proof["clip"]["differ"]
    assert proof["clip"]["not_in_checkpoint"] == []
    v2, v1 = proof["rsseg-test/tiny-dinov2-reg"], proof["rsseg-test/tiny-dino-v1"]
    assert v2["class"] == "Dinov2WithRegistersModel" and v1["class"] == "ViTModel"
    for record in (v2, v1):
        assert record["tensors"] > 0 and not record["missing"] and not record["differ"]
    assert v2["not_in_checkpoint"] == []
    assert v1["not_in_checkpoint"] == ["pooler.dense.bias", "pooler.dense.weight"]  # DINO's hub checkpoint has none


@pytest.fixture(scope="module")
def sdci_cache():
    from rsseg.rehearsal.cache import write_cache

    records = write_cache(CACHE, only=SDCI_REPOS)
    assert {r["repo_id"] for r in records} == set(SDCI_REPOS)
    return CACHE


def _passed(record: dict) -> dict:
    assert "error" not in record, record.get("traceback", record["error"])
    for part in ("clip", "dino"):
        assert record[part]["tensors"] > 0
        assert record[part]["missing"] == [] and record[part]["differ"] == [], record[part]
    assert record["clip"]["not_in_checkpoint"] == []
    assert record["clip"]["quick_gelu"] == "QuickGELU"
    return record


@pytest.mark.heavy
def test_sdci_potsdam_v2(sdci_cache):
    from rsseg.rehearsal.run import run_check

    record = _passed(run_check("sdci/sdci_potsdam_v2", sdci_cache))
    assert record["dino"]["class"] == "Dinov2WithRegistersModel" and record["dino"]["not_in_checkpoint"] == []
    assert record["input_shape"][-2:] == [512, 512]


@pytest.mark.heavy
def test_sdci_v1_dino(sdci_cache):
    from rsseg.rehearsal.run import run_check

    record = _passed(run_check("sdci/sdci_v1_dino", sdci_cache))
    assert record["dino"]["class"] == "ViTModel"
    assert record["dino"]["not_in_checkpoint"] == ["pooler.dense.bias", "pooler.dense.weight"]
