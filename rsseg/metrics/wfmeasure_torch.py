"""Batched torch version of Margolin et al.'s weighted F-measure (CVPR 2014), on any device.

:func:`rsseg.metrics.wfmeasure.weighted_fmeasure` scores one map at a time on the CPU (≈ 8–20 ms per
512² map, so 40–120 ms per image of six one-vs-rest classes), which is far slower than inference on a
GPU. This module computes the same float64 arithmetic for a whole stack of maps at once, on the device
the maps live on, and gives the same scores (|Δ| ≲ 1e-15; only the order of the final sums differs). It
is meant for GPUs: on a CPU it is several times slower than the OpenCV path. The steps mirror the numpy
module, whose docstring explains the formulas and why each shortcut is exact:

* Δ² (:func:`squared_edt`): an exact separable Euclidean distance transform in integers, capped at 282 px
  like the numpy path (B = 2 − exp(αΔ) is exactly 2.0 in float64 from Δ ≈ 265 px on). Pass 1 finds the
  nearest foreground pixel of each column with two ``cummax`` scans; pass 2 is the 1-D min-plus
  f(c) = min_c' (c − c')² + g(c')² along each row. Eagerly, pass 2 runs over growing offsets |c − c'| = k
  and drops rows once k² exceeds their current maximum (every pixel is then final), which is exact and
  costs O(max distance) per pixel instead of O(W). On CUDA the brute-force form over all c' is compiled
  with ``torch.compile`` into one fused reduction kernel (no W×W temporary); ``RSSEG_WFM_COMPILE=0``
  turns that off.
* Pixel dependency (:func:`nearest_foreground_in_band`): background pixels within Chebyshev distance 3 of
  the foreground (the only ones that reach a foreground pixel through the 7×7 Gaussian) take the error
  of their nearest foreground pixel, searched among the offsets of their known Δ² in the EDT's tie order
  (``_SHELLS``: smallest column, then smallest row): ≤ 8 gathers per band pixel from a zero-padded map.
* The 7×7 Gaussian A (σ = 5) as two 1-D float64 convolutions with zero padding (``imfilter``'s border),
  B from the same table indexed by Δ², then TP^w, FP^w, R^w, P^w and F^w_β as in ``weighted_fmeasure``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rsseg.metrics.wfmeasure import _B0_TABLE, _D_CAP, _G, _PAD, _SHELLS, EPS, fixed_point_sum

__all__ = [
    "nearest_foreground_in_band",
    "per_class_wfm_scores_torch",
    "per_class_wfm_update_torch",
    "squared_edt",
    "weighted_fmeasure_batch",
]

_CAP = int(_D_CAP)
_TEMP_BYTES = 256 << 20  # bound on the int32 temporary of one eager brute-force pass-2 chunk
_compiled: Callable[[Tensor], Tensor] | None = None
_compile_failed = False
_tables: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _device_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """B0 table (indexed by Δ²) and the 1-D Gaussian taps as float64 tensors on ``device``."""
    if device not in _tables:
        b0 = torch.from_numpy(_B0_TABLE).to(device)
        taps = torch.from_numpy(_G.ravel().copy()).to(device)
        _tables[device] = (b0, taps)
    return _tables[device]


def _compile_enabled(device: torch.device, use_compile: bool | None) -> bool:
    """Compile pass 2 on CUDA only (on CPU the fused kernel is slower than the eager early-exit loop)."""
    if use_compile is not None:
        return use_compile
    return device.type == "cuda" and os.environ.get("RSSEG_WFM_COMPILE", "1") != "0" and not _compile_failed


def _column_distances(fg: Tensor, cap: int) -> Tensor:
    """Pass 1: vertical distance of every pixel to the nearest True pixel of its column, at most cap + 1."""
    h = fg.shape[1]
    idx = torch.arange(h, device=fg.device, dtype=torch.int32).view(1, h, 1)
    none = torch.tensor(-(cap + 1), device=fg.device, dtype=torch.int32)  # "no foreground seen yet"
    above = idx - torch.cummax(torch.where(fg, idx, none), 1).values  # last True at or above
    below = idx - torch.cummax(torch.where(fg.flip(1), idx, none), 1).values  # same from the bottom
    return torch.minimum(above, below.flip(1)).clamp_(max=cap + 1)


def _min_plus_rows(g2: Tensor) -> Tensor:
    """Pass 2 by brute force: f[r, c] = min_c' (c − c')² + g2[r, c'] for R×W int32 rows.

    One pure expression so that ``torch.compile`` fuses it into a single reduction (the R×W×W sum is never
    stored); eagerly it materialises R×W×W int32, so callers chunk the rows.
    """
    w = g2.shape[-1]
    c = torch.arange(w, device=g2.device, dtype=torch.int32)
    d = c[:, None] - c[None, :]
    return (g2[:, None, :] + d * d).amin(-1)


def _pass2_brute(g2: Tensor, compiled: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Pass 2 over all rows of R×W ``g2`` in chunks (padded to equal size so the compiled kernel is reused)."""
    r, w = g2.shape
    rows = max(1, _TEMP_BYTES // (4 * w * w))
    fn = compiled or _min_plus_rows
    if compiled is not None and r % rows:
        g2 = torch.cat((g2, g2.new_zeros(rows - r % rows, w)))
    out = torch.cat([fn(g2[i : i + rows]) for i in range(0, g2.shape[0], rows)])
    return out[:r]


def _pass2_shifted(g2: Tensor, cap: int) -> Tensor:
    """Pass 2 as a loop over offsets k = |c − c'| with row-wise early exit; exact for results ≤ cap².

    Before offset k, a row whose largest value is ≤ k² is final (every later term is ≥ k²), so active
    rows are re-selected at a few growing k; offsets beyond ``cap`` only give terms above cap².
    """
    f = g2.clone()
    w = f.shape[1]
    rows: Tensor | None = None  # indices of the active rows in f (None: all)
    fa, ga = f, g2
    check = 1
    for k in range(1, min(w - 1, cap) + 1):
        if k == check:
            active = fa.amax(1) > k * k
            n_active = int(active.sum())
            if n_active == 0:
                break
            if n_active < 0.7 * fa.shape[0]:  # compact: copy the active rows out, the others are final
                if rows is not None:
                    f[rows] = fa
                rows = active.nonzero().squeeze(1) if rows is None else rows[active]
                fa, ga = f[rows], g2[rows]
            check = max(k + 1, int(k * 1.5))
        kk = k * k
        torch.minimum(fa[:, k:], ga[:, :-k] + kk, out=fa[:, k:])
        torch.minimum(fa[:, :-k], ga[:, k:] + kk, out=fa[:, :-k])
    if rows is not None:
        f[rows] = fa
    return f


def squared_edt(fg: Tensor, cap: int = _CAP, *, use_compile: bool | None = None) -> Tensor:
    """Exact squared Euclidean distance of every pixel to the nearest True pixel of its map, capped at cap².

    ``fg``: N×H×W bool; returns N×H×W int32 (cap² everywhere on maps without a True pixel). Equal to
    ``round(min(cv2.distanceTransform(~fg, DIST_L2, DIST_MASK_PRECISE), cap)²)``. ``use_compile``: None
    compiles pass 2 on CUDA unless ``RSSEG_WFM_COMPILE=0``; True/False force it on or off.
    """
    global _compiled, _compile_failed
    if fg.ndim != 3 or fg.dtype != torch.bool:
        raise ValueError(f"fg must be an N×H×W bool tensor, got {fg.dtype} of shape {tuple(fg.shape)}")
    n, h, w = fg.shape
    if fg.numel() == 0:
        return torch.zeros(fg.shape, dtype=torch.int32, device=fg.device)
    g = _column_distances(fg.contiguous(), cap)
    g2 = (g * g).view(n * h, w)
    f = None
    if _compile_enabled(fg.device, use_compile):
        if _compiled is None:
            _compiled = torch.compile(_min_plus_rows, dynamic=False)
        try:
            f = _pass2_brute(g2, _compiled)
        except Exception as err:  # a broken toolchain must not break evaluation: fall back to eager
            if use_compile:
                raise
            _compile_failed = True
            warnings.warn(f"torch.compile of the EDT failed ({err!r}); using the eager path", stacklevel=2)
    if f is None:
        f = _pass2_shifted(g2, cap)
    return f.clamp_(max=cap * cap).view(n, h, w)


@functools.lru_cache(maxsize=32)
def _shell_offsets(w: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per squared distance s ≤ 18, its offsets in tie order as (dr, dc) and as flat offsets in a map of
    width ``w`` padded by ``_PAD``; padded to 8 columns with (0, 0), which reads the background pixel itself."""
    dr = torch.zeros((19, 8), dtype=torch.long)
    dc = torch.zeros((19, 8), dtype=torch.long)
    for s, (rows, cols) in _SHELLS.items():
        dr[s, : len(rows)] = torch.from_numpy(rows)
        dc[s, : len(cols)] = torch.from_numpy(cols)
    return dr.to(device), dc.to(device), (dr * (w + 2 * _PAD) + dc).to(device)


def nearest_foreground_in_band(fg: Tensor, d2: Tensor, values: Tensor) -> Tensor:
    """``values`` with each background pixel within Chebyshev distance 3 of the foreground (the "band")
    replaced by the value of its nearest foreground pixel (EDT tie order: smallest column, then row).

    ``fg`` N×H×W bool, ``d2`` its :func:`squared_edt`, ``values`` N×H×W. Band pixels have Δ² ≤ 18; each
    reads the foreground at the ≤ 8 offsets of its Δ² (``_SHELLS`` order) in a zero-padded copy of ``fg``
    and takes the first hit. Other pixels keep their value: only the band reaches a foreground pixel
    through the 7×7 window, so only the band matters for E' = min(E, A ⋆ Et).
    """
    fg, d2, values = fg.contiguous(), d2.contiguous(), values.contiguous()
    n, h, w = fg.shape
    p, hp, wp = _PAD, h + 2 * _PAD, w + 2 * _PAD
    fg_pad = fg.new_zeros((n, hp, wp))
    fg_pad[:, p : p + h, p : p + w] = fg
    fg_pad = fg_pad.view(-1)
    # Candidates: background with Δ² ≤ 18. Those at Δ² 16 or 17 (nearest at (4, 0) or (4, 1)) lie in the
    # 7×7 window of the foreground only through a pixel at (±3, ±3), the one window offset beyond Δ² 13.
    idx = ((d2 <= 18) & ~fg).view(-1).nonzero().squeeze(1)
    s = d2.view(-1)[idx].long()
    img, rc = idx.div(h * w, rounding_mode="floor"), idx.remainder(h * w)
    r, c = rc.div(w, rounding_mode="floor"), rc.remainder(w)
    pidx = img * (hp * wp) + (r + p) * wp + (c + p)
    far = (s == 16) | (s == 17)
    if bool(far.any()):
        diag = torch.tensor([-3 * wp - 3, -3 * wp + 3, 3 * wp - 3, 3 * wp + 3], device=fg.device)
        keep = ~far | fg_pad[pidx[:, None] + diag].any(1)
        idx, s, img, r, c, pidx = idx[keep], s[keep], img[keep], r[keep], c[keep], pidx[keep]
    dr, dc, flat = _shell_offsets(w, fg.device)
    hits = fg_pad[pidx[:, None] + flat[s]]  # M × 8, in tie order
    first = (hits.cumsum(1) == 0).sum(1, keepdim=True)  # leading misses: the first foreground hit wins
    first.clamp_(max=7)
    if not bool(hits.gather(1, first).all()):  # impossible with an exact EDT; never guess
        raise RuntimeError("band pixels found no foreground pixel at their squared distance")
    nr = r + dr[s].gather(1, first).squeeze(1)
    nc = c + dc[s].gather(1, first).squeeze(1)
    out = values.clone()
    out.view(-1)[idx] = values.view(-1)[img * (h * w) + nr * w + nc]
    return out


def _gaussian(x: Tensor, taps: Tensor) -> Tensor:
    """A ⋆ x with A = fspecial('gaussian', 7, 5) as two 1-D float64 convolutions, zero padding (imfilter)."""
    x = F.conv2d(x[:, None], taps.view(1, 1, 7, 1), padding=(3, 0))
    return F.conv2d(x, taps.view(1, 1, 1, 7), padding=(0, 3))[:, 0]


def _wfm_nonempty(pred: Tensor, gt: Tensor, beta: float, use_compile: bool | None) -> Tensor:
    """F^w_β of maps whose ground truth has foreground (the formulas of ``weighted_fmeasure``)."""
    b0, taps = _device_tables(gt.device)
    E = (pred.to(torch.float64) - gt.to(torch.float64)).abs_()
    d2 = squared_edt(gt, use_compile=use_compile)
    Et = nearest_foreground_in_band(gt, d2, E)
    EA = torch.minimum(E, _gaussian(Et, taps))  # E' on the foreground
    sum_fg = (EA * gt).sum((1, 2))  # Σ_{G1} E^w, B = 1 there
    fp_w = (E * b0[d2]).sum((1, 2))  # Σ_{G0} E·B, B0 = 0 on the foreground
    n_fg = gt.sum((1, 2), dtype=torch.float64)
    tp_w = n_fg - sum_fg
    recall = 1.0 - sum_fg / n_fg
    precision = tp_w / (tp_w + fp_w + EPS)
    b2 = beta * beta
    return (1.0 + b2) * recall * precision / (recall + b2 * precision + EPS)


def _default_chunk(device: torch.device) -> int:
    return 64 if device.type == "cuda" else 2


def weighted_fmeasure_batch(
    pred: Tensor,
    gt: Tensor,
    beta: float = 1.0,
    *,
    chunk: int | None = None,
    use_compile: bool | None = None,
    validate: bool = True,
) -> Tensor:
    """F^w_β of each of N maps (float64, on their device): the batched :func:`~rsseg.metrics.wfmeasure.
    weighted_fmeasure`, NaN where ``gt`` has no foreground.

    ``pred``: N×H×W float (or bool) in [0, 1], used as given; ``gt``: N×H×W bool on the same device. Maps
    are processed ``chunk`` at a time (default 64 on CUDA; 2 on CPU, where small chunks stay in cache);
    a 512² map needs ≈ 25 MB of work memory.
    """
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be N×H×W of the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if gt.dtype != torch.bool:
        raise ValueError(f"gt must be a bool tensor, got {gt.dtype}")
    if not (pred.is_floating_point() or pred.dtype == torch.bool):
        raise ValueError(f"pred must be a float tensor in [0, 1], got {pred.dtype}")
    if pred.device != gt.device:
        raise ValueError(f"pred on {pred.device} but gt on {gt.device}")
    if validate and pred.numel() and pred.is_floating_point():
        lo, hi = torch.aminmax(pred)
        if not bool((lo >= 0) & (hi <= 1)):  # also catches NaN
            raise ValueError("pred must lie in [0, 1] and contain no NaN")
    out = torch.full((pred.shape[0],), math.nan, dtype=torch.float64, device=pred.device)
    idx = gt.flatten(1).any(1).nonzero().squeeze(1)
    step = chunk or _default_chunk(pred.device)
    for i in range(0, idx.numel(), step):
        sel = idx[i : i + step]
        out[sel] = _wfm_nonempty(pred[sel], gt[sel], float(beta), use_compile)
    return out


def per_class_wfm_scores_torch(
    labels: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None,
    empty_gt: str = "zero",
    *,
    chunk: int | None = None,
    use_compile: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Per image and class one-vs-rest F^w (B×C float64, 0 where not scored) and which pairs count (B×C bool).

    The rules of :func:`~rsseg.metrics.wfmeasure.per_class_wfm_update`: prediction ``labels == c`` and
    ground truth ``target == c`` with ignored pixels set to background in the prediction; images without
    a valid pixel are not counted; a class absent from an image's target scores 0 and counts
    (``empty_gt="zero"``) or is not counted (``"skip"``). Only (image, class) pairs whose target holds the
    class are scored, so absent classes cost no distance transform.
    """
    if labels.ndim != 3 or labels.shape != target.shape:
        raise ValueError(f"labels and target must be B×H×W of the same shape, got {labels.shape}, {target.shape}")
    if empty_gt not in ("zero", "skip"):
        raise ValueError(f"empty_gt must be 'zero' or 'skip', got {empty_gt!r}")
    device = labels.device
    target = target.to(device)
    b = labels.shape[0]
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    pred_labels = torch.where(valid, labels, torch.full_like(labels, -1))
    classes = torch.arange(num_classes, device=device)
    image_ok = valid.flatten(1).any(1)
    present = torch.stack([(target == c).flatten(1).any(1) for c in range(num_classes)], 1) & image_ok[:, None]
    counted = present | image_ok[:, None] if empty_gt == "zero" else present
    scores = torch.zeros((b, num_classes), dtype=torch.float64, device=device)
    pairs = present.flatten().nonzero().squeeze(1)
    step = chunk or _default_chunk(device)
    for i in range(0, pairs.numel(), step):
        sel = pairs[i : i + step]
        img, cls = sel // num_classes, classes[sel % num_classes].view(-1, 1, 1)
        gt = target[img] == cls
        pred = pred_labels[img] == cls
        scores.view(-1)[sel] = _wfm_nonempty(pred, gt, 1.0, use_compile)
    return scores, counted


def per_class_wfm_update_torch(
    labels: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None,
    empty_gt: str = "zero",
    *,
    chunk: int | None = None,
    use_compile: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`~rsseg.metrics.wfmeasure.per_class_wfm_update` on the device of ``labels``, batched over all
    images × classes: fixed-point sums (C×2) and counts (C), both int64 on the CPU."""
    scores, counted = per_class_wfm_scores_torch(
        labels, target, num_classes, ignore_index, empty_gt, chunk=chunk, use_compile=use_compile
    )
    scores, counted = scores.cpu(), counted.cpu()
    return fixed_point_sum(scores), counted.sum(0)
