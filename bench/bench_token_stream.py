"""Reading token shards for prior training, against webdataset's default pipeline, same run.

Rerun:  python bench/bench_token_stream.py [--samples 20000] [--batch 64] [--repeats 3] [--threads 1] [--quick]

Synthetic aligned token shard sets of two shapes — MD-MNIST-sized (12 text tokens, 1 caption;
32×32 image tokens, 1 view) and CUB-sized (10 captions × 64 text tokens; 32×32 image tokens ×
4 views) — are read (1) by ``TokenStream`` in this process (no dataloader workers), and (2) by
``webdataset.WebDataset(urls).decode().to_tuple(...).batched(B)`` over the same samples written
as combined shards. Each reader makes ``--repeats`` passes, alternating with the other (the
first pass over freshly written files is the slowest for both); the best pass of each is
compared. Every TokenStream pass checks every shard against its manifest from scratch (size and
sha256 of both files, the verification cache dropped first: a first epoch); ``--repeats`` more
passes show later epochs, the shards verified already (a stat per shard; dataloader workers send
what they verified back to the main process). Prints samples/s for both and the ratio (targets:
≥ 100,000 samples/s per process, ≥ 20× webdataset), and every pass's figures. torch (which
batches the stream) runs on ``--threads`` threads, printed. ``--quick``: 2,000 samples, 2 passes.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, pin_threads  # noqa: E402

from t2i_data.manifest import FORMAT_VERSION, write_manifest
from t2i_data.stream import forget_verified
from t2i_data.tario import TarWriter
from t2i_data.token_stream import TokenStream

SHARD = 1000


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_sets(root: Path, n: int, captions: int, length: int, views: int, *, text_vocab: int = 5000, image_vocab: int = 512,
               grid: int = 32, pad_id: int = 0, shard: int = SHARD, both: bool = True) -> None:
    """Aligned synthetic token sets under ``root``/img and ``root``/txt (and, with ``both``, the two
    combined in ``root``/both for webdataset): ``n`` samples of ``captions`` × ``length`` uint16
    text ids in [0, text_vocab) and ``views`` × ``grid`` × ``grid`` image ids in [0, image_vocab),
    ``shard`` samples per shard, from a seeded generator."""
    rng = np.random.default_rng(0)
    kinds = ("img", "txt", "both") if both else ("img", "txt")
    recs = {k: [] for k in kinds}
    for s in range(0, n, shard):
        name = f"syn-train-{s // shard:06d}.tar"
        ws = {k: TarWriter((root / k).joinpath(name)) for k in recs}
        for i in range(s, min(s + shard, n)):
            key = f"syn-{i:09d}"
            t = npy(rng.integers(0, text_vocab, (captions, length), dtype=np.uint16))
            im = npy(rng.integers(0, image_vocab, (views, grid, grid), dtype=np.uint16))
            ws["img"].write({"__key__": key, "image_tokens.npy": im, "__content__": {"image_tokens.npy": im}})
            ws["txt"].write({"__key__": key, "text_tokens.npy": t, "__content__": {"text_tokens.npy": t}})
            if both:
                ws["both"].write({"__key__": key, "text_tokens.npy": t, "image_tokens.npy": im,
                                  "__content__": {"text_tokens.npy": t, "image_tokens.npy": im}})
        for k, w in ws.items():
            recs[k].append(w.close())
    common = {"format_version": FORMAT_VERSION, "dataset": "syn", "split": "train", "aligned_to": "d" * 64, "quarantined": []}
    for k, kind, extra in (("img", "image_tokens", {"autoencoder": {"grid": grid, "fingerprint": "a" * 64, "vocab_size": image_vocab}}),
                           ("txt", "text_tokens", {"tokenizer": {"length": length, "pad_id": pad_id, "fingerprint": "t" * 64,
                                                                 "vocab_size": text_vocab}})):
        tot = {"shards": len(recs[k]), "samples": n, "bytes": sum(r["bytes"] for r in recs[k]), "quarantined": 0}
        write_manifest(root / k / "manifest.json", dict(common, kind=kind, shards=recs[k], totals=tot, **extra))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="2,000 samples, 2 passes: a check that it runs")
    add_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.repeats = 2_000, 2
    threads = pin_threads(args.threads)
    import webdataset as wds

    print(f"token shards -> batches of {args.batch}, 1 process, torch {threads} threads (python bench/bench_token_stream.py "
          f"--samples {args.samples} --batch {args.batch} --repeats {args.repeats} --threads {args.threads})")
    for label, captions, length, views in (("MD-MNIST-sized", 1, 12, 1), ("CUB-sized", 10, 64, 4)):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for k in ("img", "txt", "both"):
                (root / k).mkdir()
            write_sets(root, args.samples, captions, length, views)
            urls = [str(p) for p in sorted((root / "both").glob("*.tar"))]
            ours, theirs = [], []
            for r in range(args.repeats):
                forget_verified()  # every shard hashed again, as in each epoch of a run with workers
                ds = TokenStream(root / "img", root / "txt", batch_size=args.batch, seed=0)
                ds.set_epoch(r)
                t = time.perf_counter()
                n_ours = sum(int(b["valid"].sum()) for b in ds)
                ours.append(n_ours / (time.perf_counter() - t))
                pipe = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode().to_tuple("text_tokens.npy", "image_tokens.npy").batched(args.batch)
                t = time.perf_counter()
                n_theirs = sum(len(b[0]) for b in pipe)
                theirs.append(n_theirs / (time.perf_counter() - t))
            warm = []
            for r in range(args.repeats):  # the same stream again: its shards verified already (a stat each)
                ds.set_epoch(args.repeats + r)
                t = time.perf_counter()
                warm.append(sum(int(b["valid"].sum()) for b in ds) / (time.perf_counter() - t))
        print(f"  {label:15} TokenStream {max(ours):10,.0f} samples/s   webdataset {max(theirs):9,.0f} samples/s   "
              f"ratio {max(ours) / max(theirs):5.1f}x   ({n_ours} and {n_theirs} samples; best of {args.repeats})")
        print(f"  {'':15} every pass: TokenStream {', '.join(f'{x:,.0f}' for x in ours)}; webdataset {', '.join(f'{x:,.0f}' for x in theirs)}")
        print(f"  {'':15} TokenStream with its shards verified already (later epochs): {max(warm):,.0f} samples/s "
              f"(every pass: {', '.join(f'{x:,.0f}' for x in warm)})")
    print("targets: >= 100,000 samples/s per process; >= 20x webdataset")


if __name__ == "__main__":
    main()
