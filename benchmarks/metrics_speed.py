"""Speed of the metric suite; prints one JSON list of records (one per measurement).

* WF-measure per image at 512² and 1024²: rsseg and pysodmetrics side by side in the same run
  (interleaved calls, median of repeats), after checking on random inputs (soft, binary, EDT ties) that
  both give the same score (max |Δ| reported; "identical" means ≤ 1e-6);
* the semantic suite (SegmentationMetrics) per batch of logits, on CPU or ``--device cuda``, next to
  torchmetrics' MulticlassConfusionMatrix on the same batch;
* IDGBR's boundary WF and the per-class WF option, per image;
* the per-class WF of a batch of label maps with the batched torch path (``wfm_device="same"``) on
  ``--device``, eager and (CUDA) compiled, next to the numpy path on the same batch, with the scores
  compared and the time projected to the 2,016 Potsdam test patches.

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
from rsseg.metrics.wfmeasure import fixed_point_mean, per_class_wfm_update, weighted_fmeasure
from rsseg.metrics.wfmeasure_torch import per_class_wfm_update_torch

POTSDAM_TEST_PATCHES = 2016  # 512² patches of the Potsdam test tiles (UNetFormer protocol)


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


def blocky_labels(images: int, size: int, classes: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and target label maps: 32-px blocks of random classes, 5 % of the pixels shifted by 3 px."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (images, 1, size // 32, size // 32), generator=g).float()
    target = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.95, target, torch.roll(target, 3, 2))
    return pred, target


def scene_labels(images: int, size: int, classes: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Potsdam-like label maps: large blocks of the first classes, small discs of the last-but-one class
    ("car", far apart, so its distance transform reaches the 282-px cap in places), a rare last class
    ("clutter", absent from most images), an unlabelled border, and predictions with shifted edges."""
    rng = np.random.default_rng(seed)
    target = np.zeros((images, size, size), np.int64)
    for i in range(images):
        coarse = rng.integers(0, classes - 2, size=(size // 64, size // 64))
        t = np.kron(coarse, np.ones((64, 64), np.int64))
        t = np.roll(t, tuple(int(v) for v in rng.integers(0, 64, 2)), (0, 1)).astype(np.int32)
        for _ in range(int(rng.integers(1, 12))):
            centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.circle(t, centre, int(rng.integers(3, 10)), classes - 2, -1)
        if rng.random() < 0.3:
            t[rng.integers(0, size - 40) :][:40, :60] = classes - 1
        t[:, :2] = 255
        target[i] = t
    target = torch.from_numpy(target)
    noisy = torch.from_numpy(rng.random(target.shape) < 0.03)
    pred = torch.where(noisy, torch.roll(target, 2, 1), target)
    return torch.where(pred == 255, 0, pred), target


def bench_per_class_torch(device: str, images: int, size: int, classes: int, repeats: int) -> dict:
    """Per-class WF of one batch: numpy path (CPU, one thread) vs the torch path on ``device``."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    pred, target = scene_labels(images, size, classes)
    pred_d, target_d = pred.to(device), target.to(device)

    def numpy_path():
        return per_class_wfm_update(pred, target, classes, 255)

    def torch_path(use_compile: bool):
        return per_class_wfm_update_torch(pred_d, target_d, classes, 255, use_compile=use_compile)

    ref = numpy_path()
    t_numpy = timed(numpy_path, repeats)
    got = torch_path(False)
    t_eager = timed(lambda: torch_path(False), repeats, sync)
    results = {"eager": got}
    t_compiled, compile_s, compile_error = None, None, None
    if device == "cuda":
        t0 = time.perf_counter()
        try:
            results["compiled"] = torch_path(True)  # first call compiles pass 2
            sync()
            compile_s = time.perf_counter() - t0
            t_compiled = timed(lambda: torch_path(True), repeats, sync)
        except Exception as err:  # record it: the eager numbers still stand
            compile_error = repr(err)[:300]
    ref_means = np.array(fixed_point_mean(*ref))
    worst = 0.0
    for sums, counts in results.values():
        assert torch.equal(counts, ref[1]), "per-class image counts differ from the numpy path"
        worst = max(worst, float(np.nanmax(np.abs(np.array(fixed_point_mean(sums, counts)) - ref_means))))

    def ms(t: list[float] | None) -> float | None:
        return None if t is None else round(statistics.median(t) * 1e3, 1)

    def projected_s(t: list[float] | None) -> float | None:
        return None if t is None else round(statistics.median(t) * POTSDAM_TEST_PATCHES / images, 1)

    best = statistics.median(t_compiled or t_eager)
    return {
        "measurement": "per_class_wf_torch_per_batch",
        "wfm_device": device,
        "images": images,
        "size": size,
        "classes": classes,
        "numpy_ms": ms(t_numpy),
        "torch_eager_ms": ms(t_eager),
        "torch_compiled_ms": ms(t_compiled),
        "compile_s": None if compile_s is None else round(compile_s, 1),
        "compile_error": compile_error,
        "projected_2016_numpy_s": projected_s(t_numpy),
        "projected_2016_torch_eager_s": projected_s(t_eager),
        "projected_2016_torch_compiled_s": projected_s(t_compiled),
        "speedup_vs_numpy": round(statistics.median(t_numpy) / best, 2),
        "max_abs_diff_class_means": worst,
        "repeats": repeats,
    }


def bench_per_image(kind: str, size: int, classes: int, images: int, repeats: int) -> dict:
    pred, target = blocky_labels(images, size, classes)
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
    images = 4 if args.quick and args.device == "cpu" else 16
    records.append(bench_per_class_torch(args.device, images, 512, 6, max(1, reps // 3)))
    print(json.dumps([{"benchmark": "metrics_speed", **env, **r} for r in records], indent=1))


if __name__ == "__main__":
    main()
