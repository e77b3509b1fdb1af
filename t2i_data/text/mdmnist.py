"""The fixed 20-symbol MD-MNIST vocabulary: ids 0-19 exactly as the thesis (values 0-9, sizes
10-12, colours 13-16, positions 17-19), then PAD 20, BOS 21, EOS 22, UNK 23. No training.

Saved as vocab.json (t2i, fingerprinted) plus an equivalent WordLevel tokenizer.json and a
tokenizer_config.json for ``tokenizers`` and ``transformers`` (``interop.py``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..mdmnist import VOCAB
from . import interop
from .base import TextTokenizer

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class MDMNISTTokenizer(TextTokenizer):
    kind = "mdmnist"

    def __init__(self, source: dict | None = None) -> None:
        self.itos = list(VOCAB) + list(SPECIALS)
        self.stoi = {s: i for i, s in enumerate(VOCAB)}
        n = len(VOCAB)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = n, n + 1, n + 2, n + 3
        self.vocab_size = len(self.itos)
        self.source = source or {"fixed": "mdmnist-20"}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        get, unk = self.stoi.get, self.unk_id
        return [[get(s, unk) for s in t.split()] for t in texts]

    def decode(self, ids) -> str:
        return " ".join(self.itos[i] for i in ids if i < len(VOCAB) or i == self.unk_id)

    def _save_files(self, folder: Path) -> list[str]:
        """vocab.json for t2i; tokenizer.json and tokenizer_config.json for other libraries."""
        (folder / "vocab.json").write_text(json.dumps(self.itos) + "\n")
        ids = {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "unk": self.unk_id}
        interop.write_wordlevel(folder, interop.mdmnist_backend(self.itos, self.itos[self.unk_id]), self.itos, ids)
        return ["vocab.json"]

    @classmethod
    def _load_files(cls, folder: Path, meta: dict) -> "MDMNISTTokenizer":
        tok = cls(meta["source"])
        if json.loads((folder / "vocab.json").read_text()) != tok.itos:
            raise ValueError(f"{folder}: vocab.json is not the MD-MNIST vocabulary")
        return tok
