"""t2i embed's caption throughput against the bare model forward on the same captions, same process.

Rerun:  python bench/bench_embed.py [--tiny-captions 2000] [--base-captions 160] [--repeats 2] [--threads 1]

Two random-init BERTs (no download), saved with save_pretrained beside BERT-base-uncased's
vocab.txt (``tests/fixtures_text_encoders.py``): a tiny one (hidden 32, 4 layers, 2 heads) and one
of BERT-base's sizes (hidden 768, 12 layers, 12 heads, FFN 3072, 30,522 ids; Devlin et al. 2019,
§3). A synthetic COCO-shaped caption set (5 captions per image, 8-16 words drawn Zipf-like from
the vocabulary's whole words) is written as an image shard set (JSON members only). Per model:
- ``t2i embed`` (``embed.embed``, in-process runner: shard reads, checks, tokenization, the
  length-grouped unpadded forward on one thread, float16 rows, tar writing, manifest), captions/s;
- the bare forward: the same captions in caption order, 64 at a time, padded to the batch's
  longest, ``model(**tok(batch, padding=True))`` and a masked mean, captions/s (what a user's own
  loop would do; its rows differ from one caption alone in the last fp32 bits, which is why
  t2i does not pad: t2i_models/embed.py);
and the ratio embed / bare. Sides alternate for ``--repeats`` rounds; each side's best counts;
torch threads pinned to ``--threads`` (printed; embed runs its forward on one thread whatever it is).
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import tempfile
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchkit import add_args, alternate, best, pin_threads, rounds, timed  # noqa: E402

from t2i_data.build import build_shard_set  # noqa: E402
from t2i_data.digest import canonical_json  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402

SHARD = 200


def produce(words: list[str], images: int, index: int):
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(words))))
    rnd = random.Random(index)
    for i in range(index * SHARD, min((index + 1) * SHARD, images)):
        caps = [" ".join(rnd.choices(words, cum_weights=cum, k=rnd.randint(8, 16))).capitalize() + "." for _ in range(5)]
        yield {"__key__": f"syn-{i:012d}", "json": canonical_json({"captions": caps, "split": "train"})}


def corpus(out: Path, images: int, words: list[str]) -> list[str]:
    sizes = [min(SHARD, images - s) for s in range(0, images, SHARD)]
    ident = {"kind": "images", "dataset": "syn", "split": "train", "regime": None, "size": None, "config": {"images": images},
             "seed": 0, "sources": {}, "aligned_to": None, "encoder": {}}
    build_shard_set(partial(produce, words, images), out, "syn-train", sizes, ident, InProcessRunner())
    return [c for i in range(len(sizes)) for s in produce(words, images, i) for c in __import__("json").loads(s["json"])["captions"]]


def bare(model, tok, captions: list[str], batch: int = 64) -> None:
    import torch

    with torch.inference_mode():
        for s in range(0, len(captions), batch):
            x = tok(captions[s : s + batch], padding=True, return_tensors="pt")
            h = model(**x).last_hidden_state
            m = x["attention_mask"].unsqueeze(-1).float()
            (h * m).sum(1) / m.sum(1)


def run(name: str, folder: Path, images: int, words: list[str], root: Path, repeats: int) -> None:
    from t2i_models.embed import EmbedConfig, embed, load_text_encoder

    captions = corpus(root / f"img-{name}", images, words)
    model, tok, rec = load_text_encoder(folder)
    outs = iter(range(10**6))
    sides = {"embed": lambda: timed(lambda: embed(folder, root / f"img-{name}", root / f"out-{name}-{next(outs)}", EmbedConfig(),
                                                  InProcessRunner())),
             "bare": lambda: timed(lambda: bare(model, tok, captions))}
    t = alternate(sides, repeats)
    e, b = best(t["embed"]), best(t["bare"])
    print(f"{name} (hidden {rec['hidden_size']}, {rec['num_layers']} layers): {len(captions):,} captions; "
          f"embed {len(captions) / e:,.0f} captions/s (rounds {rounds(t['embed'])} s), bare padded forward "
          f"{len(captions) / b:,.0f} captions/s (rounds {rounds(t['bare'])} s); embed / bare = {b / e:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny-captions", type=int, default=2000)
    ap.add_argument("--base-captions", type=int, default=160)
    add_args(ap, repeats=2)
    args = ap.parse_args()
    print(f"torch threads: {pin_threads(args.threads)}")
    from fixtures_text_encoders import tiny_bert

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = tiny_bert(root / "tiny")
        words = [w for w in (tiny / "vocab.txt").read_text().split("\n") if w.isalpha() and w.islower() and len(w) > 1][:5000]
        run("tiny", tiny, args.tiny_captions // 5, words, root, args.repeats)
        base = tiny_bert(root / "base", hidden=768, layers=12, heads=12, intermediate=3072)  # BERT-base's sizes
        run("bert-base-sized", base, args.base_captions // 5, words, root, args.repeats)


if __name__ == "__main__":
    main()
