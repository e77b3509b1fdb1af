"""The thesis' word tokenizer, made deterministic: lowercase, ``\\b\\w+\\b``, vocabulary from the
training split only, ids by (frequency descending, then the word), after ``<pad> <unk> <bos> <eos>``
(ids 0-3; BOS is the name every other tokenizer here and in ``transformers`` uses for the start
token; a vocabulary saved before with the thesis' ``<sos>`` still loads as saved).

The thesis code numbered words by iterating a Python set (ids changed between runs) and built
the vocabulary from train and test captions together.

Saved as vocab.json (t2i, fingerprinted) plus an equivalent WordLevel tokenizer.json and a
tokenizer_config.json for ``tokenizers`` and ``transformers`` (``interop.py``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from . import interop
from ..errors import T2IError
from .base import TextTokenizer

WORD = re.compile(r"\b\w+\b")
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
_SAVED_SPECIALS = (SPECIALS, ("<pad>", "<unk>", "<sos>", "<eos>"))  # what a saved vocab.json may start with


class WordTokenizer(TextTokenizer):
    kind = "word"

    def __init__(self, words: list[str], source: dict, specials: tuple[str, ...] = SPECIALS) -> None:
        self.itos = list(specials) + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("word vocabulary has duplicates")
        self.vocab_size = len(self.itos)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3
        self.source = source

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int | None = None, min_frequency: int = 1) -> "WordTokenizer":
        counts = Counter(w for c in captions for w in WORD.findall(c.lower()))
        words = sorted((w for w, n in counts.items() if n >= min_frequency), key=lambda w: (-counts[w], w))
        if vocab_size is not None:
            words = words[: max(0, vocab_size - len(SPECIALS))]
        return cls(words, {"trained": "word", "min_frequency": min_frequency, "vocab_size": vocab_size})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        get, unk = self.stoi.get, self.unk_id
        return [[get(w, unk) for w in WORD.findall(t.lower())] for t in texts]

    def decode(self, ids) -> str:
        return " ".join(self.itos[i] for i in ids if i >= len(SPECIALS) or i == self.unk_id)

    def _save_files(self, folder: Path) -> list[str]:
        """vocab.json for t2i; tokenizer.json and tokenizer_config.json for other libraries."""
        (folder / "vocab.json").write_text(json.dumps(self.itos, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        ids = {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "unk": self.unk_id}
        interop.write_wordlevel(folder, interop.word_backend(self.itos, self.itos[self.unk_id]), self.itos, ids)
        return ["vocab.json"]

    @classmethod
    def _load_files(cls, folder: Path, meta: dict) -> "WordTokenizer":
        itos = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        if tuple(itos[:len(SPECIALS)]) not in _SAVED_SPECIALS:
            raise T2IError(f"{folder / 'vocab.json'}: starts with {itos[:len(SPECIALS)]}, not the word tokenizer's specials "
                             f"{list(SPECIALS)}")
        return cls(itos[len(SPECIALS):], meta["source"], tuple(itos[:len(SPECIALS)]))
