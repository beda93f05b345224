"""D2LSTask: the Eq. 2–8 loss by hand, logging of every term, learning on a synthetic twin, the configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Trainer, seed_everything

from rsseg.cli import main
from rsseg.data.datasets.potsdam import PotsdamDataModule
from rsseg.data.registry import DATAMODULES
from rsseg.metrics import SegmentationMetrics
from rsseg.models.d2ls import D2LSOutput
from rsseg.tasks import D2LSTask
from rsseg.tasks.d2ls import D2LSLoss
from tests.test_cli_datasets import EVALUATION, TINY_SYNTH, tiny_synthetic_root

REPO = Path(__file__).resolve().parents[1]
SMALL = {"class_path": "rsseg.models.D2LS", "init_args": {"backbone": "convnext_atto", "pretrained": False,
                                                         "embed_dim": 64, "num_heads": 4, "drop_path_rate": 0.0}}


def _soft_ce(logits, target, eps, ignore=255):
    """(1 − ε)·NLL + ε·mean_k(−log p_k), averaged over non-ignored pixels (label-smoothed CE)."""
    logp = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    t = target.reshape(-1)
    keep = t != ignore
    logp, t = logp[keep], t[keep]
    nll = -logp[torch.arange(len(t)), t]
    return float(((1 - eps) * nll - eps * logp.mean(1)).mean())


def _dice(logits, target, smooth, ignore=255):
    """1 − (2·Σp·y + s)/(Σp + Σy + s) per class present in the target, mean over all classes (absent = 0)."""
    p = logits.softmax(1)
    keep = (target != ignore)[:, None].float()
    y = torch.nn.functional.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
    p, y = p * keep, y.float() * keep
    losses = []
    for k in range(logits.shape[1]):
        inter, card = float((p[:, k] * y[:, k]).sum()), float((p[:, k] + y[:, k]).sum())
        present = float(y[:, k].sum()) > 0
        losses.append((1 - (2 * inter + smooth) / (card + smooth)) if present else 0.0)
    return sum(losses) / len(losses)


def test_loss_terms_by_hand():
    g = torch.Generator().manual_seed(0)
    static, dynamic = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 2, (2, 4, 5), generator=g)  # class 2 absent
    target[0, 0, 0] = 255
    dictionary = torch.tensor([[[0.0], [2.0], [1.0]], [[2.0], [4.0], [1.0]]])  # centres 1, 3, 1
    con = (2 / 3) / (((1 - 3) ** 2 + 0 + (3 - 1) ** 2) / 3 + 1e-6)
    out = D2LSOutput(dynamic_logits=dynamic, static_logits=static, dynamic_dictionary=dictionary)

    terms = D2LSLoss()(out, target)
    ce_s, ce_d = _soft_ce(static, target, 0.05), _soft_ce(dynamic, target, 0.05)
    dice_s, dice_d = _dice(static, target, 0.05), _dice(dynamic, target, 0.05)
    assert float(terms["static_ce"]) == pytest.approx(ce_s, rel=1e-5)
    assert float(terms["static_dice"]) == pytest.approx(dice_s, rel=1e-5)
    assert float(terms["dynamic_ce"]) == pytest.approx(ce_d, rel=1e-5)
    assert float(terms["dynamic_dice"]) == pytest.approx(dice_d, rel=1e-5)
    assert float(terms["contrastive"]) == pytest.approx(con, rel=1e-5)
    assert float(terms["total"]) == pytest.approx(0.4 * (ce_s + dice_s) + ce_d + dice_d + con, rel=1e-5)

    code = D2LSLoss(static_dice=False, contrastive=False, label_smoothing=0.0)(out, target)
    assert "static_dice" not in code and "contrastive" not in code
    want = 0.4 * _soft_ce(static, target, 0.0) + _soft_ce(dynamic, target, 0.0) + dice_d
    assert float(code["total"]) == pytest.approx(want, rel=1e-5)

    static_only = D2LSLoss()(D2LSOutput(None, static, None), target)
    assert float(static_only["total"]) == pytest.approx(0.4 * (ce_s + dice_s), rel=1e-5)


def _datamodule(root) -> PotsdamDataModule:
    return PotsdamDataModule(root, batch_size=4, crop_size=96, num_workers=0, pin_memory=False)


def _trainer(**kwargs) -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                   enable_model_summary=False, **kwargs)


def test_training_logs_every_loss_term(tiny_potsdam):
    task = D2LSTask(net=SMALL, num_classes=6, test_per_class_wfm=False)
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(task, datamodule=_datamodule(tiny_potsdam))
    logged = set(trainer.callback_metrics)
    for term in ("static_ce", "static_dice", "static", "dynamic_ce", "dynamic_dice", "contrastive", "dynamic"):
        assert f"train/loss_{term}" in logged
    total = trainer.callback_metrics
    want = 0.4 * total["train/loss_static"] + total["train/loss_dynamic"]
    assert float(total["train/loss"]) == pytest.approx(float(want), rel=1e-5)


def test_learns_on_synthetic_potsdam(tiny_potsdam):
    """A short CPU run beats the majority-class predictor clearly on the held-out test split."""
    seed_everything(0)
    data = _datamodule(tiny_potsdam)
    task = D2LSTask(net=SMALL, num_classes=6, lr=2e-3, warmup_steps=5, test_per_class_wfm=False)
    _trainer(max_steps=100, limit_val_batches=0).fit(task, datamodule=data)
    [result] = _trainer().test(task, datamodule=data)

    data.setup("fit")
    counts = torch.zeros(6, dtype=torch.long)
    for sample in data.train_dataset:
        mask = sample["mask"]
        counts += torch.bincount(mask[mask < 6].flatten(), minlength=6)
    majority = SegmentationMetrics(6, exclude_from_mean=data.spec.exclude_from_mean)
    data.setup("test")
    for sample in data.test_dataset:
        majority.update(torch.full_like(sample["mask"], int(counts.argmax()))[None], sample["mask"][None])
    baseline = majority.compute()["mIoU"]
    assert not math.isnan(result["test/mIoU"])
    assert result["test/mIoU"] > baseline + 0.15, (result["test/mIoU"], baseline)


CONFIG_NAMES = {"chn6cug": "chn6_cug"}


@pytest.mark.parametrize("dataset", sorted(TINY_SYNTH))
def test_every_config_runs_with_its_smoke_profile(dataset, tmp_path):
    """experiments/d2ls/<dataset>.yaml + d2ls/smoke.yaml + smoke/<dataset>.yaml fit and evaluate through the CLI."""
    root = tiny_synthetic_root(dataset, tmp_path)
    command, data_args = EVALUATION[dataset]
    name = CONFIG_NAMES.get(dataset, dataset)
    tiny = tmp_path / "tiny.yaml"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}
    tiny.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "max_steps": 2, "check_val_every_n_epoch": 1, "logger": logger,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": {"init_args": {"net": {"init_args": {"embed_dim": 32, "num_heads": 4}}, "test_per_class_wfm": False}},
        "data": {"init_args": {"root": str(root), "batch_size": 2, "num_workers": 0, "pin_memory": False,
                               **data_args}},
    }))
    configs = [REPO / f"experiments/d2ls/{name}.yaml", REPO / "experiments/d2ls/smoke.yaml",
               REPO / f"experiments/smoke/{name}.yaml", tiny]
    args = [arg for c in configs for arg in ("--config", str(c))]
    main(["fit", *args])
    [checkpoint] = list(tmp_path.rglob("last.ckpt"))
    main([command, *args, "--ckpt_path", str(checkpoint)])
    assert DATAMODULES[dataset].__name__ in (REPO / f"experiments/d2ls/{name}.yaml").read_text()


def test_evaluation_loss_is_ce_plus_dice_under_the_cli(tiny_potsdam, capsys):
    """The dynamic branch's CE + Dice is D2LS's evaluation loss also from a config: the task's own default, not
    the shared task's CE that LightningCLI would otherwise pass explicitly."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "experiments/d2ls/potsdam.yaml"),
              "--config", str(REPO / "experiments/d2ls/smoke.yaml"), "--data.init_args.root", str(tiny_potsdam),
              "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["loss"] == "ce+dice"
    assert D2LSTask(net={"class_path": "rsseg.models.D2LS", "init_args": {"backbone": "convnext_atto",
                    "pretrained": False}}, num_classes=6).criterion.kind == "ce+dice"


def test_vaihingen_print_config_shows_the_paper_recipe(capsys):
    """Issue 21's acceptance: the Vaihingen config prints GeoSeg's training recipe and the D2LS README's d4 TTA."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "experiments/d2ls/vaihingen.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    assert data["train_transforms"][0] == {"recipe": "random_scale", "scales": [0.5, 0.75, 1.0, 1.25, 1.5]}
    assert data["train_transforms"][1:] == ["smart_crop", {"recipe": "rot90", "p": 0.5}, "flips"]
    assert (data["crop_size"], data["mosaic_ratio"]) == (512, 0.25)
    assert (model["inference_tta"], model["inference_scales"], model["inference_scale_interpolation"]) == (
        "d4", [0.5, 0.75, 1.0, 1.25, 1.5], "bicubic")
    assert model["net"]["init_args"]["num_stages"] == 2 and config["trainer"]["max_epochs"] == 105
