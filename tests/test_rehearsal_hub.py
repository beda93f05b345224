"""The rehearsal cache's layout is the hub's: offline loaders find what ``writing_repo`` wrote, at the hub's
revision or at a pinned one, and an interrupted write leaves nothing that passes for a repository."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rsseg.rehearsal.hub import REHEARSAL_NOTE, rehearsal_revision, snapshot, writing_repo
from rsseg.rehearsal.run import offline_environment

PINNED = "00cb74e366966d59cd9a35af57e618af9f88efe9"


def _write_tiny_bert(folder):
    import transformers

    torch_config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=16)
    transformers.BertModel(torch_config).save_pretrained(folder)


def test_offline_loaders_read_what_was_written(tmp_path):
    with writing_repo(tmp_path, "org/tiny-bert") as folder:
        _write_tiny_bert(folder)
    with writing_repo(tmp_path, "org/pinned", revision=PINNED) as folder:
        (folder / "config.json").write_text('{"pinned": true}')
    assert snapshot(tmp_path, "org/tiny-bert").name == rehearsal_revision("org/tiny-bert")
    probe = (
        "import json, torch, transformers\n"
        "from huggingface_hub import hf_hub_download\n"
        "from safetensors.torch import load_file\n"
        "model = transformers.AutoModel.from_pretrained('org/tiny-bert')\n"
        "saved = load_file(hf_hub_download('org/tiny-bert', 'model.safetensors'))\n"
        "equal = all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())\n"
        f"pinned = json.load(open(hf_hub_download('org/pinned', 'config.json', revision='{PINNED}')))\n"
        "print(json.dumps({'equal': equal, 'n': len(saved), 'pinned': pinned}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=offline_environment(tmp_path), capture_output=True,
                         text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"equal": True, "n": result["n"], "pinned": {"pinned": True}} and result["n"] > 10


def test_an_interrupted_write_leaves_no_repository(tmp_path):
    with pytest.raises(RuntimeError), writing_repo(tmp_path, "org/broken") as folder:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("killed while saving the weights")
    assert snapshot(tmp_path, "org/broken") is None
    assert not list((tmp_path / "hub").rglob("config.json"))
    with writing_repo(tmp_path, "org/broken") as folder:
        (folder / "config.json").write_text("{}")
    assert (snapshot(tmp_path, "org/broken") / REHEARSAL_NOTE).read_text().startswith(
        "rsseg rehearsal cache: the weights in this folder are RANDOMLY INITIALISED")
