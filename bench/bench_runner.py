"""Does the default runner pay for itself? Shard builds in-process (one core), with the default
runner (``make_runner()``: ``AutoRunner``, this process and a ``LocalPool`` once the work is timed)
and with ``--workers 2`` (a local dask cluster started for the command), starts included,
against the machine's own 2-process ceiling measured in the same rounds.

Rerun:  python bench/bench_runner.py [--repeats 2] [--quick] [--skip-full | --full-only]
  cases: the full MD-MNIST build from the MNIST IDX files (100,000 + 10,000, 22 shards of 5,000;
  $T2I_REALDATA/mnist, default ../shared/realdata), a 20,000-sample build from the embedded digits
  (4 shards), and CUB preprocessing of the 41 sample images (``--shard-size 8``: 6 shards).
  --quick: the 20,000-sample and CUB cases only, 1 round: a check that it runs.

Sides alternate in each round (benchkit.alternate); each side's best round counts. Each build
side starts cold, as a new command does: this process's MNIST pools and glyphs are emptied first
(a forked worker would inherit them from earlier rounds). The ceiling: a pure-Python loop, then a
zlib pass over MD-MNIST canvases, each in one process and in two at once (fork); the ratio of
their throughputs is what 2 processes can give on this machine at that moment, whatever the
runner. For the full build, a third ceiling runs the build's own shard tasks the same way (2 each,
forked after this process filled the caches), and the default's and ``--workers 2``'s best are
given as a share of that ceiling's best round. It also prints where the 2-worker time goes:
``--workers 2``'s cluster start, its workers' first task against their others (imports, loading
MNIST, caches), the median task in a worker against a shard in-process, and the idle tail; and how
the default runner shared the shards between this process and its 1-process pool.
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, rounds  # noqa: E402

from t2i_data import runner as runner_mod  # noqa: E402
from t2i_data.mdmnist import MDMNISTConfig, build, glyph_table  # noqa: E402
from t2i_data.preprocess import PreprocessConfig, load_records, preprocess  # noqa: E402
from t2i_data.runner import InProcessRunner, make_runner  # noqa: E402
from t2i_data.sources.mnist import load_mnist  # noqa: E402

REALDATA = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


def _spin(_: int = 0) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(4_000_000):
        x += i
    return time.perf_counter() - t


def _zlib(_: int = 0) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    canvas = np.zeros((128, 128 * 3), np.uint8)
    canvas[20:60, 30:300] = rng.integers(0, 256, (40, 270), dtype=np.uint8) // 64 * 64
    raw = canvas.tobytes()
    t = time.perf_counter()
    for _ in range(1500):
        zlib.compress(raw, 1)
    return time.perf_counter() - t


def ceiling(fn) -> float:
    """Throughput of 2 processes at once over 1 process alone, for ``fn`` (which returns its seconds)."""
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        one = pool.apply(fn)
        two = pool.map(fn, [0, 1])
    return 2 * one / max(two)


class _Grabbed(BaseException):
    """Stops a build at its map, carrying the map's function and items."""


class _Grab(InProcessRunner):
    def map(self, fn, items, weights=None, desc="", did_work=None):
        raise _Grabbed(fn, items)


def cold() -> None:
    """Empty this process's caches (the MNIST pools, the resized glyphs), which a forked worker would
    otherwise inherit from earlier rounds: every side then starts as a new command does."""
    glyph_table.cache_clear()
    load_mnist.cache_clear()


def shard_tasks(cfg: MDMNISTConfig, out: Path):
    """The build's shard function and its items, without running them."""
    try:
        build(cfg, out, _Grab())
    except _Grabbed as g:
        return g.args
    raise AssertionError("the build never mapped its shards")


_SHARDS: list = []  # (fn, items) of the full build, set before the ceiling's pool forks


def _run_shards(first: int) -> float:
    fn, items = _SHARDS
    t = time.perf_counter()
    for i in (first, first + 1):
        fn(items[i])
    return time.perf_counter() - t


def shard_ceiling() -> float:
    """Throughput of 2 processes at once over 1 alone on the full build's own shard tasks (2 each,
    forked after this process filled the caches): what 2 processes can give this very work on this
    machine at that moment, whatever the runner."""
    fn, items = _SHARDS
    fn(items[0])  # the caches filled here (the build sides empty them), then forked
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        one = pool.apply(_run_shards, (1,))
        two = pool.map(_run_shards, [3, 5], chunksize=1)
    return 2 * one / max(two)


class Timeline(runner_mod.DaskRunner):
    """A 2-worker DaskRunner that records when it started and each task's (pid, start, end)."""

    tasks: list = []

    def __init__(self) -> None:
        t = time.perf_counter()
        super().__init__(workers=2)
        self.start_s = time.perf_counter() - t
        self.tasks = []

    def map(self, fn, items, weights=None, desc="", did_work=None, bar=None):
        out = super().map(functools.partial(_timed_task, fn), items, weights, desc, bar=bar)
        self.tasks += [o[1] for o in out]
        return [o[0] for o in out]


class AutoTimeline(runner_mod.AutoRunner):
    """The default runner on 2 cores (this process + a 1-process pool), recording each task's
    (pid, start, end) and when the pool was first fed."""

    def __init__(self) -> None:
        super().__init__(workers=2)
        self.tasks, self.fed_at = [], None

    def map(self, fn, items, weights=None, desc="", did_work=None):
        out = super().map(functools.partial(_timed_task, fn), items, weights, desc,
                          did_work=(lambda r: did_work(r[0])) if did_work else None)
        self.tasks += [o[1] for o in out]
        return [o[0] for o in out]

    def _feed(self, *args):
        self.fed_at = self.fed_at or time.time()
        return super()._feed(*args)


def _timed_task(fn, item):
    t = time.time()
    r = fn(item)
    return r, (os.getpid(), t, time.time())


def full_breakdown(cfg: MDMNISTConfig, tmp: Path, per_shard_in: float) -> str:
    cold()
    t0 = time.time()
    with Timeline() as r:
        build(cfg, tmp / "timeline", r)
        t_end = time.time()
    lines = [f"    cluster start (2 worker processes): {r.start_s:.2f} s"]
    firsts, others, ends = [], [], []
    for pid in sorted({p for p, _, _ in r.tasks}):
        rows = sorted((s, e) for p, s, e in r.tasks if p == pid)
        firsts.append(rows[0][1] - rows[0][0])
        others += [e - s for s, e in rows[1:]]
        ends.append(rows[-1][1])
    med = statistics.median(others)
    lines.append(f"    a worker's first task: {statistics.mean(firsts):.2f} s, its others: median {med:.2f} s "
                 f"(warm-up {statistics.mean(firsts) - med:.2f} s per worker: imports, MNIST IDX load, glyph cache)")
    lines.append(f"    one shard in-process: {per_shard_in:.2f} s -> a worker's task is {med / per_shard_in:.2f}x that")
    lines.append(f"    idle tail (first worker done -> last): {max(ends) - min(ends):.2f} s; wall {t_end - t0:.2f} s "
                 f"({len(r.tasks)} tasks)")
    return "\n".join(lines)


def auto_breakdown(cfg: MDMNISTConfig, tmp: Path) -> str:
    cold()
    t0 = time.time()
    with AutoTimeline() as r:
        build(cfg, tmp / "auto-timeline", r)
        t_end = time.time()
    me = os.getpid()
    here = sorted((s, e) for p, s, e in r.tasks if p == me)
    there = sorted((s, e) for p, s, e in r.tasks if p != me)
    lines = [f"    default runner: this process ran {len(here)} shards, its pool's process {len(there)}; "
             f"the pool was fed its first task {r.fed_at - t0:.2f} s into the build"]
    if here and there:
        lines.append(f"    a shard here: median {statistics.median(e - s for s, e in here[1:] or here):.2f} s (first: "
                     f"{here[0][1] - here[0][0]:.2f} s); in the pool: first {there[0][1] - there[0][0]:.2f} s, "
                     f"others median {statistics.median(e - s for s, e in there[1:] or there):.2f} s")
        lines.append(f"    idle tail (first side done -> last): {abs(here[-1][1] - there[-1][1]):.2f} s; "
                     f"wall {t_end - t0:.2f} s (the pool's close not included)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small cases only, 1 round")
    ap.add_argument("--skip-full", action="store_true", help="leave out the 110,000-sample build")
    ap.add_argument("--full-only", action="store_true", help="only the 110,000-sample build")
    add_args(ap, repeats=2)
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.skip_full = 1, True
    threads = pin_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    cases = []
    if not args.skip_full:
        if not (REALDATA / "mnist").is_dir():
            sys.exit(f"no MNIST IDX files in {REALDATA / 'mnist'} (set T2I_REALDATA, or --skip-full)")
        cases.append(("MD-MNIST full IDX build, 110,000 samples, 22 shards",
                      lambda out, r: build(MDMNISTConfig(seed=0, mnist=str(REALDATA / "mnist")), out, r)))
    if not args.full_only:
        cases.append(("MD-MNIST 20,000 samples (embedded), 4 shards",
                      lambda out, r: build(MDMNISTConfig(seed=0, train=20_000, test=0), out, r)))
    if (REALDATA / "cub").is_dir() and not args.full_only:
        cub = PreprocessConfig("cub", str(REALDATA / "cub"), regime="prior", size=64, shard_size=8)
        cub_records = load_records(cub)
        cases.append(("CUB preprocessing, 41 images, 6 shards", lambda out, r: preprocess(cub, out, r, cub_records)))

    print(f"runner benchmark, torch {threads} threads, best of {args.repeats} alternating rounds, {os.cpu_count()} cores "
          f"(python bench/bench_runner.py --repeats {args.repeats}{' --skip-full' if args.skip_full else ''}{' --full-only' if args.full_only else ''})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        k = iter(range(10**6))
        for name, run in cases:
            descr = {}

            def side(make, key):
                def go():
                    cold()  # each side starts as a new command does: no MNIST pools or glyphs loaded
                    t = time.perf_counter()
                    with make() as r:
                        run(tmp / f"o{next(k)}", r)
                    descr[key] = r.description
                    return time.perf_counter() - t
                return go

            sides = {"in-process": side(InProcessRunner, "in-process"),
                     "default (auto)": side(make_runner, "default (auto)"),
                     "--workers 2": side(lambda: make_runner(workers=2), "--workers 2"),
                     "ceiling spin": lambda: ceiling(_spin),
                     "ceiling zlib": lambda: ceiling(_zlib)}
            full = name.startswith("MD-MNIST full")
            if full:  # the shard tasks' own ceiling: their function, warm here, then forked
                _SHARDS[:] = shard_tasks(MDMNISTConfig(seed=0, mnist=str(REALDATA / "mnist")), tmp / "ceiling")
                sides["ceiling shards"] = shard_ceiling
            times = alternate(sides, args.repeats)
            t_in = best(times["in-process"])
            print(f"\n{name}")
            for key in ("in-process", "default (auto)", "--workers 2"):
                t = best(times[key])
                print(f"  {key:<15} {t:7.2f} s  ({t_in / t:4.2f}x one core)  rounds: {rounds(times[key])}  [{descr[key]}]")
            print(f"  the machine's 2-process ceiling in these rounds: pure Python {rounds(times['ceiling spin'])}x, "
                  f"zlib {rounds(times['ceiling zlib'])}x")
            if full:
                c = times["ceiling shards"]
                print(f"  the full build's shard tasks' own 2-process ceiling: {rounds(c)}x; against its best round "
                      f"the default reached {t_in / best(times['default (auto)']) / max(c):.0%} of it, --workers 2 "
                      f"{t_in / best(times['--workers 2']) / max(c):.0%}")
                print(full_breakdown(MDMNISTConfig(seed=0, mnist=str(REALDATA / "mnist")), tmp, t_in / 22))
                print(auto_breakdown(MDMNISTConfig(seed=0, mnist=str(REALDATA / "mnist")), tmp))
            for p in tmp.iterdir():  # free the disk between cases
                shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
