"""SDCITask: prompt tables, class mapping, SDCI's background protocol, and `rsseg test|fit` through the CLI."""

from pathlib import Path

import pytest
import torch

from rsseg.cli import main
from rsseg.data.datasets.isprs.labels import ISPRS_CLASSES
from rsseg.models.sdci.prompts import REMOTE_SENSING_TEMPLATES, load_prompts
from tests.sdci_tiny import TINY_SDCI

TINY_SDCI_NET = {"class_path": "rsseg.models.sdci.model.SDCI", "init_args": TINY_SDCI}

REPO = Path(__file__).resolve().parents[1]
POTSDAM_PROMPTS = REPO / "experiments/sdci/prompts/potsdam.yaml"


def test_prompt_tables_follow_the_paper():
    ori = load_prompts(POTSDAM_PROMPTS, "ori", ISPRS_CLASSES)
    assert ori.classes == (0, 1, 2, 3, 4) and ori.background == 5  # clutter is SDCI's background
    assert ori.names[0] == ("impervious surfaces",) and ori.distractors == (("other",),)
    assert ori.templates == REMOTE_SENSING_TEMPLATES and len(ori.templates) == 10
    gen = load_prompts(POTSDAM_PROMPTS, "gen", ISPRS_CLASSES)
    assert gen.names[0] == ("ground", "road", "streets") and gen.names[4] == ("vehicles",)  # Table 3
    predicted = load_prompts(POTSDAM_PROMPTS, "ori", ISPRS_CLASSES, background="predict")
    assert predicted.classes == (0, 1, 2, 3, 4, 5) and predicted.names[5] == ("other",)
    assert predicted.distractors == ()
    for dataset in ("vaihingen", "loveda"):
        from rsseg.data.datasets.loveda import LOVEDA_CLASSES

        classes = LOVEDA_CLASSES if dataset == "loveda" else ISPRS_CLASSES
        for setting in ("ori", "gen", "set_of_gen"):
            table = load_prompts(REPO / f"experiments/sdci/prompts/{dataset}.yaml", setting, classes)
            assert len(table.classes) == len(classes) - 1


def test_prompt_table_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  lake: {ori: [lake]}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: classes \['lake'\] are not classes"):
        load_prompts(bad, "ori", ISPRS_CLASSES)
    bad.write_text("background: {class: clutter}\nclasses:\n  building: {gen: [house]}\n")
    with pytest.raises(ValueError, match="bad.yaml: class 'impervious_surfaces' has no 'ori' prompts"):
        load_prompts(bad, "ori", ISPRS_CLASSES)
    with pytest.raises(ValueError, match="prompt setting must be one of"):
        load_prompts(POTSDAM_PROMPTS, "best", ISPRS_CLASSES)


def test_task_places_sdci_classes_and_ignores_the_background(monkeypatch):
    from rsseg.tasks.sdci import SDCITask

    task = SDCITask(num_classes=6, prompts=str(POTSDAM_PROMPTS), class_names=list(ISPRS_CLASSES),
                    net=TINY_SDCI_NET)
    task.set_classes()
    assert task.net.num_outputs == 5 and task.net.text.shape == (7, 32)  # 5 classes, "other", their mean
    probabilities = torch.softmax(torch.randn(1, 5, 4, 4), 1)
    monkeypatch.setattr(task.net, "forward", lambda image: probabilities)
    scores = task(torch.zeros(1, 3, 4, 4))
    torch.testing.assert_close(scores[:, :5], probabilities)
    assert (scores[:, 5] == 0).all()  # clutter is never predicted

    from rsseg.metrics import SegmentationMetrics

    metrics = SegmentationMetrics(6)
    task.test_boundary = None
    mask = torch.tensor([[[5, 0], [1, 5]]])
    task._update_metrics(torch.tensor([[[0, 0], [1, 1]]]), mask, metrics, "test")
    assert metrics.compute()["OA"] == pytest.approx(1.0)  # both clutter pixels were ignored


def test_rsseg_test_runs_sdci_and_fit_refuses(tiny_potsdam, tmp_path, capsys):
    import json

    protocol = json.loads((tiny_potsdam / "manifest.json").read_text())["protocol"]["name"]
    args = ["--config", str(REPO / "experiments/sdci/potsdam.yaml"),
            "--config", str(REPO / "experiments/sdci/smoke.yaml"),
            "--data.init_args.root", str(tiny_potsdam), "--data.init_args.protocol", protocol,
            "--data.init_args.num_workers", "0", "--model.init_args.prompts", str(POTSDAM_PROMPTS),
            "--model.init_args.inference_window", "64", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    main(["test", *args])
    printed = capsys.readouterr().out
    assert "test/mIoU" in printed and "test/boundary_WF" in printed
    main(["predict", *args, "--return_predictions", "false"])
    assert main(["fit", *args]) == 2
    assert "SDCI is training-free: there is nothing to fit" in capsys.readouterr().err
