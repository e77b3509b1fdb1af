"""A pure-Python front end for printable-ASCII captions, in front of a ``tokenizers`` model.

Encoding a caption in the Rust library costs ~25 µs, most of it in crossing into Rust and
building the Encoding object (offsets, strings), and batching only spreads that over threads.
For printable ASCII text the normalizer and pre-tokenizer of every pipeline this project ships
reduce to a lowercase and a regular expression, and BPE / WordPiece act on each pre-token on its
own. So: split in Python, and look each pre-token up in a cache filled by the tokenizer's own
model (``model.tokenize``). The result is the Rust pipeline's, id for id: tests/
test_fastpath_fuzz.py holds it to that on 20,000 seeded random printable-ASCII strings (built
around contractions, digit and punctuation runs, runs of spaces and spelled special tokens) for
trained BPE, GPT-2, CLIP, trained WordPiece and BERT. Anything else — non-ASCII, control
characters — goes through Rust unchanged.

The fast path switches itself off, and logs once why, for a pipeline it does not recognise
(INFO: a loaded tokenizer.json of another shape; added tokens that are not special) and when a
self-check on ``PROBES`` at start disagrees with Rust (WARNING: a ``tokenizers`` release whose
pipeline no longer matches the regular expressions here). Off, every caption goes through Rust.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Callable

log = logging.getLogger(__name__)

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


# what the self-check runs through both paths: each corner the regular expressions must get right
PROBES = [
    "", " ", "   ", "a", " a", "a ", "  two  spaces  ", "A Man's DOG isn't HERE", "it's they're we've I'm you'll he'd",
    "IT'S THEY'RE WE'VE I'M YOU'LL HE'D", "'s't're've'm'll'd", "x's'S 'T", "12 345 6789012 3.14 1,000", "a1b22c333",
    "!!! ...?! -- (a) [b] {c} <d> #$%&*+/=@\\^_`|~", "[PAD] [CLS] [SEP] [MASK] [UNK] <pad> <unk> <s> </s> <|endoftext|>",
    "<|startoftext|>a<|endoftext|>", "##ing ##s", "Hello  world", "a" * 120, "x " * 20, " 's", "don''t",
]


def splitter(spec: dict) -> tuple[Callable[[str], list[str]], Callable[[str], str] | None] | str:
    """For a recognised pipeline: a function from a printable-ASCII string to its pre-tokens, and
    the mapping that makes a pre-token model-ready (ByteLevel's byte-to-character table, or
    None). The cache is keyed by the raw pre-token, so the mapping runs only on a miss.
    Otherwise: why not, in words."""
    plain = [t["content"] for t in spec.get("added_tokens", []) if not t.get("special")]
    if plain:
        return f"added tokens that are not special ({', '.join(map(repr, plain[:3]))}) are matched before the pre-tokenizer"
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
    shape = {"model": model, "normalizer": (norm or {}).get("type"), "pre_tokenizer": (pre or {}).get("type")}
    return f"not one of the shipped pipelines ({shape})"


class FastEncoder:
    MAX_CACHE = 1 << 21  # pre-tokens; a caption corpus has far fewer distinct words

    def __init__(self, tok) -> None:
        self.tok = tok
        self.cache: dict[str, list[int]] = {}
        self.split = self.to_model = None
        found = splitter(json.loads(tok.to_str()))
        if isinstance(found, str):
            self.off = found
            log.info("tokenizer fast path off: %s; every caption goes through tokenizers' Rust pipeline", found)
            return
        self.split, self.to_model = found
        rust = self._rust(PROBES)
        for text, fast, slow in zip(PROBES, self.encode_batch(PROBES), rust):
            if fast != slow:
                self.split = self.to_model = None
                self.cache.clear()
                self.off = f"self-check differs from tokenizers on {text!r}: {fast} != {slow}"
                log.warning("tokenizer fast path off: %s; every caption goes through tokenizers' Rust pipeline", self.off)
                return
        self.off = ""

    def _rust(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.split is None:
            return self._rust(texts)
        out: list = [None] * len(texts)
        slow = []
        cache, model, split, to_model = self.cache, self.tok.model, self.split, self.to_model
        get = cache.get

        def miss(w: str) -> list[int]:
            if len(cache) >= self.MAX_CACHE:
                cache.clear()
            hit = cache[w] = [t.id for t in model.tokenize(to_model(w) if to_model else w)]
            return hit

        for i, text in enumerate(texts):
            if text.isascii() and text.isprintable():
                # every pre-token yields at least one id, so a cached list is never empty
                out[i] = [t for w in split(text) for t in (get(w) or miss(w))]
            else:
                slow.append(i)
        if slow:
            for i, ids in zip(slow, self._rust([texts[i] for i in slow])):
                out[i] = ids
        return out
