"""docs/architecture.md's toy method is the whole change a new semantic method needs: its two files, taken from
the document as they are written there, train through ``rsseg fit`` (and the loss goes down)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import yaml
from lightning import Callback

from rsseg.cli import main

REPO = Path(__file__).resolve().parents[1]
LOSSES: list[float] = []


class LossRecorder(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        LOSSES.append(float(outputs["loss"]))


def documented_file(name: str, language: str) -> str:
    """The code block that follows the line naming ``name`` in docs/architecture.md."""
    text = (REPO / "docs/architecture.md").read_text()
    match = re.search(rf"`{re.escape(name)}` \(new file\):\n\n```{language}\n(.*?)\n```", text, re.DOTALL)
    assert match, f"docs/architecture.md has no {language} block for {name}"
    return match.group(1) + "\n"


def test_the_documented_toy_method_trains(tiny_potsdam, tmp_path, monkeypatch):
    model_file = tmp_path / "toy.py"
    model_file.write_text(documented_file("rsseg/models/toy.py", "python"))
    config = tmp_path / "potsdam.yaml"
    config.write_text(documented_file("experiments/toy/potsdam.yaml", "yaml"))
    assert yaml.safe_load(config.read_text())["model"]["init_args"]["net"]["class_path"] == "rsseg.models.toy.ToyNet"

    # the file as if it were rsseg/models/toy.py (the package itself is not touched)
    spec = importlib.util.spec_from_file_location("rsseg.models.toy", model_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "rsseg.models.toy", module)
    spec.loader.exec_module(module)

    LOSSES.clear()
    code = main(["fit", "--config", str(config), "--data.init_args.root", str(tiny_potsdam),
                 "--data.init_args.crop_size", "64", "--data.init_args.batch_size", "4",
                 "--data.init_args.num_workers", "0", "--trainer.max_steps", "40", "--trainer.logger", "false",
                 "--trainer.accelerator", "cpu", "--trainer.enable_checkpointing", "false",
                 "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--trainer.callbacks", "tests.test_architecture_example.LossRecorder"])
    assert code == 0 and len(LOSSES) == 40
    first, last = sum(LOSSES[:8]) / 8, sum(LOSSES[-8:]) / 8
    assert last < 0.9 * first, (first, last)
