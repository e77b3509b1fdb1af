"""Step time of the CVAE study's two models at the study's batch size on CPU: one optimizer step
(forward, BCE + KL, backward, Adam) of ``cvae_mlp_fmnist`` (batch 128, 1×28×28) and
``cvae_conv_coco64`` (batch 128, 3×64×64, D = 768) on random inputs, median of ``--repeats``
after ``--warmup`` steps, at ``--threads`` torch threads. Prints ms per step and images/s, and
the conv model's time as a ratio to the MLP's.

    python bench/bench_cvae.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from t2i_models.cvae import build_cvae


def step_times(arch: str, batch: int, warmup: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    m = build_cvae(arch)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    if m.kind == "cvae_mlp":
        x, c = (torch.rand(batch, 1, 28, 28) > 0.5).float(), torch.randint(0, 10, (batch,))
    else:
        x, c = torch.rand(batch, 3, 64, 64), torch.randn(batch, m.cfg.text_dim)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        res = m(x, c, generator=g)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    med = {}
    for arch in ("cvae_mlp_fmnist", "cvae_conv_coco64"):
        t = step_times(arch, a.batch, a.warmup, a.repeats)
        med[arch] = statistics.median(t)
        print(f"{arch}: batch {a.batch}, {a.threads} threads: {1000 * med[arch]:.1f} ms per step (min {1000 * min(t):.1f}, "
              f"max {1000 * max(t):.1f}), {a.batch / med[arch]:,.0f} images/s")
    print(f"conv / mlp step time: {med['cvae_conv_coco64'] / med['cvae_mlp_fmnist']:.1f}x")


if __name__ == "__main__":
    main()
