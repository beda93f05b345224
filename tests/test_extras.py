"""Optional dependencies (issue 23): rsseg without its extras imports, trains a baseline and computes metrics; a
method whose extra is missing fails when it is built, with one line naming the extra.

The optional packages are installed here, so the subprocesses hide them: a ``sys.meta_path`` finder makes every
import of them raise ``ModuleNotFoundError``, as if they were not installed. The static checks keep every
optional import behind :func:`rsseg.extras.require` and the ``all`` extra complete.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from rsseg.extras import DISTRIBUTIONS, MissingExtraError, require

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("transformers", "diffusers", "open_clip", "wandb", "skimage", "rasterio", "affine")  # import names
METHOD_EXTRAS = ("refer", "idgbr", "sdci", "wandb", "geo")

HIDDEN_DISTRIBUTIONS = tuple(DISTRIBUTIONS.get(name, name) for name in OPTIONAL)  # the pip names

# Hides the packages from imports, and their distributions from importlib.metadata (libraries such as
# torchmetrics read the metadata to decide whether to import transformers).
BLOCKER = textwrap.dedent(f"""
    import importlib.metadata
    import re
    import sys

    class _Hidden:
        '''Every optional package (and its submodules) as if it were not installed.'''

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _Hidden())
    _from_name = importlib.metadata.Distribution.from_name.__func__

    def _hidden_from_name(cls, name):
        if re.sub(r"[-_.]+", "-", name).lower() in {HIDDEN_DISTRIBUTIONS!r}:
            raise importlib.metadata.PackageNotFoundError(name)
        return _from_name(cls, name)

    importlib.metadata.Distribution.from_name = classmethod(_hidden_from_name)
""")


def run_without_extras(code: str, tmp_path: Path, setup: str = "", timeout: int = 300) -> dict:
    """Run ``setup`` then ``code`` in a fresh interpreter in ``tmp_path`` with the optional packages hidden;
    ``code`` prints one JSON line last, returned."""
    source = BLOCKER + textwrap.dedent(setup) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, text=True, capture_output=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_extras_rsseg_imports_and_a_baseline_trains(tmp_path):
    """Every rsseg module imports (metrics, data, tasks, models, the CLI…), a tiny UNet fits two steps on synthetic
    Potsdam with a finite loss, and the metrics compute."""
    result = run_without_extras("""
        import importlib, json, pkgutil
        import rsseg, rsseg.metrics, rsseg.data, rsseg.tasks, rsseg.models, rsseg.cli
        import torch

        for module in pkgutil.walk_packages(rsseg.__path__, "rsseg."):  # every module, not only these
            importlib.import_module(module.name)
        from lightning import Trainer, seed_everything
        from rsseg.data.datasets.potsdam import PotsdamDataModule
        from rsseg.metrics import SegmentationMetrics
        from rsseg.tasks import SMPSegmentationTask

        seed_everything(0)
        data = PotsdamDataModule("root", batch_size=2, crop_size=64, num_workers=0, pin_memory=False)
        net = {"class_path": "rsseg.models.SMPNet", "init_args": {"arch": "unet", "backbone": "resnet18",
               "pretrained": False, "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}}
        task = SMPSegmentationTask(net=net, num_classes=6, lr=1e-3, scheduler="none")
        losses = []
        task.on_train_batch_end = lambda outputs, batch, batch_idx: losses.append(float(outputs["loss"]))
        Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                limit_val_batches=0, accelerator="cpu", enable_model_summary=False).fit(task, datamodule=data)
        metrics = SegmentationMetrics(num_classes=3)
        metrics.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1, 1]]]))
        print(json.dumps({"losses": losses, "metrics": {k: float(v) for k, v in metrics.compute().items()
                                                        if torch.as_tensor(v).numel() == 1}}))
    """, tmp_path, _synthetic_potsdam(tmp_path))
    assert len(result["losses"]) == 2 and all(map(math.isfinite, result["losses"])), result
    assert result["metrics"] and all(map(math.isfinite, result["metrics"].values())), result


def test_without_extras_rsseg_fit_runs_with_its_logger_off(tmp_path):
    """``rsseg fit`` of the UNet smoke config: the CLI's own W&B handling must not need wandb either."""
    result = run_without_extras(f"""
        import json
        import rsseg.cli

        code = rsseg.cli.main(["fit", "--config", "{REPO}/experiments/unet/potsdam.yaml",
                               "--config", "{REPO}/experiments/unet/smoke.yaml",
                               "--config", "{REPO}/experiments/smoke/potsdam.yaml",
                               "--data.init_args.root", "root", "--data.init_args.crop_size", "64",
                               "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
                               "--model.init_args.net.init_args.arch_kwargs",
                               '{{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}',
                               "--trainer.default_root_dir", "out", "--trainer.max_steps", "2",
                               "--trainer.accelerator", "cpu", "--trainer.logger", "false"])
        print(json.dumps({{"code": code}}))
    """, tmp_path, _synthetic_potsdam(tmp_path))
    assert result["code"] == 0, result
    assert sorted((tmp_path / "out").rglob("*.ckpt")), "rsseg fit wrote no checkpoint"


def _synthetic_potsdam(tmp_path: Path) -> str:
    """Writes and prepares a small synthetic Potsdam under ``tmp_path/root`` (in the hidden environment too:
    the data pipeline is core); returns the code doing it, to run first."""
    return """
        from rsseg.data.datasets.potsdam import prepare_potsdam
        from rsseg.data.synthetic import write_synthetic_potsdam

        write_synthetic_potsdam("raw", seed=0, tiles={"2_11": (200, 180), "2_10": (150, 140), "2_13": (140, 150)})
        prepare_potsdam("raw", "root", patch_size=128, progress=False)
    """


BUILDS = {  # what a user builds → (the extra it names, the package it names)
    "DANet": ("from rsseg.models import DANet; DANet()", "refer", "transformers"),
    "LAVT": ("from rsseg.models import DANet; DANet(agent_alignment=False)", "refer", "transformers"),
    "DANetTask": ("from rsseg.tasks import DANetTask; DANetTask(net={'class_path': 'rsseg.models.DANet'})",
                  "refer", "transformers"),
    "referring tokenizer": ("from rsseg.data.datasets.referring import load_tokenizer; load_tokenizer('bert')",
                            "refer", "transformers"),
    "IDGBR": ("from rsseg.models import IDGBR; IDGBR(2, pretrained=False)", "idgbr", "diffusers"),
    "label autoencoder": ("from rsseg.tasks import LatentAutoencoderTask; "
                          "LatentAutoencoderTask('missing.pt', num_classes=2)", "idgbr", "diffusers"),
    "SDCI": ("from rsseg.models import SDCI; SDCI(clip_pretrained=None, dino_pretrained=False)", "sdci",
             "open-clip-torch"),
    "SDCI superpixels": ("import numpy as np; from rsseg.models.sdci.cscp import felzenszwalb_superpixels; "
                         "felzenszwalb_superpixels(np.zeros((8, 8, 3), np.uint8))", "sdci", "scikit-image"),
    "W&B summary": ("from rsseg.bench.summary import log_summary_run; log_summary_run(None, [], {}, {}, [], None)",
                    "wandb", "wandb"),
}


def test_building_a_method_without_its_extra_names_the_extra(tmp_path):
    """Each method fails when it is built (not when rsseg is imported) with a MissingExtraError whose one
    line says what to install."""
    result = run_without_extras(f"""
        import json
        from rsseg.extras import MissingExtraError

        builds, errors = {BUILDS!r}, {{}}
        for name, (code, extra, package) in builds.items():
            try:
                exec(code)
                errors[name] = None
            except MissingExtraError as error:
                errors[name] = str(error)
        print(json.dumps(errors))
    """, tmp_path)
    for name, (_, extra, package) in BUILDS.items():
        message = result[name]
        assert message is not None, f"{name} built without its extra"
        assert f"needs {package}: pip install 'rsseg[{extra}]'" in message and "\n" not in message, message


def test_require_returns_the_module_or_names_the_extra():
    assert require("json", "all", "x") is json
    with pytest.raises(MissingExtraError, match=r"^SDCI needs scikit-image: pip install 'rsseg\[sdci\]'$"):
        require("skimage.no_such_module_rsseg", "sdci", "SDCI")
    with pytest.raises(ImportError):  # the CLI and callers catching ImportError still see it
        require("no_such_module_rsseg", "geo", "GeoTIFF output")


def _optional_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """The ``import``/``from … import`` statements and ``importlib.import_module("…")`` / ``__import__`` calls
    of an optional package in a module, anywhere (lazy imports included)."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None)
                   in ("__import__", "import_module"))):
            names = [node.args[0].value]
        found += [(node.lineno, name) for name in names if name.partition(".")[0] in OPTIONAL]
    return found


# The rehearsal (make rehearse) exercises every method's stack at once: it needs rsseg[all] and checks all of it
# through rsseg.extras before it starts (rsseg.rehearsal.cache.require_all_extras), not at each import.
REHEARSAL = "rsseg/rehearsal/"
# Files whose owner has yet to route their optional imports through rsseg.extras (keep this list empty).
PENDING: dict[str, set[str]] = {}


def test_every_optional_import_goes_through_rsseg_extras():
    """A bare ``import transformers`` (or diffusers, open_clip, wandb, skimage, rasterio) anywhere in rsseg
    would break the package, or fail with a traceback instead of the extra's name, without that extra."""
    bare = []
    for path in sorted((REPO / "rsseg").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative == "rsseg/extras.py" or relative.startswith(REHEARSAL):
            continue
        bare += [f"{relative}:{line}: {name}" for line, name in _optional_imports(ast.parse(path.read_text()))
                 if name.partition(".")[0] not in PENDING.get(relative, ())]
    assert not bare, "import these through rsseg.extras.require(module, extra, what):\n" + "\n".join(bare)


def test_the_import_check_sees_lazy_and_dynamic_imports():
    code = "def f():\n    import transformers\n    from diffusers import X\n    importlib.import_module('wandb')\n"
    assert [name for _, name in _optional_imports(ast.parse(code))] == ["transformers", "diffusers", "wandb"]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_all_is_the_union_of_the_method_extras():
    extras = _extras()
    assert set(METHOD_EXTRAS) <= set(extras)
    union = {requirement for name in METHOD_EXTRAS for requirement in extras[name]}
    assert sorted(extras["all"]) == sorted(union)


def test_every_require_names_an_extra_that_installs_the_package():
    """``require("open_clip", "sdci", …)`` must point at an extra listing open-clip-torch (and the core must
    not list any optional package)."""
    extras = _extras()

    def packages(requirements: list[str]) -> set[str]:
        return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for r in requirements}

    core = packages(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert not core & {DISTRIBUTIONS.get(name, name) for name in OPTIONAL}, core
    calls = []
    for path in sorted((REPO / "rsseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) >= 2
                    and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                calls.append((path.name, node.args[0].value, node.args[1].value))
    assert len(calls) >= 10, calls
    for file, module, extra in calls:
        top = module.partition(".")[0]
        assert DISTRIBUTIONS.get(top, top) in packages(extras.get(extra, [])), (file, module, extra)


def test_the_command_line_reports_the_missing_extra_itself(capsys):
    """jsonargparse wraps a model's construction error in its own long message; the one line is the extra."""
    from rsseg.cli import _report_error
    from rsseg.extras import MissingExtraError

    try:
        try:
            raise MissingExtraError("DANet needs transformers: pip install 'rsseg[refer]'")
        except MissingExtraError as missing:
            raise ValueError("Does not validate against any of the Union subtypes … Given value: Namespace(…)") \
                from missing
    except ValueError as wrapped:
        assert _report_error("rsseg fit", wrapped, verbose=False) == 2
    assert capsys.readouterr().err == "rsseg fit: error: DANet needs transformers: pip install 'rsseg[refer]'\n"
