"""What the duplicate / leakage check costs at MS-COCO's scale, against the preprocessing it rides on.

Rerun:  python bench/bench_dedup.py [--train 118287] [--val 5000] [--repeats 3] [--threads 1] [--quick]

1. The set-wide check (``dedup.find_duplicates`` per split + ``find_leakage``) on digest rows
   shaped like a COCO 2017 build (118,287 train + 5,000 val = 123,287 images; sha256 and
   XXH3-128 hex digests, 1,000 duplicates inside train, 100 images shared with val): wall time
   and peak Python memory (tracemalloc).
2. The per-image part: sha256 of the source file and XXH3-128 of the stored pixels, timed on the
   real COCO JPEGs in $T2I_REALDATA against the rest of the per-image work (``load_prepared`` +
   JPEG encode, ae N=128) in the same process, the two alternating for ``--repeats`` rounds.
Times are the best of ``--repeats``; torch's threads are pinned to ``--threads`` (printed).
``--quick``: 5,000 + 500 rows, 2 rounds, 1 pass per round.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, timed  # noqa: E402

from t2i_data.dedup import find_duplicates, find_leakage
from t2i_data.preprocess import encode_jpeg, load_prepared, pixel_digest
from t2i_data.regimes import Regime

REALDATA = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


def rows(prefix: str, start: int, n: int) -> list[list[str]]:
    return [[f"coco-{start + i:012d}", hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(),
             hashlib.md5(f"{prefix}{i}".encode()).hexdigest()] for i in range(n)]


def set_check(n_train: int, n_val: int, repeats: int) -> None:
    train, val = rows("t", 0, n_train), rows("v", 10**9, n_val)
    for i in range(1000):  # later train images repeating earlier ones
        train[n_train - 1 - i][1:] = train[i][1:]
    for i in range(100):  # val images that are train images
        val[i][1:] = train[1000 + i][1:]

    def check():
        dups = {"train2017": find_duplicates(train), "val2017": find_duplicates(val)}
        return dups, find_leakage({"train2017": [r for r in train if r[0] not in dups["train2017"]], "val2017": val})

    dups, leak = check()
    dt = best([timed(check) for _ in range(repeats)])
    tracemalloc.start()  # a second pass for memory: tracing slows it several times over
    check()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"set-wide check, {n_train + n_val:,} images: {dt:.2f} s, peak {peak / 2**20:.0f} MiB of Python memory; "
          f"{len(dups['train2017']):,} duplicates, {len(leak['val2017']):,} leaked val images found (best of {repeats})")


def per_image(repeats: int, repeat: int = 5) -> None:
    files = sorted((REALDATA / "coco" / "val2017").glob("*.jpg"))
    if not files:
        print(f"per-image: no COCO JPEGs under {REALDATA}; set T2I_REALDATA")
        return
    regime = Regime("ae", 128)
    data = [f.read_bytes() for f in files]
    prepared = [load_prepared(f, regime)[0] for f in files]

    def work_pass():
        for _ in range(repeat):
            for f in files:
                encode_jpeg(load_prepared(f, regime)[0], 95)

    def digest_pass():
        for _ in range(repeat):
            for d, im in zip(data, prepared):
                hashlib.sha256(d).hexdigest()
                pixel_digest(im)

    times = alternate({"work": lambda: timed(work_pass), "digests": lambda: timed(digest_pass)}, repeats)
    work = best(times["work"]) / (repeat * len(files))
    digests = best(times["digests"]) / (repeat * len(files))
    kb = sum(map(len, data)) / len(data) / 1024
    print(f"per image ({len(files)} real COCO JPEGs, mean {kb:.0f} KiB, ae N=128): digests {digests * 1e6:.0f} us, "
          f"decode + prepare + encode {work * 1e6:.0f} us -> the digests add {digests / work:.1%} (best of {repeats} alternating rounds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=118287)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="5,000 + 500 rows, 2 rounds, 1 pass per round: a check that it runs")
    add_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.train, args.val, args.repeats = 5_000, 500, 2
    print(f"torch {pin_threads(args.threads)} threads (python bench/bench_dedup.py --train {args.train} --val {args.val} "
          f"--repeats {args.repeats} --threads {args.threads})")
    set_check(args.train, args.val, args.repeats)
    per_image(args.repeats, 1 if args.quick else 5)


if __name__ == "__main__":
    main()
