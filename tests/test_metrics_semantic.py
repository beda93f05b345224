"""SegmentationMetrics against a float64 numpy confusion matrix and torchmetrics' own classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from rsseg.metrics import SegmentationMetrics


def numpy_reference(preds: np.ndarray, target: np.ndarray, k: int, ignore: int, exclude=(), absent="nan"):
    """First-principles metrics from pixel sets, float64, independent of the implementation."""
    valid = target != ignore
    p, t = preds[valid], target[valid]
    cm = np.zeros((k, k), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            cm[i, j] = np.sum((t == i) & (p == j))
    out = {}
    ious, f1s = [], []
    for c in range(k):
        tp = np.sum((t == c) & (p == c))
        fp = np.sum((t != c) & (p == c))
        fn = np.sum((t == c) & (p != c))
        if tp + fp + fn == 0:
            vals = (math.nan,) * 4 if absent == "nan" else (0.0,) * 4
        else:
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            vals = (tp / (tp + fp + fn), f1, prec, rec)
        for name, v in zip(("IoU", "F1", "Precision", "Recall"), vals, strict=True):
            out[f"{name}/class{c}"] = v
        if c not in exclude:
            ious.append(vals[0])
            f1s.append(vals[1])
    out["mIoU"] = float(np.nanmean(ious))
    out["mF1"] = float(np.nanmean(f1s))
    n = t.size
    po = np.mean(p == t)
    pe = sum(np.sum(t == c) * np.sum(p == c) for c in range(k)) / n**2
    out["OA"] = po
    out["Kappa"] = (po - pe) / (1 - pe)
    return out, cm


def assert_dicts_close(got: dict, ref: dict, tol: float = 1e-12):
    assert set(ref) <= set(got)
    for key, v in ref.items():
        if math.isnan(v):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(v, abs=tol), key


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_match_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    m = SegmentationMetrics(k, exclude_from_mean=(k - 1,) if seed % 2 else ())
    all_p, all_t = [], []
    for _ in range(3):
        b, h, w = rng.integers(1, 4), rng.integers(5, 40), 17
        t = rng.integers(0, k, size=(b, h, w))
        # skewed predictions: mostly right, some classes rarer
        p = np.where(rng.random((b, h, w)) < 0.6, t, rng.integers(0, k, size=(b, h, w)))
        t[rng.random((b, h, w)) < 0.1] = 255
        if seed >= 3:  # logits whose argmax is p
            logits = torch.randn(b, k, h, w)
            logits.scatter_(1, torch.from_numpy(p)[:, None], 10.0)
            m.update(logits, torch.from_numpy(t))
        else:
            m.update(torch.from_numpy(p), torch.from_numpy(t))
        all_p.append(p.ravel())
        all_t.append(t.ravel())
    ref, cm = numpy_reference(np.concatenate(all_p), np.concatenate(all_t), k, 255, m.exclude_from_mean)
    assert np.array_equal(m.confmat.numpy(), cm)
    assert m.confmat.dtype == torch.int64
    got = m.compute()
    assert all(isinstance(v, float) for v in got.values())
    assert_dicts_close(got, ref)


def test_matches_torchmetrics_classes():
    torch.manual_seed(0)
    k = 5
    logits = torch.randn(4, k, 24, 24)
    target = torch.randint(0, k, (4, 24, 24))
    target[:, :3] = 255
    m = SegmentationMetrics(k)
    m.update(logits, target)
    got = m.compute()
    kw = dict(num_classes=k, ignore_index=255)
    iou = MulticlassJaccardIndex(average="none", **kw)(logits, target)
    f1 = MulticlassF1Score(average="none", **kw)(logits, target)
    prec = MulticlassPrecision(average="none", **kw)(logits, target)
    rec = MulticlassRecall(average="none", **kw)(logits, target)
    for c in range(k):
        assert got[f"IoU/class{c}"] == pytest.approx(iou[c].item(), abs=1e-6)
        assert got[f"F1/class{c}"] == pytest.approx(f1[c].item(), abs=1e-6)
        assert got[f"Precision/class{c}"] == pytest.approx(prec[c].item(), abs=1e-6)
        assert got[f"Recall/class{c}"] == pytest.approx(rec[c].item(), abs=1e-6)
    assert got["mIoU"] == pytest.approx(MulticlassJaccardIndex(**kw)(logits, target).item(), abs=1e-6)
    assert got["mF1"] == pytest.approx(MulticlassF1Score(**kw)(logits, target).item(), abs=1e-6)
    assert got["OA"] == pytest.approx(MulticlassAccuracy(average="micro", **kw)(logits, target).item(), abs=1e-6)
    assert got["Kappa"] == pytest.approx(MulticlassCohenKappa(**kw)(logits, target).item(), abs=1e-6)


def test_absent_class_conventions():
    # docs/metrics.md example A style: class 3 absent from target and prediction, class 2 predicted only.
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255]]])
    preds = torch.tensor([[[0, 0, 1, 2], [1, 1, 1, 0]]])
    m = SegmentationMetrics(4)
    m.update(preds, target)
    got = m.compute()
    # class 0: tp 2 fp 0 (pixel at ignore is dropped) fn 1 -> IoU 2/3; class 1: tp 3 fp 1 fn 1 -> 3/5;
    # class 2: tp 0 fp 1 fn 0 -> 0; class 3 absent -> NaN, left out of the mean.
    assert got["IoU/class0"] == pytest.approx(2 / 3)
    assert got["IoU/class1"] == pytest.approx(3 / 5)
    assert got["IoU/class2"] == 0.0 and got["Precision/class2"] == 0.0 and got["Recall/class2"] == 0.0
    assert all(math.isnan(got[f"{n}/class3"]) for n in ("IoU", "F1", "Precision", "Recall"))
    assert got["mIoU"] == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)
    assert got["OA"] == pytest.approx(5 / 7)
    idgbr = SegmentationMetrics(4, absent="zero")
    idgbr.update(preds, target)
    got0 = idgbr.compute()
    assert got0["IoU/class3"] == 0.0
    assert got0["mIoU"] == pytest.approx((2 / 3 + 3 / 5 + 0 + 0) / 4)
    assert got0["mF1"] == pytest.approx((0.8 + 0.75 + 0 + 0) / 4)
    # torchmetrics' macro rule = our default
    assert got["mIoU"] == pytest.approx(
        MulticlassJaccardIndex(num_classes=4, ignore_index=255)(preds, target).item(), abs=1e-6
    )


def test_exclude_from_mean_by_index_or_name_and_oa_over_all_classes():
    torch.manual_seed(1)
    p = torch.randint(0, 3, (2, 9, 9))
    t = torch.randint(0, 3, (2, 9, 9))
    names = ["road", "tree", "clutter"]
    a = SegmentationMetrics(3, exclude_from_mean=(2,), class_names=names)
    b = SegmentationMetrics(3, exclude_from_mean=("clutter",), class_names=names)
    full = SegmentationMetrics(3, class_names=names)
    for m in (a, b, full):
        m.update(p, t)
    ga, gb, gf = a.compute(), b.compute(), full.compute()
    assert ga == gb
    assert ga["mIoU"] == pytest.approx((gf["IoU/road"] + gf["IoU/tree"]) / 2)
    assert ga["mIoU"] != pytest.approx(gf["mIoU"])
    assert ga["OA"] == gf["OA"] == pytest.approx((p == t).float().mean().item())


def test_logits_equal_argmax_labels_and_reset():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 10, 10)
    t = torch.randint(0, 4, (3, 10, 10))
    a, b = SegmentationMetrics(4), SegmentationMetrics(4)
    a.update(logits, t)
    b.update(logits.argmax(1), t)
    assert a.compute() == b.compute()
    a.reset()
    assert a.confmat.sum() == 0
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = a.compute()
    assert math.isnan(empty["OA"]) and math.isnan(empty["mIoU"])


def test_perfect_and_single_class():
    t = torch.randint(0, 3, (2, 8, 8))
    m = SegmentationMetrics(3)
    m.update(t.clone(), t)
    got = m.compute()
    assert got["OA"] == 1.0 and got["mIoU"] == 1.0 and got["mF1"] == 1.0 and got["Kappa"] == pytest.approx(1.0)
    one = SegmentationMetrics(3)
    one.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    g1 = one.compute()
    assert g1["mIoU"] == 1.0 and math.isnan(g1["Kappa"])  # pe = 1: kappa undefined


@pytest.mark.parametrize(
    "preds, target, match",
    [
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), "shape"),
        (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), "B×H×W"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "channels"),
        (torch.full((1, 4, 2, 2), float("nan")), torch.zeros(1, 2, 2, dtype=torch.long), "NaN"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "integer label map"),
        (torch.full((1, 2, 2), 4), torch.zeros(1, 2, 2, dtype=torch.long), "preds contain labels"),
        (torch.full((1, 2, 2), 255), torch.zeros(1, 2, 2, dtype=torch.long), "preds contain labels"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 4], [1, 255]]]), r"target contains.*\[4\]"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, -1], [1, 2]]]), "target contains"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2), "integer labels"),
    ],
)
def test_invalid_inputs_raise(preds, target, match):
    m = SegmentationMetrics(4)
    with pytest.raises(ValueError, match=match):
        m.update(preds, target)
    assert m.confmat.sum() == 0


def test_negative_ignore_index_and_huge_labels():
    m = SegmentationMetrics(3, ignore_index=-100)
    m.update(torch.tensor([[[0, 1, 2, 2]]]), torch.tensor([[[0, -100, 2, 1]]]))
    assert m.confmat.sum() == 3 and m.confmat[1, 2] == 1
    with pytest.raises(ValueError, match=r"target contains.*\[-1\]"):
        m.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[-1, -100]]]))
    with pytest.raises(ValueError, match=r"target contains.*\[70000\]"):
        SegmentationMetrics(3).update(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[70000, 255]]]))


def test_constructor_validation():
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetrics(4, ignore_index=0)
    with pytest.raises(ValueError, match="class names"):
        SegmentationMetrics(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="unknown class"):
        SegmentationMetrics(2, exclude_from_mean=("x",), class_names=["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        SegmentationMetrics(2, exclude_from_mean=(2,))


def test_unvalidated_mode_drops_out_of_range_labels():
    m = SegmentationMetrics(3, validate_args=False)
    m.update(torch.tensor([[[0, 7, 1]]]), torch.tensor([[[0, 1, 9]]]))
    assert m.confmat.sum() == 1 and m.confmat[0, 0] == 1
