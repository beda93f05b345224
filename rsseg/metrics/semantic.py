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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from rsseg.metrics.wfmeasure import fixed_point_mean, per_class_wfm_update
from rsseg.metrics.wfmeasure_torch import per_class_wfm_update_torch

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _wfm_pool(workers: int) -> ThreadPoolExecutor:
    """One shared thread pool per worker count (metrics are created and reset often)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsseg-wfm")
    return _POOLS[workers]


__all__ = ["SegmentationMetrics", "check_label_maps", "confusion_matrix", "metrics_from_confusion_matrix"]


def check_label_maps(preds: Tensor, target: Tensor, num_classes: int, check_nan: bool = True) -> tuple[Tensor, Tensor]:
    """Check ranks, shapes and dtypes of ``preds`` (B×H×W labels or B×K×H×W scores) and ``target``
    (B×H×W labels); return both as int64 label maps. Scores are reduced by argmax (first maximum) and
    rejected if they contain NaN. Values are checked by :func:`confusion_matrix`."""
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
        # max(1) gives argmax's indices (first maximum) ~10x faster than argmax(1) on CPU, and NaN wins
        # the max, so checking the B×H×W maxima finds any NaN score.
        top, labels = preds.max(1)
        if check_nan and top.isnan().any():
            raise ValueError("preds contain NaN")
    elif preds.ndim == 3:
        if preds.is_floating_point() or preds.is_complex():
            raise ValueError(
                f"3-D preds must be an integer label map B×H×W (pass scores as B×K×H×W), got dtype {preds.dtype}"
            )
        if preds.shape != target.shape:
            raise ValueError(f"preds shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}")
        labels = preds.long()
    else:
        raise ValueError(f"preds must be B×H×W labels or B×K×H×W scores, got shape {tuple(preds.shape)}")
    if labels.device != target.device:
        raise ValueError(f"preds on {labels.device} but target on {target.device}")
    return labels, target.long()


def confusion_matrix(
    labels: Tensor, target: Tensor, num_classes: int, ignore_index: int | None, validate: bool = True
) -> Tensor:
    """int64 K×K counts (rows = target, columns = prediction) of int64 label maps, on their device.

    Target pixels equal to ``ignore_index`` are dropped. With ``validate`` any other label outside
    ``[0, K)`` in target or prediction raises ``ValueError`` listing (up to 5 of) the offending values;
    without it such pixels are silently dropped. The common case costs two min/max reductions and one
    bincount over target·K + prediction, whose extra rows double as the check of the target values.
    """
    k = num_classes
    if labels.numel() == 0:
        return torch.zeros(k, k, dtype=torch.long, device=labels.device)
    if validate:
        lmin, lmax, tmin, tmax = torch.stack([*torch.aminmax(labels), *torch.aminmax(target)]).tolist()
        if lmin < 0 or lmax >= k:
            bad = labels[(labels < 0) | (labels >= k)].unique()[:5].tolist()
            raise ValueError(f"preds contain labels outside [0, {k}): {bad}")
        if tmin >= 0 and tmax < 1 << 16:
            rows = max(tmax + 1, k)
            counts = torch.bincount((target * k + labels).reshape(-1), minlength=rows * k).reshape(rows, k)
            extra = counts[k:].sum(1)
            if ignore_index is not None and k <= ignore_index < rows:
                extra[ignore_index - k] = 0
            if rows > k and bool(extra.any()):
                bad = (extra.nonzero().reshape(-1) + k)[:5].tolist()
                raise ValueError(
                    f"target contains labels that are neither in [0, {k}) nor the ignore index {ignore_index}: {bad}"
                )
            return counts[:k]
        valid = (target >= 0) & (target < k)
        bad_mask = ~valid if ignore_index is None else ~valid & (target != ignore_index)
        if bad_mask.any():
            bad = target[bad_mask].unique()[:5].tolist()
            raise ValueError(
                f"target contains labels that are neither in [0, {k}) nor the ignore index {ignore_index}: {bad}"
            )
    else:
        valid = (target >= 0) & (target < k) & (labels >= 0) & (labels < k)
    idx = torch.where(valid, target * k + labels, k * k)
    return torch.bincount(idx.reshape(-1), minlength=k * k + 1)[: k * k].reshape(k, k)


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
    not counted for c). Where it runs is ``wfm_device``:

    * ``"cpu"`` (default): per image with numpy/OpenCV; with ``wfm_workers`` > 0 in that many background
      threads (OpenCV and numpy release the GIL), overlapping with the caller's next batches (e.g. GPU
      inference), joined before ``compute``/``sync``.
    * ``"same"``: batched over all images × classes with torch on the device of the predictions
      (:func:`rsseg.metrics.wfmeasure_torch.per_class_wfm_update_torch`), synchronously inside ``update``
      (``wfm_workers`` is not used). Meant for GPUs: on a CPU it is several times slower than the numpy
      path. The scores are the same (float64 throughout, |Δ| ≤ 1e-12 per image, exact fixed-point sums).
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
        wfm_workers: int = 0,
        wfm_device: Literal["cpu", "same"] = "cpu",
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
        if wfm_device not in ("cpu", "same"):
            raise ValueError(f"wfm_device must be 'cpu' or 'same', got {wfm_device!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.exclude_from_mean = tuple(sorted(set(excluded)))
        self.absent = absent
        self.per_class_wfm = per_class_wfm
        self.wfm_empty_gt = wfm_empty_gt
        self.validate_args = validate_args
        self.wfm_workers = wfm_workers
        self.wfm_device = wfm_device
        self._pending: list[Future] = []
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        if per_class_wfm:
            self.add_state("wfm_sum", torch.zeros(num_classes, 2, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("wfm_count", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        labels, target = check_label_maps(preds, target, self.num_classes, self.validate_args)
        counts = confusion_matrix(labels, target, self.num_classes, self.ignore_index, self.validate_args)
        self.confmat += counts.to(self.confmat.device)
        if self.per_class_wfm and self.wfm_device == "same":
            self._add_wfm(
                *per_class_wfm_update_torch(labels, target, self.num_classes, self.ignore_index, self.wfm_empty_gt)
            )
        elif self.per_class_wfm:
            args = (labels.cpu().clone(), target.cpu().clone(), self.num_classes, self.ignore_index, self.wfm_empty_gt)
            if self.wfm_workers > 0:
                self._pending.append(_wfm_pool(self.wfm_workers).submit(per_class_wfm_update, *args))
            else:
                self._add_wfm(*per_class_wfm_update(*args))

    def _add_wfm(self, sums: Tensor, counts: Tensor) -> None:
        self.wfm_sum += sums.to(self.wfm_sum.device)
        self.wfm_count += counts.to(self.wfm_count.device)

    def _join_wfm(self) -> None:
        """Fold finished background per-class WF results into the states (in submission order)."""
        pending, self._pending = self._pending, []
        for future in pending:
            self._add_wfm(*future.result())

    def sync(self, *args, **kwargs) -> None:
        self._join_wfm()
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending = []
        super().reset()

    def compute(self) -> dict[str, float]:
        self._join_wfm()
        out = metrics_from_confusion_matrix(self.confmat, self.class_names, self.exclude_from_mean, self.absent)
        if self.per_class_wfm:
            wfm = np.array(fixed_point_mean(self.wfm_sum, self.wfm_count))
            if self.absent == "zero":
                wfm[np.isnan(wfm)] = 0.0
            keep = [c for c in range(self.num_classes) if c not in self.exclude_from_mean and not np.isnan(wfm[c])]
            out["mWFm"] = float(np.mean(wfm[keep])) if keep else math.nan
            for c, name in enumerate(self.class_names):
                out[f"WFm/{name}"] = float(wfm[c])
        return out
