"""``rsseg infer``'s peak memory and speed on growing uint16 GeoTIFF scenes: the scene is read strip by strip,
so the peak should stay near that of a scene one window-row high, not grow with H × W.

A tiny UNet (ResNet-18, encoder depth 3) is trained for one step on the synthetic Potsdam twin (the weights do
not matter here), then each ``rsseg infer`` runs in its own process; its peak RSS is that process's
``ru_maxrss`` (os.wait4), its time the wall-clock of the command. For reference, a whole-scene approach holds
at least the float32 image (4·C·H·W bytes) and the logits (4·K·H·W): ``whole_scene_floor_mib``.

Usage: python benchmarks/infer_memory.py [--sizes 1024,2048,4096] [--window 512] [--device cpu|cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from speed_common import Records, bench_environment

REPO = Path(__file__).resolve().parents[1]
CLASSES, BANDS = 6, 3


def train_tiny_checkpoint(work: Path) -> Path:
    """One training step of a tiny UNet on the synthetic Potsdam twin, through rsseg fit."""
    from rsseg.cli import main
    from rsseg.data.datasets.potsdam import prepare_potsdam
    from rsseg.data.synthetic import write_synthetic_potsdam

    raw, root = work / "raw", work / "root"
    write_synthetic_potsdam(raw, seed=0, tiles={"2_11": (300, 257), "2_10": (200, 230), "2_13": (230, 211)})
    prepare_potsdam(raw, root, patch_size=128, progress=False)
    main(["fit", "--config", str(REPO / "experiments/unet/potsdam.yaml"), "--config",
          str(REPO / "experiments/unet/smoke.yaml"), "--config", str(REPO / "experiments/smoke/potsdam.yaml"),
          "--data.init_args.root", str(root), "--data.init_args.crop_size", "64", "--data.init_args.batch_size", "2",
          "--data.init_args.num_workers", "0", "--model.init_args.net.init_args.arch_kwargs",
          '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}', "--trainer.default_root_dir", str(work / "fit"),
          "--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.logger", "false"])
    return next((work / "fit").rglob("last.ckpt"))


def write_scene(path: Path, size: int) -> None:
    """A size² uint16 GeoTIFF of smooth random fields (12-bit values), written in strips."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(size)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=BANDS, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(360_000, 5_800_000, 0.3, 0.3), tiled=True) as scene:
        for row in range(0, size, 512):
            rows = min(512, size - row)
            strip = rng.integers(0, 4096, (BANDS, rows, size), dtype=np.uint16)
            scene.write(strip, window=Window(0, row, size, rows))


def run_infer(ckpt: Path, scene: Path, out: Path, window: int, device: str) -> dict:
    """One rsseg infer in its own process: wall-clock and peak RSS."""
    command = [sys.executable, "-m", "rsseg.cli", "infer", "--ckpt", str(ckpt), "--input", str(scene), "--output",
               str(out), "--window", str(window), "--value-scale", "4095", "--device", device]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"rsseg infer failed: {process.stderr.read().decode()[-2000:]}")
    return {"wall_s": round(elapsed, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    records = Records(bench_environment(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = train_tiny_checkpoint(work)
        for size in map(int, args.sizes.split(",")):
            scene = work / f"scene_{size}.tif"
            write_scene(scene, size)
            result = run_infer(ckpt, scene, work / "labels", args.window, args.device)
            records.add({"benchmark": "infer_memory", "size": size, "dtype": "uint16", "bands": BANDS,
                         "window": args.window, **result, "scene_mib": round(BANDS * 2 * size * size / 2**20, 1),
                         "whole_scene_floor_mib": round(4 * (BANDS + CLASSES) * size * size / 2**20, 1)})
    records.finish(args.out)


if __name__ == "__main__":
    main()
