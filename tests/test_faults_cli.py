"""Faults of issue 18 at the command line: unpickled checkpoints, checkpoints that override the user's settings,
tracebacks instead of one-line errors, and shell injection through the Makefile."""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from rsseg.checkpoints import CheckpointError, reconcile_hparams
from rsseg.cli import main
from rsseg.data.core.errors import DataError
from rsseg.errors import original_message
from rsseg.tasks.idgbr import load_label_embedding

REPO = Path(__file__).resolve().parents[1]
UNET = [
    "--config", str(REPO / "experiments/unet/potsdam.yaml"), "--config", str(REPO / "experiments/unet/smoke.yaml"),
    "--config", str(REPO / "experiments/smoke/potsdam.yaml"),
]
TINY_ARCH = ["--model.init_args.net.init_args.arch_kwargs", '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}']


def _run_args(root: Path, out: Path) -> list[str]:
    return [
        "--data.init_args.root", str(root), "--data.init_args.crop_size", "64", "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0", "--trainer.default_root_dir", str(out), "--trainer.accelerator", "cpu",
        "--trainer.logger", "false", "--trainer.limit_test_batches", "1",
        "--trainer.callbacks", "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
        f"init_args: {{dirpath: {out}/ckpt, save_last: true}}}}]",
    ]


class RunsCode:
    """Unpickling this object creates ``marker`` (a stand-in for any command a crafted file could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _crafted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"net.table.weight": torch.zeros(6, 3)}, "payload": RunsCode(marker)}, path)
    return path, marker


@pytest.fixture(scope="module")
def unet_checkpoint(tiny_potsdam, tmp_path_factory) -> Path:
    """A UNet checkpoint (tiny architecture, 1 step) trained with ``inference_window`` unset."""
    out = tmp_path_factory.mktemp("unet_ckpt")
    main(["fit", *UNET, *TINY_ARCH, *_run_args(tiny_potsdam, out), "--trainer.max_steps", "1"])
    return out / "ckpt" / "last.ckpt"


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if ": error: " in line or "Traceback" in line]


# --------------------------------------------------------------------------------------------------
# Security


def test_crafted_label_embedding_checkpoint_runs_no_code(tmp_path):
    """Fault: IDGBR loaded the user-given label_embedding checkpoint with weights_only=False, so a crafted file
    ran a command before the "not a LabelEmbeddingTask checkpoint" error."""
    path, marker = _crafted_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="refused: the file holds Python objects"):
        load_label_embedding(str(path), 6)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is hostile: unpickled, it runs its code
    assert marker.exists()


def test_crafted_ckpt_path_runs_no_code(tiny_potsdam, tmp_path, capsys):
    """Fault: no user-supplied path may be unpickled; --ckpt_path is one."""
    path, marker = _crafted_checkpoint(tmp_path)
    assert main(["test", *UNET, *_run_args(tiny_potsdam, tmp_path), "--ckpt_path", str(path)]) == 2
    assert not marker.exists()
    assert _error_lines(capsys) == [f"rsseg test: error: {path}: refused: the file holds Python objects that would run "
                                    "code when loaded, which a checkpoint never needs (loaded with "
                                    "torch.load(weights_only=True)); use a checkpoint written by rsseg/Lightning or "
                                    "re-save its state_dict"]


def test_weights_only_false_is_refused(tiny_potsdam, tmp_path, capsys):
    """Fault: a config could switch Lightning's checkpoint loading to unpickling (weights_only: false)."""
    assert main(["test", *UNET, *_run_args(tiny_potsdam, tmp_path), "--weights_only", "false"]) == 2
    assert "--weights_only false would unpickle the checkpoint" in _error_lines(capsys)[0]


def _refuses_globals(node: ast.ClassDef) -> bool:
    """A ``pickle.Unpickler`` subclass is safe only if its ``find_class`` does nothing but raise."""
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "find_class":
            body = [s for s in item.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            return len(body) == 1 and isinstance(body[0], ast.Raise)
    return False


def _unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that can unpickle: torch.load without weights_only=True, pickle loads, allow_pickle,
    an unrestricted ``pickle.Unpickler``; and Unpickler subclasses whose ``find_class`` does not just raise."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and "pickle.Unpickler" in map(ast.unparse, node.bases):
            if not _refuses_globals(node):
                found.append(f"line {node.lineno}: class {node.name}(pickle.Unpickler): find_class does not refuse")
            continue
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        safe_torch = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        if (name == "torch.load" and not safe_torch) or name in ("pickle.load", "pickle.loads", "pickle.Unpickler") or (
                isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is True):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_package_never_unpickles():
    """Acceptance: no torch.load(..., weights_only=False) (or any other unpickling) anywhere in the package."""
    assert _unsafe_loads("x = torch.load(p, weights_only=False)\ny = torch.load(p)\nz = np.load(p, allow_pickle=True)"
                         "\nok = torch.load(p, map_location='cpu', weights_only=True)") == [
        "line 1: torch.load(p, weights_only=False)", "line 2: torch.load(p)", "line 3: np.load(p, allow_pickle=True)"]
    restricted = ("class P(pickle.Unpickler):\n    def find_class(self, module, name):\n        'No globals.'\n"
                  "        raise DataError(name)\nx = P(f).load()")
    permissive = "class Q(pickle.Unpickler):\n    def find_class(self, module, name):\n        return print\n"
    assert _unsafe_loads(restricted) == []
    assert _unsafe_loads(permissive + "y = pickle.Unpickler(f).load()") == [
        "line 1: class Q(pickle.Unpickler): find_class does not refuse", "line 4: pickle.Unpickler(f)"]
    offenders = {str(path.relative_to(REPO)): hits for path in sorted((REPO / "rsseg").rglob("*.py"))
                 if (hits := _unsafe_loads(path.read_text()))}
    assert offenders == {}


def test_makefile_passes_values_as_single_arguments(tmp_path):
    """Fault: the Makefile put DATASET, DATA_ROOT, METHODS … into the shell unquoted (`DATASET='potsdam; touch x'`
    ran `touch x`; `DATA_ROOT="/data/my potsdam"` split in two)."""
    values = {"DATASET": "potsdam; touch x", "DATA_ROOT": "/data/my potsdam", "METHODS": "unet,it's",
              "DEVICES": "2 `touch y`", "STRATEGY": "ddp"}
    printed = subprocess.run(["make", "-s", "-n", "-o", "install", "bench", *(f"{k}={v}" for k, v in values.items())],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    command = shlex.split(printed.replace("\\\n", " "))
    assert command[1:] == ["bench", "potsdam; touch x", "--profile", "smoke", "--data-root", "/data/my potsdam",
                           "--methods", "unet,it's", "--", "--trainer.devices", "2 `touch y`",
                           "--trainer.strategy", "ddp"]


# --------------------------------------------------------------------------------------------------
# Checkpoints and explicit settings


def test_reconcile_keeps_explicit_values_and_reports_them():
    stored = {"_class_path": "T", "arch": "deeplabv3plus", "window": None, "sizes": [1, 2], "gone": 1, "lr": 0.1}
    configured = {"arch": "unet", "window": 256, "sizes": (1, 2), "lr": 0.5}
    report = reconcile_hparams(stored, configured, explicit={"arch", "window", "sizes"})
    assert report.from_checkpoint == {"lr": 0.1}
    assert report.overridden == {"arch": ("unet", "deeplabv3plus"), "window": (256, None)}  # sizes equal as lists
    assert report.unknown == ["gone"]
    assert report.describe() == "arch='unet' (checkpoint: 'deeplabv3plus'), window=256 (checkpoint: None)"


def test_explicit_model_arguments_win_over_the_checkpoint(unet_checkpoint, tiny_potsdam, tmp_path, caplog):
    """Fault: --ckpt_path silently replaced explicit model arguments (`--model.init_args.inference_window 256`
    tested with window None); settings the user did not give still come from the checkpoint (here its tiny
    arch_kwargs, without which its weights would not load)."""
    out = tmp_path / "test"
    assert main(["test", *UNET, *_run_args(tiny_potsdam, out), "--model.init_args.inference_window", "96",
                 "--model.init_args.inference_overlap", "16", "--ckpt_path", str(unet_checkpoint)]) == 0
    used = yaml.safe_load((out / "config.yaml").read_text())["model"]["init_args"]
    assert used["inference_window"] == 96 and used["inference_overlap"] == 16
    assert used["net"]["init_args"]["arch_kwargs"] == {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
    assert "inference_window=96 (checkpoint: None), inference_overlap=16 (checkpoint: 0)" in caplog.text


def test_checkpoint_of_another_architecture_is_reported(unet_checkpoint, tiny_potsdam, tmp_path, capsys):
    """Fault: a DeepLabV3+ checkpoint given with the UNet config evaluated DeepLabV3+ without a word (here the
    mirror case: a UNet checkpoint with the DeepLabV3+ config)."""
    deeplab = ["--config", str(REPO / "experiments/deeplabv3plus/potsdam.yaml"),
               "--config", str(REPO / "experiments/deeplabv3plus/smoke.yaml")]
    assert main(["test", *deeplab, "--config", str(REPO / "experiments/smoke/potsdam.yaml"),
                 *_run_args(tiny_potsdam, tmp_path), "--ckpt_path", str(unet_checkpoint)]) == 2
    [line] = _error_lines(capsys)
    assert line.startswith(f"rsseg test: error: {unet_checkpoint}: ")
    assert "arch='deeplabv3plus' (checkpoint: 'unet')" in line


def test_checkpoint_of_another_class_is_refused(unet_checkpoint, tiny_potsdam, tmp_path, capsys):
    d2ls = ["--config", str(REPO / "experiments/d2ls/potsdam.yaml"),
            "--config", str(REPO / "experiments/d2ls/smoke.yaml")]
    assert main(["test", *d2ls, *_run_args(tiny_potsdam, tmp_path), "--ckpt_path", str(unet_checkpoint)]) == 2
    assert _error_lines(capsys) == [
        f"rsseg test: error: {unet_checkpoint}: a rsseg.tasks.SMPSegmentationTask checkpoint, but the configuration "
        "builds a rsseg.tasks.D2LSTask; use the config it was trained with"]


def test_explicit_num_classes_that_contradicts_the_data_is_an_error(tiny_potsdam, tmp_path, capsys):
    """Fault: `--model.init_args.num_classes 3` was silently replaced by the datamodule's 6."""
    assert main(["validate", *UNET, *TINY_ARCH, *_run_args(tiny_potsdam, tmp_path),
                 "--model.init_args.num_classes", "3"]) == 2
    assert _error_lines(capsys) == ["rsseg validate: error: --model.init_args.num_classes 3 contradicts the data: "
                                    "PotsdamDataModule has 6 classes (num_classes comes from the datamodule; drop the "
                                    "setting)"]


@pytest.mark.parametrize("kind", ["missing", "text", "folder"])
def test_bad_ckpt_path_is_one_line(kind, tiny_potsdam, tmp_path, capsys):
    """Faults: a nonexistent --ckpt_path and a text file given as checkpoint gave tracebacks."""
    path = tmp_path / "model.ckpt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "folder":
        path.mkdir()
    assert main(["test", *UNET, *_run_args(tiny_potsdam, tmp_path), "--ckpt_path", str(path)]) == 2
    [line] = _error_lines(capsys)
    expected = {"missing": "no such file (expected a checkpoint)", "text": "not a PyTorch checkpoint (",
                "folder": "is a folder (expected a checkpoint)"}[kind]
    assert line.startswith(f"rsseg test: error: {path}: {expected}")


# --------------------------------------------------------------------------------------------------
# One-line errors


def test_data_error_in_a_dataloader_worker_is_one_line(tiny_potsdam, tmp_path, capsys):
    """Fault: a DataError under fit/test/validate came as a 115-line DataLoader worker traceback with the file
    name at the bottom."""
    root = tmp_path / "root"
    shutil.copytree(tiny_potsdam, root)
    broken = sorted((root / "test" / "images").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    args = _run_args(root, tmp_path)
    args[args.index("--data.init_args.num_workers") + 1] = "1"
    assert main(["test", *UNET, *TINY_ARCH, *args]) == 2
    [line] = _error_lines(capsys)
    assert line.startswith(f"rsseg test: error: {broken}: cannot read image")


def test_original_message_of_a_worker_error():
    from torch._utils import ExceptionWrapper

    try:
        raise DataError("a.png: cannot read image (OSError: truncated)")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)
    assert original_message(caught.value) == "a.png: cannot read image (OSError: truncated)"


def test_unexpected_errors_are_one_line_and_verbose_shows_the_traceback(monkeypatch, capsys):
    def broken(argv):
        raise RuntimeError("something\nwent wrong")

    monkeypatch.setattr("rsseg.cli._main", broken)
    assert main(["fit", "--config", "x.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "rsseg fit: error: something went wrong [RuntimeError; rerun with --verbose for the traceback]"]
    assert main(["fit", "--verbose", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1] == "rsseg fit: error: something went wrong"


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr("rsseg.cli._main", interrupted)
    assert main(["prepare", "potsdam"]) == 130
    assert capsys.readouterr().err.splitlines() == ["rsseg prepare: interrupted"]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--patch-size", "0"], "--patch-size must be a positive integer, got 0"),
    (["--stride", "0"], "--stride must be between 1 and --patch-size (1024), got 0"),
    (["--patch-size", "100000"], "--patch-size 100000 is larger than the largest source tile"),
    (["--protocol", "nope"], "unknown Potsdam protocol 'nope'; choose one of"),
    (["--dst", "."], "exists and is not a prepared dataset (no manifest.json); refusing to overwrite it"),
])
def test_prepare_argument_errors_are_one_line(flags, expected, tiny_potsdam_raw, tmp_path, monkeypatch, capsys):
    """Faults: `--dst .`, `--patch-size 0`, `--stride 0`, an unknown `--protocol` and `--patch-size 100000` (which
    tried to allocate 27.9 GiB) gave tracebacks; now one line each, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    args = ["prepare", "potsdam", "--src", str(tiny_potsdam_raw), "--dst", str(tmp_path / "out"), *flags]
    assert main(args) == 2
    [line] = _error_lines(capsys)
    assert line.startswith("rsseg prepare: error: ") and expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
