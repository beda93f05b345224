"""Dataset-level semantic-segmentation metrics from one confusion matrix.

Every number (OA, Kappa, per-class IoU/F1/Precision/Recall and their means) is derived from a single
int64 confusion matrix accumulated over the whole evaluation set, because the remote-sensing benchmarks
define mIoU on the dataset-level matrix, not as a mean of per-image IoUs (which is what
``torchmetrics.segmentation.MeanIoU`` computes).  The matrix is summed across ranks, so DDP results are
exact as long as every sample is seen once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SegmentationMetrics", "check_label_maps", "metrics_from_confusion_matrix"]


def check_label_maps(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None, validate_values: bool = True
) -> tuple[Tensor, Tensor]:
    """Validate ``preds`` (B×H×W labels or B×K×H×W scores) and ``target`` (B×H×W); return int64 label maps.

    Raises ``ValueError`` naming the problem: wrong rank or shape, wrong dtype, NaN scores, predicted
    labels outside ``[0, num_classes)``, or target labels that are neither a class nor ``ignore_index``.
    """
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
        raise ValueError(f"preds and target must be torch tensors, got {type(preds).__name__}, {type(target).__name__}")
    if target.ndim != 3:
        raise ValueError(f"target must be a B×H×W label map, got shape {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer labels, got dtype {target.dtype}")
    if preds.ndim == 4:
        if not preds.is_floating_point():
            raise ValueError(f"4-D preds must be float scores B×K×H×W, got dtype {preds.dtype}")
        if preds.shape[1] != num_classes:
            raise ValueError(f"preds have {preds.shape[1]} channels but num_classes is {num_classes}")
        if preds.shape[:1] + preds.shape[2:] != target.shape:
            raise ValueError(f"preds shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}")
        if validate_values and torch.isnan(preds).any():
            raise ValueError("preds contain NaN")
        labels = preds.argmax(1)
    elif preds.ndim == 3:
        if preds.is_floating_point() or preds.is_complex():
            raise ValueError(
                f"3-D preds must be an integer label map B×H×W (pass scores as B×K×H×W), got dtype {preds.dtype}"
            )
        if preds.shape != target.shape:
            raise ValueError(f"preds shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}")
        labels = preds.long()
        if validate_values and labels.numel() and ((labels < 0) | (labels >= num_classes)).any():
            bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
            raise ValueError(f"preds contain labels outside [0, {num_classes}): {bad}")
    else:
        raise ValueError(f"preds must be B×H×W labels or B×K×H×W scores, got shape {tuple(preds.shape)}")
    if labels.device != target.device:
        raise ValueError(f"preds on {labels.device} but target on {target.device}")
    target = target.long()
    if validate_values and target.numel():
        bad_mask = (target < 0) | (target >= num_classes)
        if ignore_index is not None:
            bad_mask &= target != ignore_index
        if bad_mask.any():
            bad = target[bad_mask].unique()[:5].tolist()
            raise ValueError(
                f"target contains labels that are neither in [0, {num_classes}) nor the ignore index "
                f"{ignore_index}: {bad}"
            )
    return labels, target


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (the callers then mark absent classes)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion_matrix(
    confmat: np.ndarray | Tensor,
    class_names: Sequence[str],
    exclude_from_mean: Sequence[int] = (),
    absent: Literal["nan", "zero"] = "nan",
) -> dict[str, float]:
    """All confusion-matrix metrics as a flat ``dict[str, float]`` (rows = target, columns = prediction).

    See :class:`SegmentationMetrics` for the definitions and the absent-class convention.
    """
    cm = confmat.detach().cpu().numpy() if isinstance(confmat, Tensor) else np.asarray(confmat)
    cm = cm.astype(np.float64)
    k = cm.shape[0]
    tp = np.diag(cm)
    gt_count = cm.sum(1)  # tp + fn
    pred_count = cm.sum(0)  # tp + fp
    total = cm.sum()
    union = gt_count + pred_count - tp
    iou = _div(tp, union)
    precision = _div(tp, pred_count)
    recall = _div(tp, gt_count)
    f1 = _div(2 * tp, gt_count + pred_count)  # = 2PR/(P+R), and 0 where P+R = 0
    absent_mask = union == 0
    if absent == "nan":
        for arr in (iou, precision, recall, f1):
            arr[absent_mask] = np.nan
    keep = np.ones(k, dtype=bool)
    keep[list(exclude_from_mean)] = False

    def mean(values: np.ndarray) -> float:
        vals = values[keep]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else math.nan

    if total > 0:
        oa = float(tp.sum() / total)
        pe = float((gt_count * pred_count).sum() / (total * total))
        if pe < 1.0:
            kappa = (oa - pe) / (1.0 - pe)
        else:  # a single class in both target and prediction: chance agreement is total
            kappa = math.nan if absent == "nan" else 0.0
    else:
        oa = kappa = math.nan if absent == "nan" else 0.0
    out: dict[str, float] = {"OA": oa, "mIoU": mean(iou), "mF1": mean(f1), "Kappa": float(kappa)}
    for name, arr in (("IoU", iou), ("F1", f1), ("Precision", precision), ("Recall", recall)):
        for c in range(k):
            out[f"{name}/{class_names[c]}"] = float(arr[c])
    return out


class SegmentationMetrics(Metric):
    """OA, Kappa, mIoU, mF1 and per-class IoU/F1/Precision/Recall over a dataset-level confusion matrix.

    ``update(preds, target)`` takes ``preds`` as integer labels ``B×H×W`` or float scores ``B×K×H×W``
    (argmax over K) and ``target`` as int labels ``B×H×W`` where ``ignore_index`` marks unlabelled pixels.
    Target pixels equal to ``ignore_index`` are dropped; any other label outside ``[0, num_classes)``, in
    target or prediction, raises ``ValueError`` (``validate_args=False`` skips these value checks).

    ``compute()`` returns a ``dict[str, float]`` with values in [0, 1] (Kappa in [-1, 1]):

    * ``OA`` = trace / total over all classes (ignored pixels excluded), ``Kappa`` = (OA − pe)/(1 − pe).
    * per class c (named ``class_names[c]``, default ``class{c}``): ``IoU/<name>`` = TP/(TP+FP+FN),
      ``F1/<name>`` = 2TP/(2TP+FP+FN), ``Precision/<name>``, ``Recall/<name>``; a 0/0 ratio of a class
      that occurs somewhere (in target or prediction) is 0.
    * ``mIoU``/``mF1``: means over classes not in ``exclude_from_mean`` (indices or names).

    Absent classes (``absent="nan"``, default): a class absent from both target and prediction has no
    evidence, so its per-class values are NaN and it is left out of the means (torchmetrics' macro rule).
    ``absent="zero"`` is the IDGBR convention: such classes score 0 and count in the means. An empty
    matrix gives NaN (resp. 0) everywhere, and so does Kappa when pe = 1 (one class in target and
    prediction).

    ``per_class_wfm=True`` adds ``WFm/<name>`` and ``mWFm``: Margolin's weighted F-measure of each class
    one-vs-rest (binary prediction ``pred == c`` against ``target == c``), averaged over images; see
    :func:`rsseg.metrics.wfmeasure.per_class_wfm_update` for the ignore and empty-class rules
    (``wfm_empty_gt="zero"``: an image without class c scores 0 for c, as pysodmetrics; ``"skip"``: it is
    not counted for c). This runs per image on the CPU.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        exclude_from_mean: Sequence[int | str] = (),
        class_names: Sequence[str] | None = None,
        *,
        absent: Literal["nan", "zero"] = "nan",
        per_class_wfm: bool = False,
        wfm_empty_gt: Literal["zero", "skip"] = "zero",
        validate_args: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a valid class in [0, {num_classes}); remap ignored pixels to an "
                "out-of-range id (e.g. 255) so that no class is silently dropped or kept"
            )
        if class_names is None:
            class_names = [f"class{i}" for i in range(num_classes)]
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if len(set(class_names)) != num_classes:
            raise ValueError(f"class names must be unique, got {class_names}")
        excluded = []
        for e in exclude_from_mean:
            if isinstance(e, str):
                if e not in class_names:
                    raise ValueError(f"exclude_from_mean names unknown class {e!r}")
                excluded.append(class_names.index(e))
            elif 0 <= int(e) < num_classes:
                excluded.append(int(e))
            else:
                raise ValueError(f"exclude_from_mean index {e} outside [0, {num_classes})")
        if absent not in ("nan", "zero"):
            raise ValueError(f"absent must be 'nan' or 'zero', got {absent!r}")
        if wfm_empty_gt not in ("zero", "skip"):
            raise ValueError(f"wfm_empty_gt must be 'zero' or 'skip', got {wfm_empty_gt!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.exclude_from_mean = tuple(sorted(set(excluded)))
        self.absent = absent
        self.per_class_wfm = per_class_wfm
        self.wfm_empty_gt = wfm_empty_gt
        self.validate_args = validate_args
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )
        if per_class_wfm:
            self.add_state("wfm_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("wfm_count", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        labels, target = check_label_maps(preds, target, self.num_classes, self.ignore_index, self.validate_args)
        k = self.num_classes
        # Validated targets hold classes or the ignore index: the in-range mask drops exactly the ignored
        # pixels. Without validation it also keeps out-of-range labels out of the matrix.
        valid = (target >= 0) & (target < k)
        if not self.validate_args:
            valid &= (labels >= 0) & (labels < k)
        idx = target[valid] * k + labels[valid]
        counts = torch.bincount(idx.reshape(-1), minlength=k * k)
        self.confmat += counts.reshape(k, k).to(self.confmat.device)
        if self.per_class_wfm:
            from rsseg.metrics.wfmeasure import per_class_wfm_update

            s, n = per_class_wfm_update(labels, target, k, self.ignore_index, self.wfm_empty_gt)
            self.wfm_sum += torch.as_tensor(s, dtype=torch.float64, device=self.wfm_sum.device)
            self.wfm_count += torch.as_tensor(n, dtype=torch.long, device=self.wfm_count.device)

    def compute(self) -> dict[str, float]:
        out = metrics_from_confusion_matrix(self.confmat, self.class_names, self.exclude_from_mean, self.absent)
        if self.per_class_wfm:
            s = self.wfm_sum.detach().cpu().numpy()
            n = self.wfm_count.detach().cpu().numpy()
            wfm = np.full(self.num_classes, math.nan)
            np.divide(s, n, out=wfm, where=n > 0)
            if self.absent == "zero":
                wfm[n == 0] = 0.0
            keep = [c for c in range(self.num_classes) if c not in self.exclude_from_mean and not np.isnan(wfm[c])]
            out["mWFm"] = float(np.mean(wfm[keep])) if keep else math.nan
            for c, name in enumerate(self.class_names):
                out[f"WFm/{name}"] = float(wfm[c])
        return out
