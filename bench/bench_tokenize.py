"""Caption tokenization into text-token shards, against a per-caption Python loop, same run.

Rerun:  python bench/bench_tokenize.py [--captions 591753] [--loop 40000] [--repeats 3] [--threads 1] [--quick]

A synthetic corpus with COCO train2017's shape (118,287 images, 591,753 captions: five per image
and a sixth for 318 of them; 8-16 words from a 5,000-word Zipf vocabulary) is written as an
image shard set (JSON members only). For each tokenizer kind it prints:
- the per-caption loop: the tokenizer's ordinary call once per caption (the way a Dataset's
  __getitem__ tokenizes: ``tokenizers.Tokenizer.encode``; the word tokenizer's encode), over
  the first --loop captions, in captions/s;
- ``t2i tokenize`` over the whole corpus into text-token shards, in-process (1 worker; the Rust
  tokenizers still use their own threads) and on a 2-process dask cluster (one thread each),
  wall time and captions/s, and the ratio to the loop. Targets: >= 5x the loop for bpe and
  wordpiece; the whole corpus in < 60 s on 2 cores.
The loop, the 1-worker and the 2-worker runs alternate for ``--repeats`` rounds in one process;
each one's best round counts. torch's threads are pinned to ``--threads`` (printed).
``--quick``: 2,000 images (10,000 captions), a loop of 2,000, 2 rounds: a check that it runs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, timed  # noqa: E402

from t2i_data.digest import canonical_json  # noqa: E402
from t2i_data.runner import InProcessRunner, make_runner  # noqa: E402
from t2i_data.build import build_shard_set  # noqa: E402
from t2i_data.text import load_tokenizer, train  # noqa: E402
from t2i_data.tokenize import TokenizeConfig, tokenize  # noqa: E402

IMAGES, SHARD = 118_287, 5_000


def words(n: int = 5_000) -> list[str]:
    rnd = random.Random(0)
    return ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10))) for _ in range(n)]


def produce(total_captions: int, images: int, index: int):
    vocab = words()
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(vocab))))  # Zipf-like, as caption words are
    rnd = random.Random(index)
    extra = total_captions - 5 * images
    for i in range(index * SHARD, min((index + 1) * SHARD, images)):
        n = 6 if i < extra else 5
        caps = [" ".join(rnd.choices(vocab, cum_weights=cum, k=rnd.randint(8, 16))).capitalize() + "." for _ in range(n)]
        yield {"__key__": f"syn-{i:012d}", "json": canonical_json({"captions": caps, "split": "train"})}


def corpus(out: Path, total: int, images: int = IMAGES) -> None:
    sizes = [min(SHARD, images - s) for s in range(0, images, SHARD)]
    ident = {"kind": "images", "dataset": "syn", "split": "train", "regime": None, "size": None, "config": {"captions": total},
             "seed": 0, "sources": {}, "aligned_to": None, "encoder": {}}
    build_shard_set(partial(produce, total, images), out, "syn-train", sizes, ident, InProcessRunner())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=591_753)
    ap.add_argument("--loop", type=int, default=40_000, help="captions timed in the per-caption loop")
    ap.add_argument("--images", type=int, default=IMAGES)
    ap.add_argument("--quick", action="store_true", help="2,000 images, 10,000 captions, a loop of 2,000, 2 rounds")
    add_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.images, args.captions, args.loop, args.repeats = 2_000, 10_000, 2_000, 2
    threads = pin_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        corpus(tmp / "images", args.captions, args.images)
        from t2i_data.tario import iter_samples

        caps = [c for p in sorted((tmp / "images").glob("*.tar")) for s in iter_samples(p) for c in json.loads(s["json"])["captions"]]
        print(f"corpus: {len(caps):,} captions of {args.images:,} images written in {time.perf_counter() - t:.1f} s")
        print(f"torch {threads} threads, best of {args.repeats} alternating rounds (python bench/bench_tokenize.py --captions {args.captions} "
              f"--images {args.images} --loop {args.loop} --repeats {args.repeats} --threads {args.threads})")
        print(f"{'kind':10} {'loop cap/s':>11} {'1 worker s':>11} {'cap/s':>9} {'x loop':>7} {'2 workers s':>12} {'cap/s':>9} {'x loop':>7}")
        for kind, vocab in (("bpe", 16_384), ("wordpiece", 16_384), ("word", None)):
            train(kind, caps[:200_000], vocab).save(tmp / f"tok-{kind}")
            tok = load_tokenizer(tmp / f"tok-{kind}")
            sample = caps[: args.loop]
            # the tokenizer's ordinary per-caption call: tokenizers' Tokenizer.encode (Rust), or the word encoder
            one_caption = (lambda c: tok.tok.encode(c, add_special_tokens=False).ids) if hasattr(tok, "tok") else (lambda c: tok.encode_batch([c]))

            def loop_pass():
                for c in sample:
                    one_caption(c)

            cfg = TokenizeConfig(length=64, add_bos=True, add_eos=True)
            k = iter(range(10**6))  # a fresh output folder for every run
            with make_runner(workers=2) as runner:  # cluster start-up excluded
                times = alternate({"loop": lambda: timed(loop_pass),
                                   "one": lambda: timed(lambda: tokenize(tmp / f"tok-{kind}", tmp / "images", tmp / f"tt1-{kind}-{next(k)}",
                                                                         cfg, InProcessRunner())),
                                   "two": lambda: timed(lambda: tokenize(tmp / f"tok-{kind}", tmp / "images", tmp / f"tt2-{kind}-{next(k)}",
                                                                         cfg, runner))}, args.repeats)
            loop, one, two = len(sample) / best(times["loop"]), best(times["one"]), best(times["two"])
            n = len(caps)
            print(f"{kind:10} {loop:11,.0f} {one:11.1f} {n / one:9,.0f} {n / one / loop:6.1f}x {two:12.1f} {n / two:9,.0f} {n / two / loop:6.1f}x")
        print("targets: >= 5x the loop (bpe, wordpiece); whole corpus < 60 s on 2 cores")


if __name__ == "__main__":
    main()
