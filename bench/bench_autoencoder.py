"""Autoencoder training and pre-encoding speed on this machine, each against a reference in the same run.

Rerun:  python bench/bench_autoencoder.py [--arch dvae_mdmnist] [--steps 6] [--batch 8] [--workers 1]

- Training (random init, MD-MNIST shards built here): ``--steps`` optimizer steps streamed from
  shards through the DataLoader, against the same steps on one batch already in memory (the
  reference: no data loading at all). Prints images/s for both and the share of time spent
  waiting for data, 1 − t_reference / t_streamed.
- Pre-encoding, fp32, eval mode: batches of 16 and 64 against one image at a time.
- bf16 autocast: the share of codes that differ from fp32, on random weights and on a tiny dVAE
  trained here for 200 steps on 64 MD-MNIST images (32 px); no full-size trained model exists yet.
No GPU machine was lent to this task; the GPU figures of issue 5 (FLOP/s against bf16 peak,
data stalls on an H100) need one.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from t2i_data.mdmnist import MDMNISTConfig, build, render_sample  # noqa: E402
from t2i_data.pngio import decode_image  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.stream import ShardStream, decode_and_augment  # noqa: E402
from t2i_models.builders import build_autoencoder  # noqa: E402


def md_images(n: int, size: int) -> torch.Tensor:
    x = np.stack([decode_image(render_sample(MDMNISTConfig(seed=0), "test", i)["png"]) for i in range(n)])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    return t if size == 128 else F.interpolate(t, size=(size, size), mode="area")


def step_fn(model, opt):
    def step(x, i):
        out = model(x, step=i)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return step


def train_rates(arch: str, steps: int, batch: int, workers: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_autoencoder(arch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = step_fn(model, opt)
    with tempfile.TemporaryDirectory() as tmp:
        build(MDMNISTConfig(seed=0, train=steps * batch * 2 + 64, test=0, shard_size=64), tmp, InProcessRunner())
        ds = ShardStream(Path(tmp) / "train", decode_and_augment(None, 0), batch, seed=0)
        loader = iter(DataLoader(ds, batch_size=None, num_workers=workers))
        step(next(loader)["image"].float().div_(255), 0)  # warm-up: workers started, first batch
        t = time.perf_counter()
        for i in range(steps):
            step(next(loader)["image"].float().div_(255), i + 1)
        streamed = time.perf_counter() - t
    x = md_images(batch, model.cfg.image_size)
    t = time.perf_counter()
    for i in range(steps):
        step(x, i + 1)
    ref = time.perf_counter() - t
    return steps * batch / streamed, steps * batch / ref


def encode_rate(model, x: torch.Tensor, batch: int) -> float:
    with torch.inference_mode():
        model.encode(x[:batch])
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            model.encode(x[i : i + batch])
    return len(x) / (time.perf_counter() - t)


def bf16_changes(model, x: torch.Tensor) -> float:
    with torch.inference_mode():
        a = model.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = model.encode(x)
    return float((a != b).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="dvae_mdmnist")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--n", type=int, default=64, help="images for the encoding figures")
    args = ap.parse_args()
    print(f"CPU, {torch.get_num_threads()} threads (python bench/bench_autoencoder.py --arch {args.arch} --steps {args.steps} "
          f"--batch {args.batch} --workers {args.workers} --n {args.n})")
    streamed, ref = train_rates(args.arch, args.steps, args.batch, args.workers)
    print(f"  training {args.arch}, batch {args.batch}: streamed from shards {streamed:6.1f} img/s, from memory {ref:6.1f} img/s "
          f"-> waiting for data {max(0.0, 1 - streamed / ref):.0%} of the time")
    torch.manual_seed(0)
    model = build_autoencoder(args.arch).eval()
    x = md_images(args.n, model.cfg.image_size)
    one = encode_rate(model, x, 1)
    r16, r64 = encode_rate(model, x, 16), encode_rate(model, x, 64)
    print(f"  encoding {args.arch}: batch 1 {one:6.1f} img/s, batch 16 {r16:6.1f} ({r16 / one:.2f}x), batch 64 {r64:6.1f} ({r64 / one:.2f}x)")
    print(f"  bf16 autocast changes {bf16_changes(model, x):.2%} of the codes (random weights)")
    torch.manual_seed(0)
    tiny = build_autoencoder("dvae_tiny")
    small = md_images(64, 32)
    tiny.init_output_bias(small)
    opt = torch.optim.Adam(tiny.parameters(), lr=3e-3)
    step = step_fn(tiny, opt)
    for i in range(200):
        step(small, i)
    print(f"  bf16 autocast changes {bf16_changes(tiny.eval(), small):.2%} of the codes (dvae_tiny trained 200 steps on 64 MD-MNIST images)")


if __name__ == "__main__":
    main()
