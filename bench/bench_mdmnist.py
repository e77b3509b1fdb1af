"""MD-MNIST build speed against a thesis-style reference, measured in the same run.

Rerun:  python bench/bench_mdmnist.py [--n 20000] [--full]
  --full also times the whole 100,000 + 10,000 build from the MNIST IDX files in
  $T2I_REALDATA/mnist (default ../shared/realdata) with 2 dask workers.

Prints, per core: our samples/s, the reference's samples/s and their ratio; the ratio of our
total build time to the time spent in PNG encoding alone (our encoder, and Pillow's at
compress_level 1 on the same images); and the 2-worker throughput.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_thesis  # noqa: E402

from t2i_data.mdmnist import MDMNISTConfig, build  # noqa: E402
from t2i_data.pngio import decode_image, encode_png  # noqa: E402
from t2i_data.runner import InProcessRunner, make_runner  # noqa: E402
from t2i_data.sources.mnist import load_mnist  # noqa: E402
from t2i_data.tario import iter_samples  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="samples per measurement")
    ap.add_argument("--full", action="store_true", help="also time the full 110,000-sample IDX build with 2 workers")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    n = args.n
    src = load_mnist("embedded")  # loaded before timing, as in both generators
    pool = src.pools["train"]
    cfg = MDMNISTConfig(seed=0, train=n, test=0, shard_size=5_000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_ref = timed(lambda: reference_thesis.generate(pool.images, pool.labels, n, tmp / "ref"))
        t_ours = timed(lambda: build(cfg, tmp / "ours1", InProcessRunner()))
        with make_runner(workers=2) as runner:
            t_two = timed(lambda: build(cfg, tmp / "ours2", runner))  # cluster start-up excluded
        canvases = [decode_image(s["png"]) for p in sorted((tmp / "ours1" / "train").glob("*.tar")) for s in iter_samples(p)]
        t_png = timed(lambda: [encode_png(c, cfg.png_level) for c in canvases])

        def pillow():
            for c in canvases:
                Image.fromarray(c).save(io.BytesIO(), "PNG", compress_level=1)

        t_pil = timed(pillow)
        t_full = None
        if args.full:
            mnist = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata")) / "mnist"
            full = MDMNISTConfig(seed=0, mnist=str(mnist))
            t_full = timed(lambda: (lambda r: (build(full, tmp / "full", r), r.close()))(make_runner(workers=2)))

    us = lambda t: t / n * 1e6  # noqa: E731
    print(f"MD-MNIST build, {n} samples, embedded MNIST, seed 0 (python bench/bench_mdmnist.py --n {n}{' --full' if args.full else ''})")
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
