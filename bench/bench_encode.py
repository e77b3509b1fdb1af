"""Pre-encoding speed on this machine's CPU: batched against one image at a time, same run.

Rerun:  python bench/bench_encode.py [--n 64] [--arch dvae_mdmnist dvae_cub128]

For each architecture (random weights: no trained checkpoint exists yet, and speed does not
depend on the weights) it encodes --n MD-MNIST images at the model's size, fp32, eval mode:
batch 1 (the reference) and batches of 16 and 64, and prints images/s and the ratio. It also
prints the share of codes that change when the encoder runs under bf16 autocast instead of
fp32; on random weights that share is larger than on a trained model, so read it as an upper
bound until a trained checkpoint is measured. The GPU figures the issue asks for need a GPU
machine, which this task was not lent.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from t2i_data.mdmnist import MDMNISTConfig, render_sample
from t2i_data.pngio import decode_image
from t2i_models.builders import build_autoencoder


def images(n: int, size: int) -> torch.Tensor:
    x = np.stack([decode_image(render_sample(MDMNISTConfig(seed=0), "test", i)["png"]) for i in range(n)])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    return t if size == 128 else F.interpolate(t, size=(size, size), mode="area")


def rate(model, x: torch.Tensor, batch: int) -> float:
    with torch.inference_mode():
        model.encode(x[:batch])  # warm-up
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            model.encode(x[i : i + batch])
    return len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--arch", nargs="+", default=["dvae_mdmnist", "dvae_cub128"])
    args = ap.parse_args()
    print(f"pre-encoding on CPU ({torch.get_num_threads()} threads), {args.n} images, fp32 "
          f"(python bench/bench_encode.py --n {args.n} --arch {' '.join(args.arch)})")
    for arch in args.arch:
        torch.manual_seed(0)
        model = build_autoencoder(arch).eval()
        x = images(args.n, model.cfg.image_size)
        ref = rate(model, x, 1)
        r16, r64 = rate(model, x, 16), rate(model, x, 64)
        with torch.inference_mode():
            t32 = model.encode(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t16 = model.encode(x)
        flips = float((t32 != t16).float().mean())
        print(f"  {arch:14} batch 1: {ref:7.1f} img/s   batch 16: {r16:7.1f} ({r16 / ref:4.2f}x)   batch 64: {r64:7.1f} ({r64 / ref:4.2f}x)"
              f"   bf16 changes {flips:.1%} of codes (random weights)")


if __name__ == "__main__":
    main()
