"""Encode throughput of a two-level VQ-VAE-2 against a one-level VQ-VAE on the same images, through
``t2i_models.encode.encode_arrays`` (what ``t2i encode`` runs per shard: uint8 views in, codes out;
the VQ-VAE-2 returns its top and bottom grids).

Rerun:  python bench/bench_vqvae2.py [--images 512] [--batch 64] [--threads 1] [--repeats 3]
                                     [--pair vqvae2_tiny,vqvae_tiny]

Images: ``--images`` deterministic 32×32 RGB colour blobs (uint8), built once, the same for both
models, decoded before the clock starts (this measures the models, not JPEG decoding). Models:
the builders named by ``--pair`` with their codebooks started from the images' latents
(``init_output_bias``), in eval mode, fp32 on the CPU. Sides alternate for ``--repeats`` rounds;
each side's best counts (``benchkit``). Prints images/s per model and the ratio
VQ-VAE-2 / VQ-VAE.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, rounds, timed  # noqa: E402
from t2i_models.builders import build_autoencoder  # noqa: E402
from t2i_models.encode import encode_arrays  # noqa: E402


def blobs(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` (size, size, 3) uint8 images: a soft disc of one colour on another, from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = []
    for _ in range(n):
        cy, cx = rng.random(2)
        a, b = rng.random(3), rng.random(3)
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)[..., None]
        out.append(np.round((a * w + b * (1 - w)) * 255).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pair", default="vqvae2_tiny,vqvae_tiny", help="two builders: the VQ-VAE-2, then the VQ-VAE")
    add_args(ap, repeats=3, threads=1)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    names = args.pair.split(",")
    models = {}
    for name in names:
        torch.manual_seed(0)
        m = build_autoencoder(name)
        size = m.cfg.image_size
        images = blobs(args.images, size)
        m.init_output_bias(torch.from_numpy(np.stack(images[:64])).permute(0, 3, 1, 2).float() / 255)
        models[name] = m.eval()
    if len({m.cfg.image_size for m in models.values()}) != 1:
        raise SystemExit(f"--pair {args.pair}: the two models take different image sizes")
    print(f"torch {torch.__version__}, {threads} thread(s); {args.images} images of {size}x{size}, batch {args.batch}")
    sides = {name: (lambda m=m: timed(lambda: encode_arrays(m, images, args.batch))) for name, m in models.items()}
    times = alternate(sides, args.repeats)
    rate = {name: args.images / best(t) for name, t in times.items()}
    for name, t in times.items():
        grids = models[name].cfg.levels if hasattr(models[name], "encode_levels") else {"one": (models[name].cfg.grid, None)}
        shown = ", ".join(f"{k} {g}x{g}" for k, (g, _) in grids.items())
        print(f"{name:<16} {rate[name]:>9,.0f} images/s (best of s: {rounds(t, '.3f')}; grids {shown})")
    print(f"ratio {names[0]} / {names[1]}: {rate[names[0]] / rate[names[1]]:.2f}")


if __name__ == "__main__":
    main()
