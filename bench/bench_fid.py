"""FID speed on this machine: the Inception feature pass (the dominant part) at several batch sizes
and torch thread counts, the full ``t2i eval images`` path against the forward alone, then FID of
``--images`` 128x128 images end to end.

Rerun:  nice python bench/bench_fid.py [--images 10000] [--sample 100] [--batches 25,50,100]
                                       [--thread-counts 1,2] [--batch 8] [--threads 2] [--repeats 2]
                                       [--device cpu] [--quick]

Images: MD-MNIST built here from the embedded MNIST digits (128x128 RGB PNG shards, the project's
own data): ``--images / 2`` in the train split (the real set) and as many in the test split (the
fake set), so ``--images`` is the number of images the Inception network sees. Weights: random
init saved in the published layout (``image_metrics.save_random_inception``: the same 566 tensors
and 23.9M values as pt_inception-2015-12-05-6726825d.pth, so the same cost per image).

Parts, each side's best of ``--repeats`` alternating rounds (``benchkit``):
1. forward alone: the network on ``--sample`` images decoded before the clock starts, as
   (B, 3, 128, 128) uint8 tensors, for each batch size x thread count (images/s);
2. the command's pass (``image_metrics.run_pass``: shard sha256 check, tar read, PNG decode,
   batching, resize to 299, Inception) against the forward alone on the same images, at
   ``--batch`` and ``--threads``: their ratio is what reading and decoding add;
3. (skipped with ``--images 0``) ``image_metrics.evaluate`` with fid,kid,is on the two splits:
   the wall time, split into loading the weights, the Inception passes, FID (QR factors, then the
   nuclear norm), KID (100 subsets of 1000), IS and the figure.
``--quick``: 8 images, batches 4,8, 1 round: a check that it runs.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import alternate, best, pin_threads, rounds, timed  # noqa: E402
from t2i_data.mdmnist import MDMNISTConfig, build  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_models import image_metrics as im  # noqa: E402


def forward_alone(model, tensors: list[torch.Tensor], device: str) -> None:
    with torch.inference_mode():
        for x in tensors:
            model(x.to(device))


def batches(arrs: np.ndarray, b: int) -> list[torch.Tensor]:
    """(N, H, W, 3) uint8 -> (B, 3, H, W) uint8 tensors, contiguous, as run_pass makes them."""
    return [torch.from_numpy(arrs[i : i + b]).permute(0, 3, 1, 2).contiguous() for i in range(0, len(arrs), b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000, help="images of the end-to-end FID (half real, half fake); 0: skip it")
    ap.add_argument("--sample", type=int, default=100, help="images of parts 1 and 2")
    ap.add_argument("--batches", default="25,50,100")
    ap.add_argument("--thread-counts", default="1,2")
    ap.add_argument("--batch", type=int, default=im.EvalConfig().batch_size, help="batch of parts 2 and 3 (default: EvalConfig's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of parts 2 and 3")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.images, args.sample, args.batches, args.batch, args.repeats = 8, 8, "4,8", 8, 1
    sizes = [int(b) for b in args.batches.split(",")]
    counts = [int(t) for t in args.thread_counts.split(",")]
    half = max(args.images // 2, args.sample)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        build(MDMNISTConfig(seed=0, train=half, test=args.images // 2 if args.images else 2, shard_size=1000), root / "md", InProcessRunner())
        weights = root / "random-inception.pth"
        im.save_random_inception(weights, seed=0)
        print(f"setup: MD-MNIST {half} + {args.images // 2} images (128x128 PNG shards) and random weights in {time.perf_counter() - t:.1f} s")
        model, _ = im.load_inception(weights, args.device)
        real = im.open_image_set(root / "md" / "train", "real")
        pos = np.arange(args.sample)
        arrs = np.stack([rgb for _, rgb, _, _ in im.iter_images(real, pos)])  # (S, 128, 128, 3) uint8
        n = len(arrs)
        print(f"device {args.device}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.repeats} round(s), best of each\n")

        # 1. forward alone: batch x threads
        pin_threads(1)
        forward_alone(model, batches(arrs[:4], 4), args.device)  # warm-up: first-call allocations
        sides = {}
        for th in counts:
            for b in sizes:
                ready = batches(arrs, b)
                sides[f"batch {b:3d}, {th} thread(s)"] = (lambda th=th, ready=ready: (pin_threads(th), timed(lambda: forward_alone(model, ready, args.device)))[1])
        times = alternate(sides, args.repeats)
        print(f"1. Inception forward alone, {n} images decoded beforehand (128x128 -> 299x299 inside the network)")
        for k, v in times.items():
            print(f"   {k}: {n / best(v):6.2f} images/s, {1000 * best(v) / n:6.1f} ms/image   (rounds: {rounds(v)} s)")

        # 2. the command's pass against the forward alone, same images, batch and threads
        pin_threads(args.threads)
        ready = batches(arrs, args.batch)
        sides = {"forward alone": lambda: timed(lambda: forward_alone(model, ready, args.device)),
                 "eval images pass": lambda: timed(lambda: im.run_pass(real, pos, model, None, args.batch, args.device))}
        times = alternate(sides, args.repeats)
        r = {k: n / best(v) for k, v in times.items()}
        print(f"\n2. batch {args.batch}, {torch.get_num_threads()} thread(s), {n} images")
        for k, v in times.items():
            print(f"   {k:17s} {r[k]:6.2f} images/s   (rounds: {rounds(v)} s)")
        print(f"   pass / forward alone (time): {best(times['eval images pass']) / best(times['forward alone']):.3f}")

        # 3. end to end, once, with the time of each part
        if args.images:
            spent: dict[str, float] = {}

            def timing(name, fn):
                def wrapped(*a, **k):
                    t0 = time.perf_counter()
                    try:
                        return fn(*a, **k)
                    finally:
                        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
                return wrapped

            parts = ("load_inception", "run_pass", "gaussian_factor", "fid_from_factors", "kid_from_features", "is_from_logits", "metrics_figure")
            for name in parts:
                setattr(im, name, timing(name, getattr(im, name)))
            cfg = im.EvalConfig(metrics=("fid", "kid", "is"), batch_size=args.batch, device=args.device, splits=2 if args.quick else 10)
            t0 = time.perf_counter()
            rep = im.evaluate(str(root / "md" / "train"), [f"fake={root / 'md' / 'test'}"], root / "out", cfg, inception=str(weights))
            wall = time.perf_counter() - t0
            m = rep["models"]["fake"]
            print(f"\n3. t2i eval images --metrics fid,kid,is: {rep['real']['images']} real vs {m['images']} fake images, batch {args.batch}, "
                  f"{torch.get_num_threads()} thread(s)")
            print(f"   wall {wall:.1f} s ({wall / 60:.1f} min); {(rep['real']['images'] + m['images']) / spent['run_pass']:.2f} images/s in the passes")
            for name in parts:
                print(f"   {name:18s} {spent.get(name, 0.0):8.1f} s")
            print(f"   FID {m['fid']['value']:.4f}, KID {m['kid']['mean']:.5f} ± {m['kid']['std']:.5f}, IS {m['is']['mean']:.4f} "
                  "(random weights: only the time means anything)")


if __name__ == "__main__":
    main()
