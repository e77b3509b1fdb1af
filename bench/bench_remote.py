"""How much of a training step waits on a slow store, with and without prefetch, in one process.

Rerun:  python bench/bench_remote.py [--samples 20000] [--shard 1000] [--delay 0.2] [--step 0.02] [--prefetch 0,1,2,4]
                                     [--stream token|shard] [--repeats 2] [--threads 1] [--quick]

The store: fsspec's memory filesystem wrapped with a fixed delay per request (``--delay`` seconds
on every open, cat, info and ls; ``--mbps`` adds a transfer time per byte), registered as the
``slow://`` protocol, holding synthetic aligned token shard sets (MD-MNIST-sized: 12 text tokens,
one 32×32 view; ``--shard`` samples a shard, written by ``bench_token_stream.write_sets``). The
consumer is a training loop: take the next batch, then a step of ``--step`` seconds (a sleep,
as a GPU step leaves the CPU and the GIL to the loader). Timed per step: the time blocked in
``next(batches)`` against the whole epoch.

Sides, alternated ``--repeats`` times in this process (each side's best run reported), each a cold
epoch (a new cache folder, the verified-shard memory dropped):
- local: the same sets in a local folder (the reference: only hashing and gathering to wait for);
- slow://, prefetch N for each N of ``--prefetch``: the stream over the store through the shard
  cache, N shards of its plan downloading ahead (0: each shard fetched when it is needed).

``--stream token``: ``TokenStream`` over the image-token and text-token sets (two downloads per
shard); ``--stream shard``: ``ShardStream`` over the image-token set alone. Printed per side: the
share of the epoch spent waiting, the waiting time with and without the first batch (the first
shard cannot be prefetched), the epoch time and its ratio to local, and the store's requests.
``--quick``: 4,000 samples, 1 round: a check that it runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, pin_threads  # noqa: E402
from bench_token_stream import write_sets  # noqa: E402

import fsspec  # noqa: E402
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402
from fsspec.spec import AbstractFileSystem  # noqa: E402

from t2i_data.shard_cache import ShardCache  # noqa: E402
from t2i_data.stream import ShardStream, forget_verified  # noqa: E402
from t2i_data.token_stream import TokenStream  # noqa: E402


class SlowFileSystem(AbstractFileSystem):
    """fsspec's memory filesystem behind a fixed delay per request (``delay`` seconds) and, with
    ``bytes_per_s``, a transfer time for what a request returns. Class-level settings and a
    request count, so every instance fsspec makes (one per process) shares them."""

    protocol = "slow"
    delay = 0.2
    bytes_per_s = 0.0
    requests = 0

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.inner = MemoryFileSystem()

    def _wait(self, nbytes: int = 0) -> None:
        type(self).requests += 1
        time.sleep(self.delay + (nbytes / self.bytes_per_s if self.bytes_per_s else 0.0))

    def ls(self, path, detail=True, **kw):
        self._wait()
        return self.inner.ls(path, detail=detail, **kw)

    def info(self, path, **kw):
        self._wait()
        return self.inner.info(path, **kw)

    def cat_file(self, path, start=None, end=None, **kw):
        data = self.inner.cat_file(path, start=start, end=end, **kw)
        self._wait(len(data))
        return data

    def _open(self, path, mode="rb", **kw):
        f = self.inner.open(path, mode)
        self._wait(self.inner.size(path) if "r" in mode else 0)
        return f


def upload(folder: Path, prefix: str) -> str:
    """``folder``'s files (manifest and shards) into the memory store under ``prefix``; its slow:// URL."""
    mem = fsspec.filesystem("memory")
    for p in folder.iterdir():
        if p.is_file():
            mem.pipe(f"/{prefix}/{p.name}", p.read_bytes())
    return f"slow://{prefix}"


def epoch(make, step: float) -> dict:
    """One epoch of a training loop over ``make()``'s batches: seconds waiting for each batch,
    then ``step`` seconds of (simulated) training."""
    forget_verified()  # a cold epoch: every shard hashed again
    ds = make()
    ds.set_epoch(0)
    it = iter(ds)
    waits = []
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        waits.append(time.perf_counter() - t)
        time.sleep(step)
    total = time.perf_counter() - t0
    for ss in getattr(ds, "shard_sets", None) or [getattr(ds, "img_set", None), getattr(ds, "txt_set", None)]:
        if ss is not None and ss.remote is not None:
            ss.remote.close()
    return {"total": total, "wait": sum(waits), "first": waits[0] if waits else 0.0, "steps": len(waits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--shard", type=int, default=1000, help="samples per shard")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--delay", type=float, default=0.2, help="seconds added to every request to the store")
    ap.add_argument("--mbps", type=float, default=0.0, help="the store's transfer rate in MB/s (0: only the delay)")
    ap.add_argument("--step", type=float, default=0.02, help="seconds of one training step (a sleep)")
    ap.add_argument("--prefetch", default="0,1,2,4", help="prefetch depths to compare (shards ahead)")
    ap.add_argument("--stream", choices=("token", "shard"), default="token")
    ap.add_argument("--quick", action="store_true", help="4,000 samples, 1 round: a check that it runs")
    add_args(ap, repeats=2)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.repeats = 4_000, 1
    threads = pin_threads(args.threads)
    SlowFileSystem.delay, SlowFileSystem.bytes_per_s = args.delay, args.mbps * 1e6
    fsspec.register_implementation("slow", SlowFileSystem, clobber=True)
    depths = [int(x) for x in args.prefetch.split(",")]
    print(f"{args.stream} stream over a store with {args.delay * 1000:.0f} ms per request"
          f"{f' and {args.mbps:g} MB/s' if args.mbps else ''}: {args.samples:,} samples, {args.shard:,} a shard, batch {args.batch}, "
          f"step {args.step * 1000:.0f} ms; torch {threads} threads (python bench/bench_remote.py --samples {args.samples} "
          f"--shard {args.shard} --delay {args.delay} --step {args.step} --stream {args.stream} --repeats {args.repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in ("img", "txt"):
            (root / k).mkdir()
        write_sets(root, args.samples, 1, 12, 1, shard=args.shard, both=False)
        tag = f"bench-{os.getpid()}"
        urls = {k: upload(root / k, f"{tag}/{k}") for k in ("img", "txt")}
        caches = iter(range(10**6))

        def make(img, txt, **kw):
            if args.stream == "token":
                return lambda: TokenStream(img, txt, batch_size=args.batch, seed=0, **kw)
            return lambda: ShardStream(img, lambda s, e: {"n": len(s["image_tokens.npy"])}, batch_size=args.batch, seed=0, **kw)

        def side(make_stream, remote):
            def run():
                kw = {}
                if remote:
                    cache_dir = root / f"cache{next(caches)}"
                    kw["cache"] = ShardCache(cache_dir, 10**10)
                before = SlowFileSystem.requests
                r = epoch(lambda: make_stream(**kw), args.step)
                r["requests"] = SlowFileSystem.requests - before
                if remote:
                    shutil.rmtree(cache_dir)
                return r
            return run

        sides = {"local": side(lambda **kw: make(root / "img", root / "txt", **kw)(), False)}
        for n in depths:
            sides[f"slow://, prefetch {n}"] = side(lambda n=n, **kw: make(urls["img"], urls["txt"], prefetch=n, **kw)(), True)
        runs = alternate(sides, args.repeats)
    ref = min(runs["local"], key=lambda r: r["total"])
    print(f"  {'side':22} {'waiting':>8} {'wait s':>8} {'w/o 1st':>8} {'epoch s':>8} {'x local':>8} {'steps':>6} {'requests':>9}")
    for k, rs in runs.items():
        r = min(rs, key=lambda r: r["wait"])
        print(f"  {k:22} {r['wait'] / r['total']:8.1%} {r['wait']:8.2f} {r['wait'] - r['first']:8.2f} {r['total']:8.2f} "
              f"{r['total'] / ref['total']:8.2f} {r['steps']:6} {r['requests']:9}")
        if len(rs) > 1:
            shares = ", ".join(f"{x['wait'] / x['total']:.1%}" for x in rs)
            print(f"  {'':22} every round: waiting {shares}")
    print(f"  the step alone: {ref['steps'] * args.step:.2f} s of sleeps; waiting = time blocked in next(batches) / epoch time")


if __name__ == "__main__":
    main()
