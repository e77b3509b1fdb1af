"""A pure-Python front end for printable-ASCII captions, in front of a ``tokenizers`` model.

Encoding a caption in the Rust library costs ~25 µs, most of it in crossing into Rust and
building the Encoding object (offsets, strings), and batching only spreads that over threads.
For printable ASCII text the normalizer and pre-tokenizer of every pipeline this project ships
reduce to a lowercase and a regular expression, and BPE / WordPiece act on each pre-token on its
own. So: split in Python, and look each pre-token up in a cache filled by the tokenizer's own
model (``model.tokenize``). The result is the Rust pipeline's, id for id (a fuzz test holds it
to that); anything else — non-ASCII, control characters, an unrecognised pipeline, added tokens
that are not special — goes through Rust unchanged.
"""
from __future__ import annotations

import json
import re
from typing import Callable

# GPT-2's split pattern restricted to ASCII (\p{L} = [A-Za-z], \p{N} = [0-9]); tokenizers' ByteLevel
GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")
# CLIP's pattern on lowercased ASCII; note the single digit
CLIP_ASCII = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")
# BertPreTokenizer on ASCII: runs of letters and digits; every other printable character alone
BERT_ASCII = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_SPACES = re.compile(r"\s+")

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": None, "trim_offsets": True, "use_regex": True}
BERT_NORM = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True}
CLIP_NORM = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]}
NFKC_LOWER = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}


def _byte_level(w: str) -> str:
    return w.replace(" ", "\u0120")  # printable ASCII maps to itself; the space to 'Ġ'


def splitter(spec: dict) -> tuple[Callable[[str], list[str]], Callable[[str], str] | None] | None:
    """For a recognised pipeline: a function from a printable-ASCII string to its pre-tokens, and
    the mapping that makes a pre-token model-ready (ByteLevel's byte-to-character table, or
    None). The cache is keyed by the raw pre-token, so the mapping runs only on a miss."""
    if any(not t.get("special") for t in spec.get("added_tokens", [])):
        return None
    norm, pre, model = spec.get("normalizer"), spec.get("pre_tokenizer"), spec["model"]["type"]
    if model == "BPE" and isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex") and norm in (None, NFKC_LOWER):
        prefix, lower = pre.get("add_prefix_space"), norm is not None

        def split_gpt2(text: str) -> list[str]:
            if lower:
                text = text.lower()
            if prefix and text and not text.startswith(" "):  # tokenizers adds no space to ""
                text = " " + text
            return GPT2_ASCII.findall(text)

        return split_gpt2, _byte_level
    if model == "WordPiece" and norm == BERT_NORM and pre == {"type": "BertPreTokenizer"}:
        return (lambda text: BERT_ASCII.findall(text.lower())), None
    if model == "BPE" and norm == CLIP_NORM and isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre["pretokenizers"]
        if len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("invert") and parts[1].get("use_regex") is False:
            return (lambda text: CLIP_ASCII.findall(_SPACES.sub(" ", text).lower())), _byte_level
    return None


class FastEncoder:
    MAX_CACHE = 1 << 21  # pre-tokens; a caption corpus has far fewer distinct words

    def __init__(self, tok) -> None:
        self.tok = tok
        found = splitter(json.loads(tok.to_str()))
        self.split, self.to_model = found if found else (None, None)
        self.cache: dict[str, list[int]] = {}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.split is None:
            return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        out: list = [None] * len(texts)
        slow = []
        cache, model, split, to_model = self.cache, self.tok.model, self.split, self.to_model
        get = cache.get

        def miss(w: str) -> list[int]:
            hit = cache[w] = [t.id for t in model.tokenize(to_model(w) if to_model else w)]
            return hit

        for i, text in enumerate(texts):
            if text.isascii() and text.isprintable():
                # every pre-token yields at least one id, so a cached list is never empty
                out[i] = [t for w in split(text) for t in (get(w) or miss(w))]
            else:
                slow.append(i)
        if slow:
            for i, e in zip(slow, self.tok.encode_batch([texts[i] for i in slow], add_special_tokens=False)):
                out[i] = e.ids
        return out
