"""What every text tokenizer offers, and its saved form.

A saved tokenizer is a folder: ``t2i_tokenizer.json`` (kind, special ids, vocabulary size,
where it came from) plus the kind's own files, plus files that ``tokenizers`` and
``transformers`` open (``interop.py``: which file is for whom). Its fingerprint is the sha256
over the names and bytes of t2i's own files, the ones ``t2i_tokenizer.json`` lists, each in the
form t2i reads it (``_t2i_bytes``), so any change to the vocabulary, merges or special ids
changes it, and files written for other libraries do not.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..digest import canonical_json
from ..errors import T2IError

META_NAME = "t2i_tokenizer.json"


def folder_fingerprint(folder: Path, names: list[str], read: Callable[[Path, str], bytes] | None = None) -> str:
    """sha256 over (name, sha256 of its bytes) in name order; ``read`` gives a file's bytes as
    t2i reads it (default: as on disk)."""
    h = hashlib.sha256()
    for name in sorted(names):
        data = read(folder, name) if read else (folder / name).read_bytes()
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


class TextTokenizer:
    """Subclasses set ``kind`` and the special ids, and implement the four methods below.

    ``vocab_size`` counts every id the tokenizer can emit, pad included: an embedding table of
    that many rows covers all of them. ``pad_id`` is never produced for real text.
    """

    kind: str = ""
    vocab_size: int
    pad_id: int
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    source: dict

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS (the tokenize stage adds those)."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def _save_files(self, folder: Path) -> list[str]:
        """Write the kind's own files and the interop files beside them; return the names of
        the kind's own files (those the fingerprint covers)."""
        raise NotImplementedError

    @classmethod
    def _t2i_bytes(cls, folder: Path, name: str) -> bytes:
        """A listed file as t2i reads and fingerprints it."""
        return (folder / name).read_bytes()

    @classmethod
    def _load_files(cls, folder: Path, meta: dict) -> "TextTokenizer":
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def meta(self) -> dict:
        return {
            "kind": self.kind, "vocab_size": self.vocab_size, "pad_id": self.pad_id, "bos_id": self.bos_id,
            "eos_id": self.eos_id, "unk_id": self.unk_id, "source": self.source,
        }

    def save(self, folder: str | Path) -> str:
        """Write the saved form and return its fingerprint."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = self._save_files(folder)
        (folder / META_NAME).write_bytes(canonical_json(dict(self.meta(), files=sorted(names))) + b"\n")
        self.fingerprint = folder_fingerprint(folder, names + [META_NAME], self._t2i_bytes)
        return self.fingerprint

    def describe(self) -> dict:
        """What a manifest or checkpoint records about the tokenizer."""
        return dict(self.meta(), fingerprint=self.fingerprint)


def read_meta(folder: Path) -> dict:
    if not Path(folder).is_dir():
        raise T2IError(f"{folder}: not a folder; a saved tokenizer is the folder 't2i tokenizer train|load --out' wrote")
    path = folder / META_NAME
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise T2IError(f"{folder}: no {META_NAME}; make a tokenizer with 't2i tokenizer train' or 't2i tokenizer load'") from None
    except (OSError, ValueError) as e:
        raise T2IError(f"{path}: not a readable tokenizer description ({e})") from None
    missing = [n for n in meta.get("files", []) if not (folder / n).is_file()]
    if missing:
        raise T2IError(f"{folder}: tokenizer files missing: {', '.join(missing)}")
    return meta
