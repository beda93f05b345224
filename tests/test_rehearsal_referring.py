"""Rehearsal of the referring family's pretrained paths (LAVT, DANet): timm's Swin-B and BERT-base uncased.

The heavy tests write the real repositories (random weights) into the rehearsal cache and run the checks
offline (paper configs, load proofs, two training steps at 480²); run them with
``pytest -m heavy tests/test_rehearsal_referring.py`` (cache: ``RSSEG_REHEARSAL_CACHE``, default
``.cache/rehearsal``). The light test writes tiny models of the same classes with the same writers into a
temporary ``HF_HOME`` and loads them offline through rsseg's DANet and tokenizer loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsseg.rehearsal.hub import writing_repo
from rsseg.rehearsal.referring import BERT_REPO, SWIN_REPO, write_bert, write_swin
from rsseg.rehearsal.run import offline_environment

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RSSEG_REHEARSAL_CACHE", REPO / ".cache" / "rehearsal"))

TINY_SWIN = {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8]}
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}

PROBE = """
import json, sys
from rsseg.models.danet import DANet
from rsseg.rehearsal.referring import SWIN_MODEL, BERT_REPO, bert_proof, swin_proof, tokenizer_proof
kwargs = json.loads(sys.argv[1])
net = DANet(backbone=SWIN_MODEL, pretrained=True, img_size=96, backbone_kwargs=kwargs, text_encoder=BERT_REPO,
            text_train_layers=1, decoder_channels=16, agent_alignment=False)
print(json.dumps({"swin": swin_proof(net.encoder, SWIN_MODEL, 96, **kwargs), "bert": bert_proof(net.text_encoder.model),
                  "tokenizer": tokenizer_proof(BERT_REPO)}))
"""


def test_writers_save_files_the_loaders_accept(tmp_path):
    """Tiny Swin (window 6 in the file, 4 in the model: timm resizes the bias tables) and tiny BERT with the real
    vocabulary, written by the family's writers, load offline into DANet with every tensor accounted for."""
    with writing_repo(tmp_path, SWIN_REPO) as folder:
        write_swin(folder, img_size=96, window_size=6, **TINY_SWIN)
    with writing_repo(tmp_path, BERT_REPO) as folder:
        write_bert(folder, TINY_BERT)
    files = sorted(p.name for p in (tmp_path / "hub").rglob("*") if p.is_file() and "snapshots" in p.parts)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= set(files)
    child = subprocess.run([sys.executable, "-c", PROBE, json.dumps({**TINY_SWIN, "window_size": 4})],
                           env=offline_environment(tmp_path), capture_output=True, text=True, cwd=REPO)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    swin, bert, tokenizer = result["swin"], result["bert"], result["tokenizer"]
    assert swin["missing"] == ["norm.bias", "norm.weight"] and not swin["differ"]
    assert swin["classifier_removed"] == ["head.fc.bias", "head.fc.weight"]
    tables = [k for k in swin["changed_by_filter"] if k.endswith("relative_position_bias_table")]
    assert tables and len(tables) == len(swin["changed_by_filter"])  # window 6 → 4: resized by timm's filter
    assert bert["missing"] == ["pooler.dense.bias", "pooler.dense.weight"] and not bert["differ"]
    assert bert["pretraining_heads_unused"] and all(k.startswith("cls.") for k in bert["pretraining_heads_unused"])
    assert tokenizer["vocab_size"] == 30522 and tokenizer["vocab_is_source"] and tokenizer["lowercases"]


@pytest.mark.heavy
@pytest.mark.parametrize("check", ["referring/lavt_refsegrs", "referring/danet_refsegrs"])
def test_paper_config_loads_offline_and_trains(check):
    from rsseg.rehearsal.cache import write_cache
    from rsseg.rehearsal.run import run_check

    write_cache(CACHE, only=[SWIN_REPO, BERT_REPO])
    record = run_check(check, CACHE)
    assert "error" not in record, record.get("traceback", record.get("error"))
    for part, unused in (("swin", ["norm.bias", "norm.weight"]), ("bert", ["pooler.dense.bias",
                                                                           "pooler.dense.weight"])):
        assert record[part]["missing"] == unused and record[part]["differ"] == []
    assert record["swin"]["changed_by_filter"] == []  # window 12 kept at 480: nothing resized
    assert len(record["step_s"]) == 2 and record["crop"] == 480 and record["batch_size"] == 1
    assert record["rrsisd_names_same_models"]  # the RRSIS-D configs load the same two repositories
