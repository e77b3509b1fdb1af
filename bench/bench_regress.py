"""Step time of the Transformer/VAE study's regression MLP (``regress_study``: 4096 -> 4096 x7 ->
131,072, 654,471,168 parameters, 2.6 GB in fp32) on CPU: one optimizer step (forward, MSE against a
random target, backward, update) on random inputs at batch 1, 2, 4 and 8, best of ``--repeats``
after one warm-up step, at ``--threads`` torch threads.

The update is plain SGD by default: the weights and their gradients already take 5.2 GB, and Adam's
two moments would add another 5.2 GB on a machine whose memory five processes share (``--optimizer
adam`` runs it where the memory is there). ``--arch regress_tiny`` times the test model instead.

    python bench/bench_regress.py --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from t2i_models.regress import build_regressor, param_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", default="regress_study")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    in_dim, out_dim = (4096, 131072) if a.arch == "regress_study" else (32, 64)
    m = build_regressor(a.arch, "mlp", in_dim, out_dim)
    opt = (torch.optim.SGD if a.optimizer == "sgd" else torch.optim.Adam)(m.parameters(), lr=1e-4)
    print(f"{a.arch}: {param_count(m.cfg):,} parameters ({param_count(m.cfg) * 4 / 1e9:.2f} GB fp32), {a.optimizer}, "
          f"{torch.get_num_threads()} threads")
    for b in [int(x) for x in a.batches.split(",")]:
        x, t = torch.randn(b, in_dim), torch.randn(b, out_dim)
        times = []
        for i in range(1 + a.repeats):
            t0 = time.perf_counter()
            loss = F.mse_loss(m(x), t)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        print(f"batch {b}: {min(times) * 1e3:,.0f} ms per step (best of {a.repeats}: {', '.join(f'{s * 1e3:,.0f}' for s in times)}), "
              f"{b / min(times):.1f} samples/s")


if __name__ == "__main__":
    main()
