"""Autoencoder training and pre-encoding speed on this machine, each against a reference in the same run.

Rerun:  python bench/bench_autoencoder.py [--arch dvae_mdmnist] [--steps 6] [--batch 8] [--workers 1] [--repeats 3] [--threads 1] [--quick]

Every comparison alternates its sides in one process for ``--repeats`` rounds, each side's best
round counts; torch runs on ``--threads`` threads (printed; loader workers take one each).
- Training (random init, MD-MNIST shards built here): ``--steps`` optimizer steps streamed from
  shards through ``stream.loader`` (the trainer's reader: uint8 images, scaled on arrival), each
  round a new epoch, against the same steps on one batch already in memory (the reference: no
  data loading at all). Prints images/s for both and the share of time spent waiting for data,
  1 − t_reference / t_streamed.
- Pre-encoding, fp32, eval mode: batches of 16 and 64 against one image at a time.
- bf16 autocast: the share of codes that differ from fp32, on random weights and on a tiny dVAE
  trained here for 200 steps on 64 MD-MNIST images (32 px); no full-size trained model exists yet.
``--quick``: dvae_tiny at 128 px, 2 steps of 2, 2 rounds, 16 images, 20 training steps for the
bf16 check: a check that it runs. The GPU figures are ``bench/gpu_suite.py``'s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, rounds  # noqa: E402
from t2i_data.mdmnist import MDMNISTConfig, build, render_sample  # noqa: E402
from t2i_data.pngio import decode_image  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.stream import ShardStream, decode_and_augment, loader  # noqa: E402
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


def as_float(x: torch.Tensor) -> torch.Tensor:
    """A batch's images as float [0, 1], as the trainer scales the stream's uint8 on arrival."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def train_rates(arch: str, steps: int, batch: int, workers: int, repeats: int, over: dict) -> tuple[list[float], list[float]]:
    """Seconds per round for ``steps`` steps streamed from shards and from memory, rounds alternating."""
    torch.manual_seed(0)
    model = build_autoencoder(arch, **over)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = step_fn(model, opt)
    x = md_images(batch, model.cfg.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        build(MDMNISTConfig(seed=0, train=(steps + 1) * batch * max(workers, 1) * 2 + 64, test=0, shard_size=32), tmp, InProcessRunner())
        ds = ShardStream(Path(tmp) / "train", decode_and_augment(None, 0), batch, seed=0)
        epoch = [0]

        def streamed() -> float:
            ds.set_epoch(epoch[0], 0, workers)
            epoch[0] += 1
            it = loader(ds, workers)
            step(as_float(next(it)["image"]), 0)  # workers started (the first round), first batch
            t = time.perf_counter()
            for i in range(steps):
                step(as_float(next(it)["image"]), i + 1)
            dt = time.perf_counter() - t
            it.close()
            return dt

        def memory() -> float:
            t = time.perf_counter()
            for i in range(steps):
                step(x, i + 1)
            return time.perf_counter() - t

        times = alternate({"streamed": streamed, "memory": memory}, repeats)
        ds.__dict__.pop("_loaders", None)  # the loader's persistent workers end here
    return times["streamed"], times["memory"]


def encode_time(model, x: torch.Tensor, batch: int) -> float:
    with torch.inference_mode():
        model.encode(x[:batch])
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            model.encode(x[i : i + batch])
    return time.perf_counter() - t


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
    ap.add_argument("--quick", action="store_true", help="dvae_tiny at 128 px, tiny counts: a check that it runs")
    add_args(ap)
    args = ap.parse_args()
    over, tiny_steps = {}, 200
    if args.quick:
        args.arch, args.steps, args.batch, args.repeats, args.n, tiny_steps = "dvae_tiny", 2, 2, 2, 16, 20
        over = dict(image_size=128)
    threads = pin_threads(args.threads)
    print(f"CPU, torch {threads} threads, {args.workers} loader workers (python bench/bench_autoencoder.py --arch {args.arch} --steps {args.steps} "
          f"--batch {args.batch} --workers {args.workers} --n {args.n} --repeats {args.repeats} --threads {args.threads}"
          f"{' --quick' if args.quick else ''})")
    ts, tm = train_rates(args.arch, args.steps, args.batch, args.workers, args.repeats, over)
    streamed, ref = args.steps * args.batch / best(ts), args.steps * args.batch / best(tm)
    print(f"  training {args.arch}, batch {args.batch}: streamed from shards {streamed:6.1f} img/s, from memory {ref:6.1f} img/s "
          f"-> waiting for data {max(0.0, 1 - streamed / ref):.0%} of the time (best of {args.repeats} alternating rounds)")
    print(f"  every round, s: streamed {rounds(ts)}; memory {rounds(tm)}")
    torch.manual_seed(0)
    model = build_autoencoder(args.arch, **over).eval()
    x = md_images(args.n, model.cfg.image_size)
    enc = alternate({b: (lambda b=b: encode_time(model, x, b)) for b in (1, 16, 64)}, args.repeats)
    one, r16, r64 = (len(x) / best(enc[b]) for b in (1, 16, 64))
    print(f"  encoding {args.arch}: batch 1 {one:6.1f} img/s, batch 16 {r16:6.1f} ({r16 / one:.2f}x), batch 64 {r64:6.1f} ({r64 / one:.2f}x) "
          f"(best of {args.repeats} alternating rounds)")
    print(f"  bf16 autocast changes {bf16_changes(model, x):.2%} of the codes (random weights)")
    torch.manual_seed(0)
    tiny = build_autoencoder("dvae_tiny")
    small = md_images(64, 32)
    tiny.init_output_bias(small)
    opt = torch.optim.Adam(tiny.parameters(), lr=3e-3)
    step = step_fn(tiny, opt)
    for i in range(tiny_steps):
        step(small, i)
    print(f"  bf16 autocast changes {bf16_changes(tiny.eval(), small):.2%} of the codes (dvae_tiny trained {tiny_steps} steps on 64 MD-MNIST images)")


if __name__ == "__main__":
    main()
