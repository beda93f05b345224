"""SDCI's CSCP stage (Eq. 16–18) per 512² tile, K = 5: the released PDHG schedule against rsseg's default solver.

Input, built like SDCI's at that point: a synthetic tile (Voronoi regions of random colours plus Gaussian
noise), its Felzenszwalb superpixels (scale 40, σ 0.8, min size 20) and Eq. 16 weights, and for each branch
a score map made like the released pipeline's: the tile's class map as one-hot, averaged onto the CLIP
(37×37) or DINO (38×38) patch grid, plus smooth and pixel noise, upsampled bilinearly, min-max normalised
per class and passed through ``as_distribution`` (the softmax branch fires, as it does in SDCI).

Records: Felzenszwalb time; the released schedule (batch 1, 100 PDHG steps with the inexact Lambert-W prox)
with its time, Eq. 17 energy and certified gap; the default solver (FISTA on the dual, stopped on the float64
primal–dual gap) with its time, iterations, gap and energy; the speed-up and the energy difference; the
released energy's excess over the optimum, bracketed by the default run's energy and dual bound; and a
batch-4 default timing (four different tiles).

Usage: python benchmarks/cscp_speed.py [--device cpu|cuda] [--size 512] [--classes 5] [--repeats 3]
       [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from speed_common import Records, bench_environment, synchronize, timed

from rsseg.models.sdci.cscp import as_distribution, cscp_energy, cscp_solve, edge_weights, felzenszwalb_superpixels

ISSUE_RELEASED_S = 28.7  # the released solver per 512² tile, K = 5, on this CPU (as reported in the issue)


def synthetic_tile(size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An H×W×3 uint8 tile of Voronoi regions (random colours + noise) and its H×W class map."""
    rng = np.random.default_rng(seed)
    n_regions = 160
    seeds = rng.uniform(0, size, (n_regions, 2))
    yy, xx = np.mgrid[:size, :size]
    region = np.full((size, size), -1)
    best = np.full((size, size), np.inf)
    for i, (cy, cx) in enumerate(seeds):
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        closer = d < best
        region[closer], best[closer] = i, d[closer]
    colours = rng.uniform(20, 235, (n_regions, 3))
    image = np.clip(colours[region] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    return image, rng.integers(0, classes, n_regions)[region]


def branch_scores(class_map: np.ndarray, classes: int, grid: int, seed: int) -> torch.Tensor:
    """1×K×H×W scores in [0, 1]: the one-hot map averaged onto a grid×grid patch grid, noisy, upsampled."""
    g = torch.Generator().manual_seed(seed)
    size = class_map.shape[0]
    onehot = F.one_hot(torch.from_numpy(class_map), classes).permute(2, 0, 1)[None].float()
    patches = F.adaptive_avg_pool2d(onehot, grid)
    patches = patches + 0.35 * torch.rand(1, classes, grid, grid, generator=g)
    scores = F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=False)
    scores = scores + 0.05 * torch.randn(scores.shape, generator=g)
    lo, hi = scores.amin((2, 3), keepdim=True), scores.amax((2, 3), keepdim=True)
    return (scores - lo) / (hi - lo)  # SDCI's per-class min-max normalisation


def build_inputs(size: int, classes: int, seeds: list[int], device: str):
    tiles, p_clip, p_dino = [], [], []
    for seed in seeds:
        image, class_map = synthetic_tile(size, classes, seed)
        tiles.append(image)
        p_clip.append(as_distribution(branch_scores(class_map, classes, 37, 1000 + seed)))
        p_dino.append(as_distribution(branch_scores(class_map, classes, 38, 2000 + seed)))
    labels = torch.from_numpy(np.stack([felzenszwalb_superpixels(t) for t in tiles]))
    wx, wy = edge_weights(labels)
    return tiles, torch.cat(p_clip).to(device), torch.cat(p_dino).to(device), wx.to(device), wy.to(device)


def timed_solve(device: str, **kwargs) -> tuple[float, torch.Tensor, object]:
    synchronize(device)
    start = time.perf_counter()
    q, info = cscp_solve(**kwargs)
    synchronize(device)
    return time.perf_counter() - start, q, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the fast parts (median)")
    parser.add_argument("--quick", action="store_true", help="128² tiles, one repeat (smoke test)")
    parser.add_argument("--out", default=None, help="also write the JSON list to this file")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 128, 1
    device, size, k = args.device, args.size, args.classes
    records = Records({**bench_environment(device), "torch_threads": torch.get_num_threads()})
    common = {"benchmark": "cscp_speed", "tile": size, "classes": k}

    tiles, p_clip, p_dino, wx, wy = build_inputs(size, k, [0, 1, 2, 3], device)
    fz = statistics.median(timed(lambda: felzenszwalb_superpixels(tiles[0]), "cpu", 1, args.repeats))
    records.add({**common, "stage": "felzenszwalb", "time_s": round(fz, 4),
                 "superpixels": int(felzenszwalb_superpixels(tiles[0]).max() + 1)})

    one = {"p_clip": p_clip[:1], "p_dino": p_dino[:1], "wx": wx[:1], "wy": wy[:1]}
    t_rel, q_rel, info_rel = timed_solve(device, schedule="released", **one)
    e_rel = cscp_energy(q_rel, **{"p_clip": p_clip[:1], "p_dino": p_dino[:1], "wx": wx[:1], "wy": wy[:1]}).item()
    records.add({**common, "stage": "solve", "schedule": "released", "batch_size": 1, "time_s": round(t_rel, 3),
                 "iterations": int(info_rel.iterations[0]), "energy": e_rel, "gap": info_rel.gap.item(),
                 "relative_gap": info_rel.relative_gap.item()})

    cscp_solve(**one)  # warm-up
    runs = [timed_solve(device, **one) for _ in range(args.repeats)]
    t_def = statistics.median(r[0] for r in runs)
    _, q_def, info = runs[-1]
    e_def = cscp_energy(q_def, p_clip[:1], p_dino[:1], wx[:1], wy[:1]).item()
    records.add({**common, "stage": "solve", "schedule": "fista", "batch_size": 1, "time_s": round(t_def, 4),
                 "time_s_all": [round(r[0], 4) for r in runs], "iterations": int(info.iterations[0]),
                 "energy": e_def, "gap": info.gap.item(), "relative_gap": info.relative_gap.item(),
                 "dual_bound": info.dual.item(), "converged": bool(info.converged[0]), "tol": info.tol,
                 "atol_nats_per_pixel": info.atol})
    labels_agree = (q_def.argmax(1) == q_rel.to(q_def.dtype).argmax(1)).float().mean().item()
    records.add({**common, "stage": "comparison", "speedup": round(t_rel / t_def, 2),
                 "released_time_reported_in_issue_s": ISSUE_RELEASED_S,
                 "speedup_vs_issue_time": round(ISSUE_RELEASED_S / t_def, 2),
                 "energy_released_minus_default": e_rel - e_def,
                 "released_excess_over_optimum_bounds": [e_rel - e_def, e_rel - info.dual.item()],
                 "released_relative_excess_lower_bound": (e_rel - e_def) / e_def,
                 "label_agreement_released_vs_default": round(labels_agree, 5),
                 "default_energy_not_above_released": e_def <= e_rel})

    batch = {"p_clip": p_clip, "p_dino": p_dino, "wx": wx, "wy": wy}
    cscp_solve(**batch)  # warm-up
    runs = [timed_solve(device, **batch) for _ in range(max(1, args.repeats - 1))]
    t_b = statistics.median(r[0] for r in runs)
    info_b = runs[-1][2]
    records.add({**common, "stage": "solve", "schedule": "fista", "batch_size": 4, "time_s": round(t_b, 4),
                 "time_s_per_tile": round(t_b / 4, 4), "iterations": info_b.iterations.tolist(),
                 "relative_gap": [round(g, 6) for g in info_b.relative_gap.tolist()],
                 "converged": info_b.converged.tolist()})
    records.finish(args.out)


if __name__ == "__main__":
    main()
