"""Training-step time of the VQ-VAE study's model (vqvae_study128) with the pixel MSE against the
ResNet-18 perceptual loss, on this machine's CPU, in one process.

Rerun:  python bench/bench_vqvae_study.py [--arch vqvae_study128] [--batch 1] [--steps 1] [--repeats 3] [--threads 2]

Sides, alternating each round (``benchkit.alternate``; each side's best round counts): one
optimizer step (Adam, forward + backward + update, train mode) with ``loss = "mse"`` and with the
perceptual loss on layer2 + fc (the two layers the study tried; the dearer setting). The ResNet-18
has random weights (``resnet.ResNet18()``; its cost does not depend on the values), frozen, in eval
mode, as the trainer holds it. Images: uniform noise in [0, 1], (batch, 3, S, S) at the arch's S.
One warm-up step before the timed rounds. Prints seconds per step for both sides and their ratio,
then the perceptual loss alone (forward + backward into the reconstruction, best of 5) for
layer2 and for layer2 + fc: on a loaded machine the step difference is within the rounds' noise,
and this is the part of the step the loss adds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, rounds  # noqa: E402
from t2i_models.builders import build_autoencoder  # noqa: E402
from t2i_models.perceptual import PerceptualLoss  # noqa: E402
from t2i_models.resnet import ResNet18  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vqvae_study128")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps per timed round")
    add_args(ap, repeats=3, threads=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    torch.manual_seed(0)
    model = build_autoencoder(args.arch).train()
    s = model.cfg.image_size
    x = torch.rand(args.batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    model.init_output_bias(x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    net = ResNet18()
    both = PerceptualLoss(net, {"layer2": 1.0, "fc": 1.0})
    losses = {"mse": None, "perceptual layer2+fc": both}

    def side(rec_loss):
        def run() -> float:
            t = time.perf_counter()
            for i in range(args.steps):
                out = model(x, step=i, **({} if rec_loss is None else {"rec_loss": rec_loss}))
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
            return (time.perf_counter() - t) / args.steps
        return run

    sides = {name: side(fn) for name, fn in losses.items()}
    sides["mse"]()  # warm-up
    times = alternate(sides, args.repeats)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} ({params:,} parameters), batch {args.batch} of {s}x{s}, {threads} torch threads, "
          f"{args.steps} step(s) per round, {args.repeats} rounds, best round counts")
    ref = best(times["mse"])
    for name, ts in times.items():
        ratio = "" if name == "mse" else f"  ({best(ts) / ref:.3f}x the mse step)"
        print(f"  {name:22s} {best(ts):8.3f} s/step   rounds: {rounds(ts, '.3f')}{ratio}")
    for name, fn in (("layer2", PerceptualLoss(net, {"layer2": 1.0})), ("layer2+fc", both)):
        alone = []
        for _ in range(5):
            r = torch.rand_like(x).requires_grad_(True)
            t = time.perf_counter()
            fn(r, x).backward()
            alone.append(time.perf_counter() - t)
        print(f"  perceptual loss alone, {name:9s} {best(alone):8.4f} s (forward + backward, batch {args.batch}; "
              f"{best(alone) / ref:.2%} of the mse step)")


if __name__ == "__main__":
    main()
