"""Prior training speed on this machine's CPU, against the same steps without data loading.

Rerun:  python bench/bench_prior.py [--arch g1_mdmnist] [--steps 4] [--batch 4]

Synthetic MD-MNIST-shaped token shards (12 text tokens, 32×32 image tokens, V = 256) are
streamed through ``TokenStream`` into ``--steps`` optimizer steps of the named prior; the
reference runs the same steps on one batch already in memory. Prints tokens/s for both and the
share of time spent waiting for data, 1 − t_reference / t_streamed. (No GPU was lent to the task
that wrote this: the H100 figures of issue 6 — FLOP/s against bf16 peak, steps waiting for data —
need one.)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_token_stream import write_sets  # noqa: E402

from t2i_data.token_stream import TokenStream  # noqa: E402
from t2i_models.prior_builders import PRIORS  # noqa: E402
from t2i_models.train_prior import window_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="g1_mdmnist")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in ("img", "txt", "both"):
            (root / k).mkdir()
        write_sets(root, (args.steps + 2) * args.batch, 1, 12, 1)
        ds = TokenStream(root / "img", root / "txt", batch_size=args.batch, seed=0)
        tokens = dict(text_vocab=5000, text_len=12, pad_id=0, image_vocab=512, grid=32)
        torch.manual_seed(0)
        model = PRIORS[args.arch](**tokens)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        cpu = torch.device("cpu")

        def step(batch):
            losses, _, _ = window_loss(model, [batch], cpu, False, 1)
            opt.zero_grad()
            losses[0].backward()
            opt.step()

        it = iter(ds)
        step(next(it))  # warm-up
        t = time.perf_counter()
        for _ in range(args.steps):
            step(next(it))
        streamed = time.perf_counter() - t
        fixed = next(iter(ds))
        t = time.perf_counter()
        for _ in range(args.steps):
            step(fixed)
        ref = time.perf_counter() - t
    per_step = args.batch * (12 + 32 * 32)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} ({n_params / 1e6:.1f}M parameters), batch {args.batch}, CPU {torch.get_num_threads()} threads "
          f"(python bench/bench_prior.py --arch {args.arch} --steps {args.steps} --batch {args.batch})")
    print(f"  streamed from token shards: {per_step * args.steps / streamed:8,.0f} tokens/s   from memory: {per_step * args.steps / ref:8,.0f} tokens/s"
          f"   -> waiting for data {max(0.0, 1 - ref / streamed):.1%} of the time")


if __name__ == "__main__":
    main()
