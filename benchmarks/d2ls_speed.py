"""D2LS training and inference speed at 512²; prints one JSON list of records (one per setting).

For each batch size, precision (fp32, bf16 autocast) and memory format (contiguous, channels-last):

* training images/s: one full step of the two-branch objective (forward of both branches, the
  Eq. 2–8 loss, backward, AdamW) after warm-up steps;
* inference latency per batch and images/s of the dynamic branch (eval mode, ``torch.inference_mode``);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU (its
  high-water mark reset before each measurement).

``--compare-unfolded`` adds the same measurements with the aggregator applied after the concatenation
(the released code's order) to show what folding it per stage saves. Also records the parameter
counts and multiply-adds at 512² (torch's flop counter / 2) next to the paper's Table 10.

Usage: python benchmarks/d2ls_speed.py [--device cpu|cuda] [--batch-sizes 4,8] [--quick]
       [--backbone convnext_base.fb_in1k] [--out benchmarks/results/d2ls_speed_<device>.json]
"""

from __future__ import annotations

import argparse

import torch
from speed_common import Records, autocast, bench_environment, train_and_infer
from torch.utils.flop_counter import FlopCounterMode

from rsseg.models import D2LS
from rsseg.tasks.d2ls import D2LSLoss

NUM_CLASSES = 6
SIZE = 512


def build(backbone: str, device: str, channels_last: bool, fold: bool) -> D2LS:
    torch.manual_seed(0)
    net = D2LS(NUM_CLASSES, backbone=backbone, pretrained=False).to(device)
    net.encoder.fold_aggregator = fold
    return net.to(memory_format=torch.channels_last) if channels_last else net


def measure(args, batch: int, precision: str, channels_last: bool, fold: bool) -> dict:
    device = args.device
    net = build(args.backbone, device, channels_last, fold)
    loss_fn = D2LSLoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    image = torch.randn(batch, 3, SIZE, SIZE, device=device).contiguous(memory_format=fmt)
    target = torch.randint(0, NUM_CLASSES, (batch, SIZE, SIZE), device=device)

    def train_step() -> None:
        with autocast(device, precision):
            loss = loss_fn(net.forward_branches(image), target)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), autocast(device, precision):
            net(image)

    return {
        "benchmark": "d2ls_speed",
        "backbone": args.backbone,
        "image_size": SIZE,
        "batch_size": batch,
        "precision": precision,
        "channels_last": channels_last,
        "aggregator": "folded" if fold else "concatenated",
        **train_and_infer(net, optimizer, train_step, infer, device, batch, args.warmup, args.iters),
    }


def fidelity(backbone: str) -> dict:
    """Parameters and multiply-adds at 512² (meta tensors), next to the paper's Table 10."""
    with torch.device("meta"):
        net = D2LS(NUM_CLASSES, backbone=backbone, pretrained=False).eval().requires_grad_(False)
        image = torch.empty(1, 3, SIZE, SIZE)
    record = {"benchmark": "d2ls_fidelity", "backbone": backbone, "image_size": SIZE,
              "paper_table10": {"params_M": 90.9, "params_without_backbone_M": 3.3, "GFLOPs": 89.2}}
    total = sum(p.numel() for p in net.parameters())
    backbone_params = sum(p.numel() for p in net.backbone.parameters())
    record["params_M"] = round(total / 1e6, 3)
    record["params_without_backbone_M"] = round((total - backbone_params) / 1e6, 3)
    for fold in (True, False):
        net.encoder.fold_aggregator = fold
        counter = FlopCounterMode(display=False)
        with counter:
            net(image)
        record[f"GMAC_{'folded' if fold else 'concatenated'}"] = round(counter.get_total_flops() / 2e9, 3)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--backbone", default="convnext_base.fb_in1k")
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3 on GPU, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--compare-unfolded", action="store_true", help="also time the concatenated aggregator")
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels-last runs")
    parser.add_argument("--quick", action="store_true", help="batch 4, fp32, one setting each (a smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON list to this file")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.iters = args.iters if args.iters is not None else (10 if gpu else 2)
    batches = [4] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    precisions = ["fp32"] if args.quick else args.precisions.split(",")
    layouts = [False] if args.quick or args.no_channels_last else [False, True]
    folds = [True, False] if args.compare_unfolded else [True]

    records = Records(bench_environment(args.device))
    records.add(fidelity(args.backbone))
    for batch in batches:
        for precision in precisions:
            for channels_last in layouts:
                for fold in folds:
                    records.add(measure(args, batch, precision, channels_last, fold))
    records.finish(args.out)


if __name__ == "__main__":
    main()
