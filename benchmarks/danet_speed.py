"""DANet and LAVT training and inference speed at 480²; prints one JSON list of records (one per setting).

For each method (``danet``: both alignments; ``lavt``: the baseline), batch size and precision (fp32,
bf16 autocast), with Swin-B (window 12) and a BERT-base-sized text encoder (random weights, 20 tokens):

* training images/s: one full step (forward, the Eq. 11 loss with the affinity term on {F_2, F_3, F_4}
  for DANet and LAVT's weighted cross-entropy, backward, AdamW) after warm-up steps;
* inference latency per batch and images/s (eval mode, ``torch.inference_mode``);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU (its
  high-water mark reset before each measurement).

Also records the parameter counts of both models (the affinity alignment adds none; RAAM adds its own).

Usage: python benchmarks/danet_speed.py [--device cpu|cuda] [--batch-sizes 8,16] [--methods danet,lavt]
       [--quick] [--out benchmarks/results/danet_speed_<device>.json]
"""

from __future__ import annotations

import argparse
import functools

import torch
from speed_common import Records, autocast, bench_environment, train_and_infer

from rsseg.models import DANet
from rsseg.tasks.danet import DANetTask

SIZE = 480
TOKENS = 20
BERT_BASE = {"model_type": "bert"}  # transformers' BertConfig defaults are BERT-base (768 wide, 12 layers)
METHODS = {
    "danet": ({"agent_alignment": True}, {"affinity_alignment": True, "mask_loss": "bce"}),
    "lavt": ({"agent_alignment": False}, {"affinity_alignment": False, "mask_loss": "lavt_ce"}),
}


def build(method: str, backbone: str, device: str) -> DANetTask:
    torch.manual_seed(0)
    net_args, task_args = METHODS[method]  # (network, task) arguments
    net = functools.partial(DANet, backbone=backbone, pretrained=False, text_pretrained=False, text_config=BERT_BASE,
                            img_size=SIZE, **net_args)
    return DANetTask(net=net, **task_args).to(device)


def batch_of(size: int, device: str) -> dict:
    mask = torch.ones(size, TOKENS, dtype=torch.long, device=device)
    mask[:, 12:] = 0  # RefSegRS expressions are short: 12 real tokens, 8 of padding
    target = torch.zeros(size, SIZE, SIZE, dtype=torch.long, device=device)
    target[:, 100:300, 150:260] = 1
    return {"image": torch.randn(size, 3, SIZE, SIZE, device=device),
            "input_ids": torch.randint(1000, 30000, (size, TOKENS), device=device),
            "attention_mask": mask, "mask": target}


def measure(args, method: str, batch_size: int, precision: str) -> dict:
    device = args.device
    task = build(method, args.backbone, device)
    optimizer = torch.optim.AdamW(task.parameters(), lr=5e-4, weight_decay=0.01)
    batch = batch_of(batch_size, device)

    def train_step() -> None:
        with autocast(device, precision):
            loss = task.criterion(task(batch), batch["mask"])["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), autocast(device, precision):
            task(batch)

    return {
        "benchmark": "danet_speed", "method": method, "backbone": args.backbone, "image_size": SIZE,
        "batch_size": batch_size, "precision": precision,
        **train_and_infer(task, optimizer, train_step, infer, device, batch_size, args.warmup, args.iters),
    }


def parameters(backbone: str) -> dict:
    """Parameter counts of both models and of their parts (meta tensors: nothing is allocated)."""
    record = {"benchmark": "danet_params", "backbone": backbone, "text_encoder": "BERT-base (random)"}
    with torch.device("meta"):
        for method in METHODS:
            net = build(method, backbone, "meta").net
            record[f"{method}_params_M"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
            for name in ("text_encoder", "encoder", "decoder", "agent_alignment", "classifier"):
                part = getattr(net, name)
                if part is not None:
                    record[f"{method}_{name}_params_M"] = round(sum(p.numel() for p in part.parameters()) / 1e6, 3)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--backbone", default="swin_base_patch4_window12_384")
    parser.add_argument("--methods", default="lavt,danet")
    parser.add_argument("--batch-sizes", default=None, help="default 8,16 on GPU (paper: 16), 2 on CPU")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3 on GPU, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--quick", action="store_true", help="batch 1, fp32, one warm-up and one step (smoke)")
    parser.add_argument("--out", default=None, help="also write the JSON list to this file")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.warmup = 1 if args.quick else args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.iters = 1 if args.quick else args.iters if args.iters is not None else (10 if gpu else 2)
    batches = [1] if args.quick else [int(b) for b in (args.batch_sizes or ("8,16" if gpu else "2")).split(",")]
    precisions = ["fp32"] if args.quick else args.precisions.split(",")

    records = Records(bench_environment(args.device))
    records.add(parameters(args.backbone))
    for method in args.methods.split(","):
        for batch_size in batches:
            for precision in precisions:
                records.add(measure(args, method, batch_size, precision))
    records.finish(args.out)


if __name__ == "__main__":
    main()
