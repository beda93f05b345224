"""IDGBR training and 25-step inference speed per 512² tile; prints one JSON list of records (one per setting).

For each UNet/VAE size (``sd15``: Stable Diffusion v1.5's UNet and VAE with random weights; ``small``: the
same block layout, narrower, for CPUs), precision (fp32, bf16 autocast) and attention implementation
(``sdpa``: diffusers' default ``scaled_dot_product_attention`` processors; ``classic``: its explicit
softmax(QKᵀ)V processors, for comparison — the guidance modules always use SDPA):

* training step time and images/s: Eq. 14 without REPA (its first 500 steps add DINOv2): frozen VAE and
  pseudo-siamese encoder on the image and coarse map, VAE of the label embedding, cubic timesteps, the
  guided UNet, MSE, backward, AdamW over the UNet and the guidance modules;
* inference latency per tile: Algorithm 2, 25 DDIM steps with classifier-free guidance (weight 3), VAE
  decode and the label decoder, batch 1;
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU (its
  high-water mark reset before each measurement).

Also records the parameter counts (trainable UNet + guidance modules, frozen encoder copy, VAE).

Usage: python benchmarks/idgbr_speed.py [--device cpu|cuda] [--sizes sd15,small] [--batch-sizes 4]
       [--precisions fp32,bf16] [--attention sdpa,classic] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from speed_common import Records, autocast, bench_environment, train_and_infer

from rsseg.models.idgbr import IDGBR, SD15_UNET, SD15_VAE, sample_timesteps

TILE = 512
CLASSES = 6
SIZES = {
    "sd15": {"unet_config": SD15_UNET, "vae_config": SD15_VAE},
    "small": {
        "unet_config": {**SD15_UNET, "block_out_channels": [64, 128, 256, 256], "layers_per_block": 1,
                        "cross_attention_dim": 64, "attention_head_dim": 4},
        "vae_config": {**SD15_VAE, "block_out_channels": [32, 64, 128, 128], "layers_per_block": 1},
        "guidance_width": 64, "guidance_heads": 4,
    },
}


def build(size: str, device: str, attention: str) -> IDGBR:
    torch.manual_seed(0)
    net = IDGBR(CLASSES, pretrained=False, **SIZES[size]).to(device)
    if attention == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        for unet in (net.unet, net.guidance.encoder):
            unet.set_attn_processor(AttnProcessor())
    return net


def batch_of(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(size, 3, TILE, TILE, generator=g) * 2 - 1).to(device)
    labels = torch.randint(0, CLASSES, (size, TILE // 32, TILE // 32), generator=g)
    labels = labels.repeat_interleave(32, 1).repeat_interleave(32, 2).to(device)
    return image, labels, torch.roll(labels, 8, dims=2)


def measure(args, size: str, batch_size: int, precision: str, attention: str) -> dict:
    device = args.device
    net = build(size, device, attention).train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)
    image, labels, coarse = batch_of(batch_size, device)

    def train_step() -> None:
        with autocast(device, precision):
            cond = net.condition(image, coarse)
            clean = net.encode_labels(labels, sample=True)
            noise = torch.randn_like(clean)
            t = sample_timesteps(batch_size, 1000, cubic=True, device=clean.device)
            predicted, _ = net(net.scheduler.add_noise(clean, noise, t), t, cond)
            loss = F.mse_loss(predicted.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), autocast(device, precision):
            net.sample(image[:1], coarse[:1], steps=args.steps, guidance_scale=3.0,
                       generator=torch.Generator().manual_seed(0))

    record = train_and_infer(net, optimizer, train_step, infer, device, batch_size, args.warmup, args.iters)
    record["inference_latency_s_per_tile"] = record.pop("inference_latency_s")
    record["inference_img_per_s"] = round(1 / record["inference_latency_s_per_tile"], 4)
    return {"benchmark": "idgbr_speed", "size": size, "tile": TILE, "batch_size": batch_size, "precision": precision,
            "attention": attention, "sampling_steps": args.steps, "guidance_scale": 3.0, **record}


def parameters(size: str) -> dict:
    """Parameter counts (meta tensors: nothing is allocated)."""
    with torch.device("meta"):
        net = IDGBR(CLASSES, pretrained=False, **SIZES[size])
    count = lambda module: round(sum(p.numel() for p in module.parameters()) / 1e6, 3)  # noqa: E731
    return {"benchmark": "idgbr_params", "size": size, "unet_params_M": count(net.unet),
            "guidance_modules_params_M": count(net.guidance.blocks),
            "frozen_encoder_params_M": count(net.guidance.encoder), "vae_params_M": count(net.vae),
            "trainable_params_M": round(sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sizes", default=None, help="default sd15 on GPU, small on CPU")
    parser.add_argument("--batch-sizes", default=None, help="default 4 (the paper's) on GPU, 1 on CPU")
    parser.add_argument("--precisions", default=None, help="default fp32,bf16 on GPU, fp32 on CPU")
    parser.add_argument("--attention", default="sdpa,classic")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per tile (paper: 25)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2 on GPU, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 5 on GPU, 2 on CPU)")
    parser.add_argument("--quick", action="store_true", help="small, batch 1, fp32, sdpa, 2 DDIM steps (smoke)")
    parser.add_argument("--out", default=None, help="also write the JSON list to this file")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    if args.quick:
        args.sizes, args.batch_sizes, args.precisions, args.attention, args.steps = "small", "1", "fp32", "sdpa", 2
    args.warmup = 1 if args.quick else args.warmup if args.warmup is not None else (2 if gpu else 1)
    args.iters = 1 if args.quick else args.iters if args.iters is not None else (5 if gpu else 2)
    sizes = (args.sizes or ("sd15" if gpu else "small")).split(",")
    batches = [int(b) for b in (args.batch_sizes or ("4" if gpu else "1")).split(",")]
    precisions = (args.precisions or ("fp32,bf16" if gpu else "fp32")).split(",")

    records = Records(bench_environment(args.device))
    for size in sizes:
        records.add(parameters(size))
        for batch_size in batches:
            for precision in precisions:
                for attention in args.attention.split(","):
                    records.add(measure(args, size, batch_size, precision, attention))
    records.finish(args.out)


if __name__ == "__main__":
    main()
