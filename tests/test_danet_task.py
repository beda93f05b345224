"""DANetTask: the configs through the CLI, native-resolution scoring, and learning on the synthetic RefSegRS."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from rsseg.cli import main
from rsseg.data.synthetic.refsegrs import write_synthetic_refsegrs

REPO = Path(__file__).resolve().parents[1]
METHODS = ("danet", "lavt")


def read_metrics(root: Path) -> dict[str, float]:
    """Last logged value of every key in the CSVLogger files under ``root`` (fit, then test)."""
    values: dict[str, float] = {}
    for path in sorted(root.rglob("metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                values |= {k: float(v) for k, v in row.items() if v not in ("", None)}
    return values


@pytest.fixture(scope="module")
def tiny_refsegrs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refsegrs")
    write_synthetic_refsegrs(root, counts=(4, 2, 2), size=128)
    return root


def cli_args(method: str, root: Path, out: Path, **trainer) -> list[str]:
    tiny = out / "tiny.yaml"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out)}}
    tiny.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "max_steps": 2, "check_val_every_n_epoch": 1, "log_every_n_steps": 1,
                    "logger": logger,
                    "enable_progress_bar": False, "default_root_dir": str(out), **trainer},
        "data": {"init_args": {"root": str(root), "batch_size": 2, "num_workers": 0, "pin_memory": False,
                               "native_masks": True}},
    }))
    configs = [REPO / f"experiments/{method}/refsegrs.yaml", REPO / f"experiments/{method}/smoke.yaml",
               REPO / "experiments/smoke/refsegrs.yaml", tiny]
    return [arg for c in configs for arg in ("--config", str(c))]


@pytest.mark.parametrize("method", METHODS)
def test_config_fits_and_tests_through_the_cli(method, tiny_refsegrs, tmp_path):
    """experiments/<method>/refsegrs.yaml + <method>/smoke.yaml + smoke/refsegrs.yaml: fit, then test the checkpoint."""
    args = cli_args(method, tiny_refsegrs, tmp_path)
    main(["fit", *args])
    [checkpoint] = list(tmp_path.rglob("last.ckpt"))
    main(["test", *args, "--ckpt_path", str(checkpoint)])
    metrics = read_metrics(tmp_path)
    for prefix in ("val", "test", "test/native"):  # 128² LAVT protocol and the native 128² masks
        assert {f"{prefix}/{k}" for k in ("mIoU", "oIoU", "Pr@0.5", "Pr@0.9")} <= set(metrics)
    assert "train/loss_mask" in metrics
    assert ("train/loss_affinity" in metrics) == (method == "danet")
    hparams = yaml.safe_load(next(tmp_path.rglob("hparams.yaml")).read_text())
    assert hparams["net"]["init_args"]["agent_alignment"] == hparams["affinity_alignment"] == (method == "danet")


def test_danet_learns_the_synthetic_refsegrs(tmp_path):
    """A short CPU run (tiny Swin + the packaged pretrained MiniLM) must beat both trivial predictors on test.

    The synthetic sentences name a category and a half of the tile, so only a model that reads them can do
    better than "everything is the target" (oIoU = the target's share of all pixels) or "nothing is" (0).
    """
    root = tmp_path / "data"
    write_synthetic_refsegrs(root, counts=(160, 4, 40), size=128)
    args = cli_args("danet", root, tmp_path, max_steps=300, limit_val_batches=0, log_every_n_steps=10)
    args += ["--data.init_args.batch_size", "8", "--data.init_args.native_masks", "false"]
    main(["fit", *args])
    [checkpoint] = list(tmp_path.rglob("last.ckpt"))
    main(["test", *args, "--ckpt_path", str(checkpoint)])
    metrics = read_metrics(tmp_path)

    from rsseg.data.datasets.refsegrs import RefSegRSDataset
    from rsseg.metrics import ReferringMetrics

    test = RefSegRSDataset(root, "test", tokenizer="sentence-transformers/all-MiniLM-L6-v2", image_size=128)
    masks = torch.stack([test[i]["mask"] for i in range(len(test))])
    all_target = ReferringMetrics()
    all_target.update(torch.ones_like(masks), masks)
    trivial = all_target.compute()  # "nothing is the target" scores 0 on both
    assert metrics["test/oIoU"] > 1.6 * trivial["oIoU"], (metrics["test/oIoU"], trivial["oIoU"])
    assert metrics["test/mIoU"] > 1.6 * trivial["mIoU"], (metrics["test/mIoU"], trivial["mIoU"])
