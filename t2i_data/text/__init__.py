"""Text tokenizers, one interface: train or load, save, fingerprint, encode a batch.

=========  ==========================================================================
kind       what it is
=========  ==========================================================================
bpe        byte-level BPE trained on the training captions (NFKC + lowercase), or GPT-2 /
           CLIP / any tokenizer.json loaded from local files
wordpiece  BERT-style uncased WordPiece trained on the captions, or a local vocab.txt /
           Hugging Face tokenizer folder loaded through transformers
word       the thesis' ``\\b\\w+\\b`` word tokenizer, vocabulary from the training split
mdmnist    the fixed 20-symbol MD-MNIST description vocabulary
=========  ==========================================================================

Captions reach a tokenizer through ``captions.py``: ``check_captions`` (every caption read from
a shard is a str, or one error names the shard, key and index), ``training_captions`` (the
training split's captions) and ``cut_captions`` (the length caps applied before training).

A saved folder also opens in ``tokenizers`` and ``transformers`` with the same ids; ``interop.py``
says which file is for whom and why the fingerprint covers only t2i's own files.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import T2IError
from .base import META_NAME, TextTokenizer, folder_fingerprint, read_meta
from .captions import CaptionLimits, check_captions, cut_captions, sample_captions, training_captions
from .hf import HFTokenizer
from .mdmnist import MDMNISTTokenizer
from .word import WordTokenizer

KINDS = {"bpe": HFTokenizer, "wordpiece": HFTokenizer, "word": WordTokenizer, "mdmnist": MDMNISTTokenizer}
TRAINABLE = ("bpe", "wordpiece", "word")


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    folder = Path(folder)
    meta = read_meta(folder)
    cls = KINDS.get(meta.get("kind"))
    if cls is None:
        raise T2IError(f"{folder}: unknown tokenizer kind {meta.get('kind')!r}; known: {', '.join(KINDS)}")
    tok = cls._load_files(folder, meta)
    tok.fingerprint = folder_fingerprint(folder, list(meta["files"]) + [META_NAME], cls._t2i_bytes)
    return tok


@lru_cache(maxsize=4)
def cached_tokenizer(folder: str) -> TextTokenizer:
    """One load per process (dask workers included)."""
    return load_tokenizer(folder)


def train(kind: str, captions: list[str], vocab_size: int | None, min_frequency: int | None = None,
          limits: CaptionLimits = CaptionLimits()) -> TextTokenizer:
    """A tokenizer of ``kind`` trained on ``captions`` after ``limits`` (``captions.py``: why and
    the defaults). When the caps cut something, ``source["cut"]`` records what; when they cut
    nothing, the tokenizer is byte for byte the one trained without them."""
    from .hf import train_bpe, train_wordpiece

    if kind not in TRAINABLE:
        raise T2IError(f"--kind must be one of {', '.join(TRAINABLE)} to train; mdmnist needs no training ('t2i tokenizer load --kind mdmnist')")
    if kind != "word" and not vocab_size:
        raise T2IError(f"--vocab-size is needed to train a {kind} tokenizer")
    captions, cut = cut_captions(captions, limits)
    if kind == "word":
        tok = WordTokenizer.train(captions, vocab_size, min_frequency or 1)
    else:
        tok = (train_bpe if kind == "bpe" else train_wordpiece)(captions, vocab_size, min_frequency or 2)
    if cut["captions_truncated"] or cut["words_truncated"]:
        tok.source = dict(tok.source, cut=cut)
    return tok


def load_pretrained(kind: str, path: str | Path | None) -> TextTokenizer:
    """Local pretrained files → a tokenizer (see the table above for what each kind takes)."""
    from . import hf

    if kind == "mdmnist":
        return MDMNISTTokenizer()
    if path is None:
        raise T2IError(f"--from PATH is needed to load a {kind} tokenizer")
    p = Path(path)
    if not p.exists():
        raise T2IError(f"--from {p}: no such file or folder; nothing is downloaded: put the published tokenizer's files there "
                       f"({'vocab.txt, or a Hugging Face tokenizer folder' if kind == 'wordpiece' else 'tokenizer.json, vocab.json + merges.txt, or CLIP bpe_simple_vocab_16e6.txt.gz' if kind == 'bpe' else 'its files'})")
    if kind == "bpe":
        if p.name.endswith(".txt.gz"):
            return hf.load_clip(p)
        if p.is_file() and p.suffix == ".json":
            return hf.load_tokenizer_json(p, "bpe")
        if p.is_dir() and (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
            return hf.load_gpt2(p / "vocab.json", p / "merges.txt")
        if p.is_dir() and (p / "tokenizer.json").is_file():
            return hf.load_hf_folder(p, "bpe")
        raise T2IError(f"--from {p}: give a tokenizer.json, a folder with vocab.json + merges.txt (GPT-2), or bpe_simple_vocab_16e6.txt.gz (CLIP)")
    if kind == "wordpiece":
        if p.is_file() and p.name.endswith(".txt"):
            return hf.load_bert_vocab(p)
        if p.is_file() and p.suffix == ".json":
            return hf.load_tokenizer_json(p, "wordpiece")
        if p.is_dir():
            return hf.load_hf_folder(p, "wordpiece")
        raise T2IError(f"--from {p}: give a vocab.txt, a tokenizer.json or a Hugging Face tokenizer folder")
    raise T2IError(f"--kind {kind}: load takes bpe, wordpiece or mdmnist (a word tokenizer is trained: 't2i tokenizer train --kind word')")


__all__ = ["KINDS", "TextTokenizer", "load_tokenizer", "cached_tokenizer", "train", "load_pretrained", "CaptionLimits",
           "check_captions", "cut_captions", "sample_captions", "training_captions"]
