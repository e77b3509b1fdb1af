"""Caption tokenization into text-token shards, against a per-caption Python loop, same run.

Rerun:  python bench/bench_tokenize.py [--captions 591753] [--loop 40000]

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

from t2i_data.digest import canonical_json  # noqa: E402
from t2i_data.runner import InProcessRunner, make_runner  # noqa: E402
from t2i_data.build import build_shard_set  # noqa: E402
from t2i_data.text import load_tokenizer, train  # noqa: E402
from t2i_data.tokenize import TokenizeConfig, tokenize  # noqa: E402

IMAGES, SHARD = 118_287, 5_000


def words(n: int = 5_000) -> list[str]:
    rnd = random.Random(0)
    return ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10))) for _ in range(n)]


def produce(total_captions: int, index: int):
    vocab = words()
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(vocab))))  # Zipf-like, as caption words are
    rnd = random.Random(index)
    extra = total_captions - 5 * IMAGES
    for i in range(index * SHARD, min((index + 1) * SHARD, IMAGES)):
        n = 6 if i < extra else 5
        caps = [" ".join(rnd.choices(vocab, cum_weights=cum, k=rnd.randint(8, 16))).capitalize() + "." for _ in range(n)]
        yield {"__key__": f"syn-{i:012d}", "json": canonical_json({"captions": caps, "split": "train"})}


def corpus(out: Path, total: int) -> None:
    sizes = [min(SHARD, IMAGES - s) for s in range(0, IMAGES, SHARD)]
    ident = {"kind": "images", "dataset": "syn", "split": "train", "regime": None, "size": None, "config": {"captions": total},
             "seed": 0, "sources": {}, "aligned_to": None, "encoder": {}}
    build_shard_set(partial(produce, total), out, "syn-train", sizes, ident, InProcessRunner())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=591_753)
    ap.add_argument("--loop", type=int, default=40_000, help="captions timed in the per-caption loop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        corpus(tmp / "images", args.captions)
        from t2i_data.tario import iter_samples

        caps = [c for p in sorted((tmp / "images").glob("*.tar")) for s in iter_samples(p) for c in json.loads(s["json"])["captions"]]
        print(f"corpus: {len(caps):,} captions of {IMAGES:,} images written in {time.perf_counter() - t:.1f} s")
        print(f"(python bench/bench_tokenize.py --captions {args.captions} --loop {args.loop})")
        print(f"{'kind':10} {'loop cap/s':>11} {'1 worker s':>11} {'cap/s':>9} {'x loop':>7} {'2 workers s':>12} {'cap/s':>9} {'x loop':>7}")
        for kind, vocab in (("bpe", 16_384), ("wordpiece", 16_384), ("word", None)):
            train(kind, caps[:200_000], vocab).save(tmp / f"tok-{kind}")
            tok = load_tokenizer(tmp / f"tok-{kind}")
            sample = caps[: args.loop]
            # the tokenizer's ordinary per-caption call: tokenizers' Tokenizer.encode (Rust), or the word encoder
            one_caption = (lambda c: tok.tok.encode(c, add_special_tokens=False).ids) if hasattr(tok, "tok") else (lambda c: tok.encode_batch([c]))
            t = time.perf_counter()
            for c in sample:
                one_caption(c)
            loop = len(sample) / (time.perf_counter() - t)
            cfg = TokenizeConfig(length=64, add_bos=True, add_eos=True)
            t = time.perf_counter()
            tokenize(tmp / f"tok-{kind}", tmp / "images", tmp / f"tt1-{kind}", cfg, InProcessRunner())
            one = time.perf_counter() - t
            with make_runner(workers=2) as runner:  # cluster start-up excluded
                t = time.perf_counter()
                tokenize(tmp / f"tok-{kind}", tmp / "images", tmp / f"tt2-{kind}", cfg, runner)
                two = time.perf_counter() - t
            n = len(caps)
            print(f"{kind:10} {loop:11,.0f} {one:11.1f} {n / one:9,.0f} {n / one / loop:6.1f}x {two:12.1f} {n / two:9,.0f} {n / two / loop:6.1f}x")
        print("targets: >= 5x the loop (bpe, wordpiece); whole corpus < 60 s on 2 cores")


if __name__ == "__main__":
    main()
