"""Speed of the metric suite; prints one JSON list of records (one per measurement).

* WF-measure per image at 512² and 1024²: rsseg and pysodmetrics side by side in the same run
  (interleaved calls, median of repeats), after checking on random inputs (soft, binary, EDT ties) that
  both give the same score (max |Δ| reported; "identical" means ≤ 1e-6);
* the semantic suite (SegmentationMetrics) per batch of logits, on CPU or ``--device cuda``, next to
  torchmetrics' MulticlassConfusionMatrix on the same batch;
* IDGBR's boundary WF and the per-class WF option, per image.

Usage: python benchmarks/metrics_speed.py [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib.metadata import version

import cv2
import numpy as np
import torch

from rsseg.metrics import BoundaryWFMeasure, SegmentationMetrics
from rsseg.metrics.semantic import metrics_from_confusion_matrix
from rsseg.metrics.wfmeasure import weighted_fmeasure


def environment(device: str) -> dict:
    env = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("rsseg", "torch", "torchmetrics", "numpy", "scipy", "pysodmetrics")},
    }
    env["versions"]["opencv"] = cv2.__version__
    return env


def discs(rng: np.random.Generator, size: int, n: int = 12) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    for _ in range(n):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(img, centre, int(rng.integers(size // 40, size // 8)), 1, -1)
    return img.astype(bool)


def wf_inputs(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction of one kind: soft, binary, or ties (lattice GT, binary noise)."""
    if kind == "ties":
        gt = np.zeros((size, size), bool)
        gt[:: int(rng.integers(3, 9)), :: int(rng.integers(3, 9))] = True
        return (rng.random((size, size)) < 0.5).astype(np.float64), gt
    gt = discs(rng, size)
    if kind == "soft":
        blur = cv2.GaussianBlur(gt.astype(np.float64), (0, 0), 3)
        return np.clip(blur + rng.normal(0, 0.1, gt.shape), 0, 1), gt
    pred = np.roll(gt, int(rng.integers(1, 5)), axis=1)
    pred ^= rng.random(gt.shape) < 0.01
    return pred.astype(np.float64), gt


def bench_wfm(size: int, repeats: int, checks: int, rng: np.random.Generator) -> list[dict]:
    from py_sod_metrics import WeightedFmeasure

    def sod(pred, gt):
        m = WeightedFmeasure()
        m.step(pred, gt, normalize=False)
        return m.weighted_fms[0]

    kinds = ("soft", "binary", "ties")
    worst = 0.0
    for i in range(checks):
        pred, gt = wf_inputs(rng, size, kinds[i % 3])
        worst = max(worst, float(abs(weighted_fmeasure(pred, gt) - sod(pred, gt))))
    records = []
    for threads in sorted({1, cv2.getNumThreads()}):
        old = cv2.getNumThreads()
        cv2.setNumThreads(threads)
        for kind in ("soft", "binary"):
            pred, gt = wf_inputs(rng, size, kind)
            weighted_fmeasure(pred, gt)  # warm the work buffers
            ours, theirs = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sod(pred, gt)
                t1 = time.perf_counter()
                weighted_fmeasure(pred, gt)
                t2 = time.perf_counter()
                theirs.append(t1 - t0)
                ours.append(t2 - t1)
            med_ours, med_theirs = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
            records.append(
                {
                    "measurement": "wfmeasure_per_image",
                    "size": size,
                    "input": kind,
                    "cv2_threads": threads,
                    "rsseg_ms": round(med_ours, 2),
                    "rsseg_min_ms": round(min(ours) * 1e3, 2),
                    "pysodmetrics_ms": round(med_theirs, 2),
                    "pysodmetrics_min_ms": round(min(theirs) * 1e3, 2),
                    "speedup": round(med_theirs / med_ours, 2),
                    "equality_checks": checks,
                    "max_abs_diff": worst,
                    "identical": worst <= 1e-6,
                    "repeats": repeats,
                }
            )
        cv2.setNumThreads(old)
    return records


def timed(fn, repeats: int, sync=lambda: None) -> list[float]:
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def bench_semantic(device: str, batch: int, classes: int, size: int, repeats: int) -> list[dict]:
    from torchmetrics.classification import MulticlassConfusionMatrix

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, size, size, generator=g).to(device)
    target = torch.randint(0, classes, (batch, size, size), generator=g)
    target[:, :8] = 255
    target = target.to(device)
    names = [f"class{i}" for i in range(classes)]
    records = []
    for kind, preds in (("logits", logits), ("labels", logits.argmax(1))):
        ours = SegmentationMetrics(classes).to(device)
        ref = MulticlassConfusionMatrix(classes, ignore_index=255).to(device)
        t_ours = timed(lambda: ours.update(preds, target), repeats, sync)  # noqa: B023 (called right here)
        t_ref = timed(lambda: ref.update(preds, target), repeats, sync)  # noqa: B023
        t_compute = timed(lambda: metrics_from_confusion_matrix(ours.confmat, names), repeats, sync)  # noqa: B023
        assert torch.equal(ours.confmat, ref.confmat.long())
        records.append(
            {
                "measurement": "semantic_update_per_batch",
                "device": device,
                "batch": batch,
                "classes": classes,
                "size": size,
                "input": kind,
                "rsseg_ms": round(statistics.median(t_ours) * 1e3, 2),
                "torchmetrics_confmat_ms": round(statistics.median(t_ref) * 1e3, 2),
                "compute_ms": round(statistics.median(t_compute) * 1e3, 3),
                "repeats": repeats,
            }
        )
    return records


def bench_per_image(kind: str, size: int, classes: int, images: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, classes, (images, 1, size // 32, size // 32), generator=g).float()
    target = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.95, target, torch.roll(target, 3, 2))
    if kind == "boundary":
        metric = BoundaryWFMeasure()
    else:
        metric = SegmentationMetrics(classes, per_class_wfm=True)
    t = timed(lambda: metric.update(pred, target), repeats)
    return {
        "measurement": f"{kind}_wf_per_image",
        "size": size,
        "classes": classes,
        "rsseg_ms": round(statistics.median(t) * 1e3 / images, 2),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    rng = np.random.default_rng(0)
    reps = 3 if args.quick else 15
    env = environment(args.device)
    records = bench_wfm(512, reps, 6 if args.quick else 30, rng)
    records += bench_wfm(1024, max(3, reps // 2), 3 if args.quick else 12, rng)
    records += bench_semantic("cpu", 8, 6, 512, reps)
    if args.device == "cuda":
        records += bench_semantic("cuda", 8, 6, 512, reps * 2)
    records.append(bench_per_image("boundary", 512, 6, 2, max(2, reps // 3)))
    records.append(bench_per_image("per_class", 512, 6, 2, max(2, reps // 3)))
    print(json.dumps([{"benchmark": "metrics_speed", **env, **r} for r in records], indent=1))


if __name__ == "__main__":
    main()
