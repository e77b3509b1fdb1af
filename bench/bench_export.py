"""Random-access batch reads from the Arrow export against sequential streaming of the tar shards.

Rerun:  python bench/bench_export.py [--samples 20000] [--batch 64] [--batches 500] [--repeats 3] [--threads 1] [--quick]

Builds, in a temporary folder, MD-MNIST image shards (the embedded source, seed 0), their text
tokens (MD-MNIST tokenizer, L = 12) and a synthetic aligned image-token set (1 view of 32×32
uint16 codes, drawn from a seeded generator), exports them with ``t2i export --format arrow``, and
measures in the same run, one process, page cache warm for both:

- images: sequential streaming of the tar shards with this package's reader (key, PNG bytes,
  captions parsed from the JSON) against random batches of B rows taken from the memory-mapped
  Arrow export (the same three things as Python objects);
- tokens: the two token sets streamed and zipped by key into (B, 12) and (B, 1, 32, 32) arrays,
  against random batches from the Arrow export of both sets, flattened to the same arrays; and,
  for reference, ``TokenStream`` (the project's prior-training reader: shuffle buffer, caption
  and view choice) over the same shards.

Random rows are read through ``RowReader`` (one-row slices of the memory-mapped record batches;
``Table.take`` would concatenate every batch of a binary column for each call). Prints samples/s
for each and the ratio Arrow random / tar sequential, plus the export's own speed. The two sides
of each comparison alternate for ``--repeats`` rounds in one process, each side's best counts;
torch's threads are pinned to ``--threads`` (printed). ``--quick``: 1,000 samples, 50 batches, 2 rounds.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import add_args, alternate, pin_threads  # noqa: E402

from t2i_data.export import RowReader, export, read_export  # noqa: E402
from t2i_data.manifest import load_manifest  # noqa: E402
from t2i_data.mdmnist import MDMNISTConfig, build  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.build import ShardStats, build_shard_set  # noqa: E402
from t2i_data.tario import WRITER_ID, iter_samples  # noqa: E402
from t2i_data.text import load_pretrained  # noqa: E402
from t2i_data.npyio import npy_bytes  # noqa: E402
from t2i_data.tokenize import TokenizeConfig, tokenize  # noqa: E402
from t2i_data.token_stream import TokenStream  # noqa: E402  (imports torch: kept out of the timed reads)

GRID, VOCAB = 32, 512


def synthetic_tokens(images: str, shard: str):
    """Image tokens for the keys of one image shard, seeded by the shard's name."""
    rng = np.random.default_rng(list(shard.encode()))
    n = 0
    for sample in iter_samples(Path(images) / shard):
        t = rng.integers(0, VOCAB, (1, GRID, GRID), dtype=np.uint16)
        yield {"__key__": sample["__key__"], "image_tokens.npy": npy_bytes(t), "json": b'{"views":[{"identity":true}]}'}
        n += 1
    yield ShardStats({"samples": n, "views": n})


def build_inputs(root: Path, n: int) -> dict[str, Path]:
    build(MDMNISTConfig(seed=0, train=n, test=0, shard_size=2500), root / "md", InProcessRunner())
    md = root / "md" / "train"
    load_pretrained("mdmnist", None).save(root / "tk")
    tokenize(root / "tk", md, root / "text", TokenizeConfig(length=12), InProcessRunner())
    base = load_manifest(md / "manifest.json")
    identity = {"kind": "image_tokens", "dataset": "mdmnist", "split": "train", "regime": None, "size": 128,
                "config": {"views": 1, "seed": 0, "batch_size": None}, "seed": 0,
                "sources": {"images": {"digest": base["digest"], "dataset": "mdmnist", "split": "train"}}, "aligned_to": base["digest"],
                "autoencoder": {"kind": "synthetic", "fingerprint": "0" * 64, "vocab_size": VOCAB, "grid": GRID, "dtype": "uint16"},
                "encoder": {"tar": WRITER_ID}}
    build_shard_set(partial(synthetic_tokens, str(md)), root / "img", "mdmnist-train", [s["samples"] for s in base["shards"]], identity,
                    InProcessRunner(), payloads=[s["name"] for s in base["shards"]])
    return {"md": md, "text": root / "text", "img": root / "img"}


def rate(fn) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t), n


def stream_images(md: Path) -> int:
    n = 0
    for shard in load_manifest(md / "manifest.json")["shards"]:
        for s in iter_samples(md / shard["name"]):
            key, png, captions = s["__key__"], s["png"], json.loads(s["json"])["captions"]
            n += bool(key) and bool(png) and bool(captions)
    return n


def random_images(rows, batch: int, batches: int) -> int:
    """``rows``: a RowReader, or a Table for comparison (same ``take`` and ``num_rows``)."""
    rng, n = np.random.default_rng(0), 0
    for _ in range(batches):
        b = rows.take(rng.integers(0, rows.num_rows, batch))
        keys, pngs, captions = b.column("key").to_pylist(), b.column("image").combine_chunks().field("bytes").to_pylist(), b.column("captions").to_pylist()
        assert len(pngs) == len(captions) == len(keys)
        n += len(keys)
    return n


def stream_tokens(text_dir: Path, img_dir: Path, batch: int) -> int:
    n, keys, txt, im = 0, [], [], []
    for shard in load_manifest(text_dir / "manifest.json")["shards"]:
        for a, b in zip(iter_samples(text_dir / shard["name"]), iter_samples(img_dir / shard["name"])):
            assert a["__key__"] == b["__key__"]
            keys.append(a["__key__"])
            txt.append(np.load(io.BytesIO(a["text_tokens.npy"])))
            im.append(np.load(io.BytesIO(b["image_tokens.npy"])))
            if len(keys) == batch:
                text, image = np.concatenate(txt), np.stack(im)  # (captions, 12), (B, 1, 32, 32)
                assert text.shape[1] == 12 and image.shape == (batch, 1, GRID, GRID)
                n += len(image)
                keys, txt, im = [], [], []
    return n + len(keys)


def token_stream(text_dir: Path, img_dir: Path, batch: int) -> int:
    return sum(int(b["valid"].sum()) for b in TokenStream(img_dir, text_dir, batch_size=batch, seed=0))


def random_tokens(rows: RowReader, batch: int, batches: int) -> int:
    rng, n = np.random.default_rng(0), 0
    for _ in range(batches):
        b = rows.take(rng.integers(0, rows.num_rows, batch))
        text = b.column("text_tokens").combine_chunks().flatten().flatten().to_numpy().reshape(-1, 12)  # (captions, 12)
        image = b.column("image_tokens").combine_chunks().flatten().flatten().flatten().to_numpy().reshape(-1, 1, GRID, GRID)
        assert text.shape[0] >= len(image) == batch
        n += len(image)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="1,000 samples, 50 batches, 2 rounds: a check that it runs")
    add_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.batches, args.repeats = 1_000, 50, 2
    threads = pin_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = build_inputs(root, args.samples)
        t = time.perf_counter()
        export([sets["md"]], root / "md-arrow", "arrow")
        export([sets["text"], sets["img"]], root / "tok-arrow", "arrow")
        dt = time.perf_counter() - t
        print(f"export to Arrow: {2 * args.samples / dt:,.0f} samples/s ({args.samples:,} images + {args.samples:,} token pairs in {dt:.1f} s)")
        print(f"{args.samples:,} MD-MNIST samples, batches of {args.batch}, 1 process, torch {threads} threads, best of {args.repeats} "
              f"alternating rounds (python bench/bench_export.py --samples {args.samples} --batch {args.batch} --batches {args.batches} "
              f"--repeats {args.repeats} --threads {args.threads})")
        images = RowReader(read_export(root / "md-arrow", "train"))  # memory-mapped: nothing is read into memory here
        tokens = RowReader(read_export(root / "tok-arrow", "train"))
        rnd_images = 0.0
        for label, (seq, rnd) in {
            "images (key, PNG bytes, captions)": (lambda: stream_images(sets["md"]), lambda: random_images(images, args.batch, args.batches)),
            "tokens (1x12 text, 1x32x32 image)": (lambda: stream_tokens(sets["text"], sets["img"], args.batch),
                                                  lambda: random_tokens(tokens, args.batch, args.batches)),
        }.items():
            got = alternate({"seq": lambda: rate(seq), "rnd": lambda: rate(rnd)}, args.repeats)
            seq_rate, seq_n = max(got["seq"])
            rnd_rate, rnd_n = max(got["rnd"])
            rnd_images = rnd_images if label.startswith("tokens") else rnd_rate
            print(f"  {label:40} tar sequential {seq_rate:10,.0f} samples/s   Arrow random batches {rnd_rate:10,.0f} samples/s   "
                  f"ratio {rnd_rate / seq_rate:5.2f}x   ({seq_n:,} and {rnd_n:,} samples)")
        plain = read_export(root / "md-arrow", "train")  # what RowReader avoids: Table.take on the mapped record batches
        tk_rate, tk_n = max(rate(lambda: random_images(plain, args.batch, max(1, args.batches // 5))) for _ in range(args.repeats))
        print(f"  {'images through Table.take instead':40} Arrow random batches {tk_rate:10,.0f} samples/s "
              f"(RowReader is {rnd_images / tk_rate:.0f}x faster; {tk_n:,} samples)")
        ts_rate, ts_n = max(rate(lambda: token_stream(sets["text"], sets["img"], args.batch)) for _ in range(args.repeats))
        print(f"  {'tokens, TokenStream (shuffled batches)':40} tar sequential {ts_rate:10,.0f} samples/s   "
              f"(Arrow random / TokenStream: {rnd_rate / ts_rate:.2f}x; {ts_n:,} samples)")


if __name__ == "__main__":
    main()
