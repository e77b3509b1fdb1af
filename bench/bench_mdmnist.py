"""MD-MNIST build speed against a thesis-style reference, measured in the same run.

Rerun:  python bench/bench_mdmnist.py [--n 20000] [--full] [--repeats 3] [--threads 1] [--quick]
  --full also times the whole 100,000 + 10,000 build from the MNIST IDX files in
  $T2I_REALDATA/mnist (default ../shared/realdata) with 2 dask workers.
  --quick: 1,000 samples, 2 rounds: a check that it runs.

Prints, per core: our samples/s, the reference's samples/s and their ratio; the ratio of our
total build time to the time spent in PNG encoding alone (our encoder, and Pillow's at
compress_level 1 on the same images); and the 2-worker throughput. Reference, in-process build
and 2-worker build alternate in one process for ``--repeats`` rounds, as do the two PNG encoders;
each side's best round counts. torch's threads are pinned to ``--threads`` (printed).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_thesis  # noqa: E402
from benchkit import add_args, alternate, best, pin_threads, timed  # noqa: E402

from t2i_data.mdmnist import MDMNISTConfig, build  # noqa: E402
from t2i_data.pngio import decode_image, encode_png  # noqa: E402
from t2i_data.runner import InProcessRunner, make_runner  # noqa: E402
from t2i_data.sources.mnist import load_mnist  # noqa: E402
from t2i_data.tario import iter_samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="samples per measurement")
    ap.add_argument("--full", action="store_true", help="also time the full 110,000-sample IDX build with 2 workers")
    ap.add_argument("--quick", action="store_true", help="1,000 samples, 2 rounds: a check that it runs")
    add_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 1_000, 2
    threads = pin_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    n = args.n
    src = load_mnist("embedded")  # loaded before timing, as in both generators
    pool = src.pools["train"]
    cfg = MDMNISTConfig(seed=0, train=n, test=0, shard_size=min(5_000, n))
    with tempfile.TemporaryDirectory() as tmp, make_runner(workers=2) as runner:  # cluster start-up excluded
        tmp = Path(tmp)
        k = iter(range(10**6))  # a fresh output folder for every build
        times = alternate({"ref": lambda: timed(lambda: reference_thesis.generate(pool.images, pool.labels, n, tmp / f"ref{next(k)}")),
                           "ours": lambda: timed(lambda: build(cfg, tmp / f"ours{next(k)}", InProcessRunner())),
                           "two": lambda: timed(lambda: build(cfg, tmp / f"two{next(k)}", runner))}, args.repeats)
        t_ref, t_ours, t_two = best(times["ref"]), best(times["ours"]), best(times["two"])
        first = next(p for p in sorted(tmp.glob("ours*")))
        canvases = [decode_image(s["png"]) for p in sorted((first / "train").glob("*.tar")) for s in iter_samples(p)]

        def pillow():
            for c in canvases:
                Image.fromarray(c).save(io.BytesIO(), "PNG", compress_level=1)

        enc = alternate({"ours": lambda: timed(lambda: [encode_png(c, cfg.png_level) for c in canvases]), "pillow": lambda: timed(pillow)},
                        args.repeats)
        t_png, t_pil = best(enc["ours"]), best(enc["pillow"])
        t_full = None
        if args.full:
            mnist = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata")) / "mnist"
            full = MDMNISTConfig(seed=0, mnist=str(mnist))
            t_full = timed(lambda: (lambda r: (build(full, tmp / "full", r), r.close()))(make_runner(workers=2)))

    us = lambda t: t / n * 1e6  # noqa: E731
    print(f"MD-MNIST build, {n} samples, embedded MNIST, seed 0, torch {threads} threads, best of {args.repeats} alternating rounds "
          f"(python bench/bench_mdmnist.py --n {n} --repeats {args.repeats} --threads {args.threads}{' --full' if args.full else ''})")
    print(f"  reference (thesis style), 1 core : {n / t_ref:8,.0f} samples/s  ({us(t_ref):6.0f} us/sample)")
    print(f"  t2i build, in-process, 1 core    : {n / t_ours:8,.0f} samples/s  ({us(t_ours):6.0f} us/sample)")
    print(f"  speed-up per core vs reference   : {t_ref / t_ours:8.1f}x   (target >= 10x)")
    print(f"  t2i build, 2 dask workers        : {n / t_two:8,.0f} samples/s  ({n / t_two / 2:,.0f} per core)")
    print(f"  PNG encode alone, t2i encoder    : {us(t_png):6.0f} us/sample -> build / encode = {t_ours / t_png:.2f}x")
    print(f"  PNG encode alone, Pillow level 1 : {us(t_pil):6.0f} us/sample -> build / encode = {t_ours / t_pil:.2f}x   (target <= 1.3x)")
    if t_full is not None:
        print(f"  full 100,000 + 10,000 IDX build, 2 workers, cluster start included: {t_full:.1f} s  (target < 30 s)")


if __name__ == "__main__":
    main()
