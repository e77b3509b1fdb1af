"""Captions of an image shard set → aligned text-token shards.

Shard i of the output holds, for each key of image shard i in the same order,
``<key>.text_tokens.npy``: every caption of the sample as one row of L ids (uint16, or int32 for
vocabularies over 65,535), right-padded with the tokenizer's pad id.

A caption that is not a str (null, a number, a list), or a sample without a ``captions`` list,
stops the run with one ``T2IError`` naming the shard, the key and the index
(``text.check_captions``): the image set is broken, and ``t2i preprocess`` rebuilds it.

Defined behaviour for awkward captions (each counted in the manifest's ``stats``):
- control characters (Unicode Cc/Cf) are removed, tab/newline/CR become spaces (``control``);
- invalid UTF-8 in a sample's JSON is decoded with U+FFFD replacements (``repaired``);
- a caption longer than L is cut to L, keeping EOS last when EOS is on (``truncated``);
- a caption with no tokens (empty, or punctuation only for the word tokenizer) becomes BOS/EOS
  if configured, then padding (``empty``); the sample is kept, so alignment holds.
"""
from __future__ import annotations

import unicodedata
from itertools import chain
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from .derived import build_derived_sets
from .digest import canonical_array
from .errors import T2IError
from .manifest import ShardSet, checked_samples
from .npyio import npy_bytes
from .build import ShardStats
from .tario import WRITER_ID
from .text import cached_tokenizer, load_tokenizer, sample_captions



MAX_LENGTH = 1 << 16  # tokens per caption; each row is allocated at this length for every caption


@dataclass(frozen=True)
class TokenizeConfig:
    length: int
    add_bos: bool = False
    add_eos: bool = False

    def __post_init__(self) -> None:
        if self.length < 1 + self.add_bos + self.add_eos:
            raise T2IError(f"--length must leave room for at least one token besides BOS/EOS, got {self.length}")
        if self.length > MAX_LENGTH:
            raise T2IError(f"--length {self.length}: at most {MAX_LENGTH} tokens per caption (DALL·E uses 256)")


def clean_caption(text: str) -> tuple[str, bool]:
    """Drop control and format characters; whitespace controls become spaces."""
    if text.isprintable():
        return text, False
    out = []
    changed = False
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs"):
            changed = True
            if ch in "\t\n\r\x0b\x0c":
                out.append(" ")
            continue
        out.append(ch)
    return "".join(out), changed


def encode_rows(tok, captions: list[str], cfg: TokenizeConfig, dtype) -> tuple[np.ndarray, dict]:
    """Captions → an (n, L) array: [BOS] tokens[:room] [EOS] then pad, filled in one scatter."""
    cleaned, control = [], 0
    for c in captions:
        c2, changed = clean_caption(c)
        cleaned.append(c2)
        control += changed
    ids = tok.encode_batch(cleaned) if cleaned else []
    n, L, bos, eos = len(ids), cfg.length, int(cfg.add_bos), int(cfg.add_eos)
    room = L - bos - eos
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    kept = np.minimum(lengths, room)
    body = ids if not (lengths > room).any() else [s[:room] for s in ids]
    rows = np.full((n, L), tok.pad_id, dtype=dtype)
    cols = np.arange(L)
    # row-major order of the mask matches the order of the flattened captions
    rows[(cols >= bos) & (cols < bos + kept[:, None])] = np.fromiter(chain.from_iterable(body), dtype=np.int64, count=int(kept.sum()))
    if bos:
        rows[:, 0] = tok.bos_id
    if eos:
        rows[np.arange(n), bos + kept] = tok.eos_id
    stats = {"captions": n, "truncated": int((lengths > room).sum()), "empty": int((lengths == 0).sum()), "control": control,
             "lengths": lengths.tolist()}
    return rows, stats


def encode_rows_reference(tok, captions: list[str], cfg: TokenizeConfig, dtype) -> np.ndarray:
    """The same, one caption at a time (what the vectorised version is tested against)."""
    room = cfg.length - cfg.add_bos - cfg.add_eos
    rows = np.full((len(captions), cfg.length), tok.pad_id, dtype=dtype)
    for r, seq in enumerate(tok.encode_batch([clean_caption(c)[0] for c in captions])):
        row = ([tok.bos_id] if cfg.add_bos else []) + seq[:room] + ([tok.eos_id] if cfg.add_eos else [])
        rows[r, : len(row)] = row
    return rows


def produce_shard(tokenizer_dir: str, cfg: TokenizeConfig, dtype: str, shard: tuple[str, dict]) -> Iterator:
    """One image shard → its text-token shard: every caption of the shard encoded in one batch.

    ``shard``: (its folder, its manifest record). The shard is read only after its size and sha256
    match the record, and its sample count must too (``manifest.checked_samples``): a shard
    truncated on a member boundary would otherwise give a short text-token shard that claims to
    be aligned with the whole image set."""
    folder, record = shard
    image_shard = str(Path(folder) / record["name"])
    tok = cached_tokenizer(tokenizer_dir)
    keys, counts, captions, repaired = [], [], [], 0
    for sample in checked_samples(ShardSet(Path(folder), {"shards": [record]}), record):
        caps, fixed = sample_captions(sample, image_shard)  # a caption that is not a str stops the run
        repaired += fixed
        keys.append(sample["__key__"])
        counts.append(len(caps))
        captions += caps
    rows, st = encode_rows(tok, captions, cfg, dtype)
    hist: dict[str, int] = {}
    for n in st.pop("lengths"):
        hist[str(n)] = hist.get(str(n), 0) + 1
    start = 0
    for key, n in zip(keys, counts):
        arr = rows[start : start + n]
        start += n
        yield {"__key__": key, "text_tokens.npy": npy_bytes(arr), "__content__": {"text_tokens.npy": canonical_array(arr)}}
    yield ShardStats(dict(st, samples=len(keys), repaired=repaired, token_length_histogram=hist))


def tokenize(tokenizer_dir: str | Path, images: str | Path, out: str | Path, cfg: TokenizeConfig, runner) -> dict[str, dict]:
    """Text-token sets aligned with each split of ``images``, under ``out``
    (``derived.build_derived_sets``: {split: manifest}, with ``_images`` / ``_out`` folders)."""
    tok = load_tokenizer(tokenizer_dir)
    dtype = "uint16" if tok.vocab_size <= 65536 else "int32"
    own = {
        "config": asdict(cfg),
        "seed": None,
        "tokenizer": dict(tok.describe(), length=cfg.length, dtype=dtype),
        "encoder": {"npy": f"numpy-format {dtype}", "tar": WRITER_ID},
    }
    produce = partial(produce_shard, str(Path(tokenizer_dir).resolve()), cfg, dtype)
    return build_derived_sets(images, out, runner, "text_tokens", "tokenize", "the captions of an image shard set",
                              lambda mpath, base: (own, produce))
