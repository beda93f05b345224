"""SDCI per-stage latency and total per 512² tile, and its GFLOPs against the paper's (1683.29 for SDCI-v2,
2022.72 for SDCI-v1, Table 1); prints one JSON list of records (one per DINO version and batch size).

Full-size models with random weights (timing does not depend on them): CLIP ViT-L/14 (open_clip) at 518²
and DINOv2 ViT-B/14 with registers at 532² (``v2``) or DINO ViT-B/8 at 384² (``v1``), five classes with the
ten remote-sensing templates. Stages, as ``SDCI.forward`` times them (device synchronised): ``clip`` and
``dino`` (the two encoders), ``caf`` (zero-shot scores of every level, Eq. 8–9), ``bcdr`` (kNN graphs and
the 40-step diffusion, Eq. 10–15), ``maps`` (upsampling and normalisation), ``cscp`` (Felzenszwalb on the
CPU, then the convex fusion, Eq. 16–18, on the device). BCDR and CSCP run batched on the device; their
share of the total is recorded. GFLOPs: ``torch.utils.flop_counter`` over one forward (2 FLOPs per
multiply–add; the Felzenszwalb superpixels are not torch and not counted); GMACs = GFLOPs / 2.

Usage: python benchmarks/sdci_speed.py [--device cpu|cuda] [--versions v2,v1] [--batch-sizes 1]
       [--iters 2] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from speed_common import Records, bench_environment, synchronize

from rsseg.models.sdci.model import SDCI
from rsseg.models.sdci.prompts import REMOTE_SENSING_TEMPLATES
from rsseg.profiling import count_gflops, peak_memory_mib, reset_peak_memory

TILE = 512
CLASSES = [["impervious surfaces"], ["building"], ["low vegetation"], ["tree"], ["car"]]
PAPER_GFLOPS = {"v2": 1683.29, "v1": 2022.72}
FULL_DINO = {
    "v2": {"model_type": "dinov2_with_registers", "hidden_size": 768, "num_hidden_layers": 12,
           "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "num_register_tokens": 4},
    "v1": {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "intermediate_size": 3072, "patch_size": 8, "image_size": 224},
}
QUICK = {  # tiny models of the same classes, to check the script quickly
    "clip_config": {"embed_dim": 32, "vision_cfg": {"image_size": 28, "patch_size": 14, "width": 32, "layers": 3,
                                                    "head_width": 16},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "dino_config": {"model_type": "dinov2_with_registers", "hidden_size": 32, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 14, "image_size": 56,
                    "num_register_tokens": 4},
    "clip_size": 112, "dino_size": 112,
}


def build(version: str, device: str, quick: bool) -> SDCI:
    torch.manual_seed(0)
    extra = QUICK if quick else {"dino_config": FULL_DINO[version]}
    model = SDCI(clip_pretrained=None, dino_version=version, dino_pretrained=False, **extra).to(device)
    model.set_text(CLASSES, list(REMOTE_SENSING_TEMPLATES), [["other"]])
    return model


def tiles(batch: int, device: str) -> torch.Tensor:
    """Piecewise-constant colour regions with noise: superpixels and scores behave as on real tiles."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(batch):
        blocks = rng.random((8, 8, 3)).repeat(TILE // 8, 0).repeat(TILE // 8, 1)
        images.append(np.clip(blocks + rng.normal(0, 0.05, blocks.shape), 0, 1))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(device)


def gflops(model: SDCI, image: torch.Tensor) -> float:
    return count_gflops(lambda: model(image))


def measure(model: SDCI, image: torch.Tensor, device: str, iters: int) -> dict:
    model(image)  # warm-up
    synchronize(device)
    reset_peak_memory(device)
    runs = []
    for _ in range(iters):
        stages: dict[str, float] = {}
        model(image, timings=stages)
        runs.append(stages)
    stages = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    total = sum(stages.values())
    batch = image.shape[0]
    return {
        "stage_s": {k: round(v, 4) for k, v in stages.items()},
        "total_s": round(total, 4), "per_tile_s": round(total / batch, 4),
        "bcdr_share": round(stages["bcdr"] / total, 4), "cscp_share": round(stages["cscp"] / total, 4),
        "peak_mib": round(peak_memory_mib(device), 1), "iters": iters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--versions", default="v2,v1")
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script, times nothing real")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    records = Records(bench_environment(args.device))
    for version in args.versions.split(","):
        model = build(version, args.device, args.quick)
        flops = gflops(model, tiles(1, args.device))
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            records.add({
                "method": f"SDCI-{version}", "tile": TILE, "batch_size": batch, "precision": "fp32",
                "models": "tiny (--quick)" if args.quick else "ViT-L/14 + " + ("ViT-B/14-reg" if version == "v2"
                                                                              else "ViT-B/8"),
                "gflops_per_tile": round(flops, 1), "gmacs_per_tile": round(flops / 2, 1),
                "paper_gflops": PAPER_GFLOPS[version],
                **measure(model, tiles(batch, args.device), args.device, args.iters),
            })
        del model
    records.finish(args.out)


if __name__ == "__main__":
    main()
