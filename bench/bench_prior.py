"""Prior training speed on this machine's CPU, against the same steps without data loading.

Rerun:  python bench/bench_prior.py [--arch g1_mdmnist] [--steps 4] [--batch 4] [--repeats 3] [--threads 1] [--quick]

Synthetic MD-MNIST-shaped token shards (12 text tokens, 32×32 image tokens, V = 256) are
streamed through ``TokenStream`` into ``--steps`` optimizer steps of the named prior; the
reference runs the same steps on one batch already in memory. The two sides alternate in one
process, ``--repeats`` rounds (each streamed round a new epoch), torch pinned to ``--threads``
threads; each side's best round counts. Prints tokens/s for both and the share of time spent
waiting for data, 1 − t_reference / t_streamed. ``--quick``: g1_tiny, 2 steps, 2 rounds.
The GPU figures (FLOP/s against the bf16 peak, waits on a GPU) are ``bench/gpu_suite.py``'s.
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
from benchkit import add_args, alternate, best, pin_threads, rounds  # noqa: E402

from t2i_data.token_stream import TokenStream  # noqa: E402
from t2i_models.prior_builders import PRIORS  # noqa: E402
from t2i_models.train_prior import window_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="g1_mdmnist")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="g1_tiny, 2 steps, 2 rounds: a check that it runs")
    add_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.arch, args.steps, args.repeats = "g1_tiny", 2, 2
    threads = pin_threads(args.threads)
    tokens = dict(text_vocab=5000, text_len=12, pad_id=0, image_vocab=512, grid=32)
    if args.arch.endswith("_tiny"):
        tokens.update(image_vocab=32, grid=4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in ("img", "txt"):
            (root / k).mkdir()
        write_sets(root, (args.steps + 2) * args.batch, 1, 12, 1, text_vocab=tokens["text_vocab"], image_vocab=tokens["image_vocab"],
                   grid=tokens["grid"], both=False)
        ds = TokenStream(root / "img", root / "txt", batch_size=args.batch, seed=0)
        torch.manual_seed(0)
        model = PRIORS[args.arch](**tokens)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        cpu = torch.device("cpu")

        def step(batch):
            losses, _, _ = window_loss(model, [batch], cpu, False, 1)
            opt.zero_grad()
            losses[0].backward()
            opt.step()

        fixed = next(iter(ds))
        step(fixed)  # warm-up
        epoch = [0]

        def streamed() -> float:
            ds.set_epoch(epoch[0])
            epoch[0] += 1
            it = iter(ds)
            t = time.perf_counter()
            for _ in range(args.steps):
                step(next(it))
            return time.perf_counter() - t

        def memory() -> float:
            t = time.perf_counter()
            for _ in range(args.steps):
                step(fixed)
            return time.perf_counter() - t

        times = alternate({"streamed": streamed, "memory": memory}, args.repeats)
    s, ref = best(times["streamed"]), best(times["memory"])
    per_step = args.batch * (tokens["text_len"] + tokens["grid"] ** 2)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} ({n_params / 1e6:.1f}M parameters), batch {args.batch}, CPU, torch {threads} threads "
          f"(python bench/bench_prior.py --arch {args.arch} --steps {args.steps} --batch {args.batch} --repeats {args.repeats} "
          f"--threads {args.threads})")
    print(f"  streamed from token shards: {per_step * args.steps / s:8,.0f} tokens/s   from memory: {per_step * args.steps / ref:8,.0f} tokens/s"
          f"   -> waiting for data {max(0.0, 1 - ref / s):.1%} of the time (best of {args.repeats} alternating rounds)")
    print(f"  every round, s: streamed {rounds(times['streamed'])}; memory {rounds(times['memory'])}")


if __name__ == "__main__":
    main()
