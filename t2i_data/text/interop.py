"""The files beside a saved tokenizer that other libraries open, and how t2i reads its own back.

=====================  ===============================================  ==================================
file                   what it holds                                    who reads it
=====================  ===============================================  ==================================
t2i_tokenizer.json     kind, special ids, vocabulary size, source,      t2i (fingerprinted)
                       the list of t2i's own files
vocab.json             word / mdmnist: the vocabulary in id order       t2i (fingerprinted)
tokenizer.json         bpe / wordpiece: the whole pipeline, without     t2i (fingerprinted, in the form
                       its special added tokens (below);                described below);
                       word / mdmnist: an equivalent WordLevel          ``tokenizers.Tokenizer.from_file``,
                       pipeline built here                              ``transformers.AutoTokenizer``
tokenizer_config.json  the special tokens by name (pad, bos, eos,       ``transformers.AutoTokenizer``
                       unk), every added token by id, and               (``local_files_only``); t2i reads
                       ``split_special_tokens: true``                   its added tokens (bpe / wordpiece)
=====================  ===============================================  ==================================

Spelled special tokens. t2i encodes text that spells a special token ("[PAD]",
"<|endoftext|>") as text, through ``Tokenizer.encode_special_tokens``. ``tokenizers`` does not
store that switch in tokenizer.json, so a file that lists "[PAD]" as a special added token makes
``Tokenizer.from_file`` encode "[PAD] red" as [pad, ...]. The tokenizer.json written here
therefore leaves the special added tokens out. That keeps the ids of all text: with
``encode_special_tokens`` on they were never matched in text anyway, and the model sees the same
pre-tokens (the pre-tokenizers of every shipped pipeline split "[PAD]" apart). In every shipped
pipeline the specials are also entries of the model's vocabulary (the BPE and WordPiece trainers
put them there, CLIP's and BERT's vocabularies hold them), so ``token_to_id("[PAD]")`` still
works; a loaded tokenizer.json whose specials lie past the model's vocabulary loses their ids in
``tokenizers`` alone. ``transformers`` gets them back, at the same ids, from
tokenizer_config.json (``added_tokens_decoder``), and ``split_special_tokens: true`` sets the
same ``encode_special_tokens`` switch there. Nothing else in tokenizer.json changes.

Fingerprint. It stays the sha256 over t2i's own files in the form t2i has always written them:
for bpe / wordpiece, tokenizer.json is hashed with the special added tokens put back from
tokenizer_config.json (``t2i_form``), which is byte for byte the file earlier versions wrote,
so an existing tokenizer keeps its fingerprint whether it is an old folder or saved again. That
form is also exactly what t2i loads, so the fingerprint covers every byte that decides t2i's
ids. tokenizer_config.json's other fields and word / mdmnist's tokenizer.json are views for
other libraries, derived from the hashed files; hashing them would tie the tokenizer's identity
to a transformers convention (5.x no longer writes special_tokens_map.json, which is why none is
written here) and change every existing fingerprint.

Word and mdmnist in ``tokenizers``: a WordLevel model over t2i's vocabulary. For word, the
pre-tokenizer is a Split on runs of the exact characters Python's ``\\w`` matches (its Unicode
tables, listed as ranges), after ``Lowercase``; characters that ``Lowercase`` maps but Python's
``str.lower`` does not (Python 3.11 with tokenizers 0.23: 55 letters added to Unicode after
Python's version 14, so for Python not word characters) become spaces first. One input differs and cannot be fixed with a normalizer:
Python lowercases a capital sigma at the end of a word to final "ς", ``Lowercase`` maps every
"Σ" to "σ" (it works one character at a time), so "ΟΔΟΣ" is "οδος" in t2i and "οδοσ" here;
the ids differ only when the vocabulary holds one of the two spellings. For mdmnist, the Split
is on runs of characters outside Python's ``str.isspace`` (which counts U+001C-U+001F, Rust's
whitespace does not), and every "<" is doubled first, so no text can reach the entries
"<pad>", "<bos>", "<eos>" (t2i maps spelled special symbols to unk): equal on every input.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from array import array
from functools import lru_cache
from pathlib import Path

from ..errors import T2IError

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
CONFIG_NAME = "tokenizer_config.json"
_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")  # tokenizers' AddedToken field order
_ADDED_KEY = re.compile(r'"added_tokens"\s*:\s*')


# -- bpe / wordpiece: tokenizer.json without its special added tokens -------------------------
def _added_span(text: str, where: str) -> tuple[int, int, list[dict]]:
    m = _ADDED_KEY.search(text)  # the first match is the top-level key: it precedes every other string key
    if m is None:
        raise T2IError(f"{where}: no added_tokens list; not a tokenizers tokenizer.json")
    try:
        entries, end = json.JSONDecoder().raw_decode(text, m.end())
    except json.JSONDecodeError as e:
        raise T2IError(f"{where}: added_tokens is not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise T2IError(f"{where}: added_tokens is not a list")
    return m.end(), end, [_entry(e, where) for e in entries]


def _entry(e, where: str) -> dict:
    ok = isinstance(e, dict) and isinstance(e.get("id"), int) and isinstance(e.get("content"), str) \
        and all(isinstance(e.get(f), bool) for f in _FLAGS)
    if not ok:
        raise T2IError(f"{where}: malformed added token {e!r}")
    return {"id": e["id"], "content": e["content"], **{f: e[f] for f in _FLAGS}}


def _render(entries: list[dict]) -> str:
    """The added_tokens list as ``Tokenizer.to_str(pretty=True)`` writes it (serde_json's pretty
    printer: two-space indent, the fields in AddedToken's order); ``save`` checks the round trip."""
    if not entries:
        return "[]"
    items = ["\n".join("    " + line for line in json.dumps(e, indent=2, ensure_ascii=False).split("\n")) for e in entries]
    return "[\n" + ",\n".join(items) + "\n  ]"


def interop_form(t2i_text: str) -> tuple[str, list[dict]]:
    """t2i's tokenizer.json → (the file other libraries read, every added token)."""
    start, end, added = _added_span(t2i_text, "tokenizer.json")
    return t2i_text[:start] + _render([a for a in added if not a["special"]]) + t2i_text[end:], added


def t2i_form(folder: Path) -> bytes:
    """tokenizer.json as t2i reads and fingerprints it: the file's own added tokens plus the
    special ones listed in tokenizer_config.json, in id order. A folder without
    tokenizer_config.json (saved before it existed) is read as it is."""
    raw = (folder / TOKENIZER_JSON).read_bytes()
    config = folder / CONFIG_NAME
    if not config.is_file():
        return raw
    where = str(config)
    try:
        decoder = json.loads(config.read_bytes()).get("added_tokens_decoder", {})
        specials = [_entry(dict(v, id=int(k)), where) for k, v in decoder.items()]
        text = raw.decode("utf-8")
    except (ValueError, AttributeError, TypeError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise T2IError(f"{where}: unreadable added_tokens_decoder or tokenizer.json ({e}); save the tokenizer again") from None
    start, end, on_disk = _added_span(text, str(folder / TOKENIZER_JSON))
    by_id = {a["id"]: a for a in on_disk}
    for s in (s for s in specials if s["special"]):
        if by_id.setdefault(s["id"], s) != s:
            raise T2IError(f"{folder}: id {s['id']} is {by_id[s['id']]['content']!r} in {TOKENIZER_JSON} "
                           f"but {s['content']!r} in {CONFIG_NAME}")
    return (text[:start] + _render([by_id[i] for i in sorted(by_id)]) + text[end:]).encode("utf-8")


def transformers_config(added: list[dict], special_names: dict[str, str]) -> dict:
    """tokenizer_config.json for ``transformers.AutoTokenizer.from_pretrained(folder)``:
    ``PreTrainedTokenizerFast`` over tokenizer.json (the class name 4.x and 5.x both know),
    with the special tokens by name, the added tokens by id, and ``split_special_tokens`` so
    spelled specials are text there too. No post-processor: ``encode`` gives t2i's ids, and BOS
    and EOS are added by the caller as ``t2i tokenize --bos --eos`` adds them."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "split_special_tokens": True, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    config.update({f"{name}_token": token for name, token in special_names.items()})
    return config


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# -- word / mdmnist: a WordLevel tokenizer.json -----------------------------------------------
def _ranges(codepoints: list[int]) -> str:
    """Sorted code points → an Oniguruma class body of ``\\x{...}`` ranges."""
    out, start, prev = [], codepoints[0], codepoints[0]
    for cp in codepoints[1:] + [-1]:
        if cp == prev + 1:
            prev = cp
            continue
        out.append(f"\\x{{{start:X}}}" if start == prev else f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
        start = prev = cp
    return "".join(out)


@lru_cache(maxsize=1)
def _all_chars() -> str:
    """Every code point but the surrogates, in order."""
    codes = array("I", range(0xD800))
    codes.extend(range(0xE000, sys.maxunicode + 1))
    return codes.tobytes().decode("utf-32-le" if sys.byteorder == "little" else "utf-32-be")


@lru_cache(maxsize=1)
def python_word_class() -> str:
    """The characters Python's ``re`` ``\\w`` matches in a str pattern, as an Oniguruma class body."""
    return _ranges(sorted({ord(c) for c in re.findall(r"\w", _all_chars())}))


@lru_cache(maxsize=1)
def python_space_class() -> str:
    """The characters ``str.split()`` splits on (``re``'s ``\\s`` is the same ``str.isspace`` test)."""
    return _ranges([ord(c) for c in re.findall(r"\s", _all_chars())])


def _lowercase_differs(chars: str) -> list[str]:
    from tokenizers import normalizers

    low = normalizers.Lowercase().normalize_str
    if low(chars) == chars.lower():  # one call settles a block with no difference (most of them)
        return []
    chars = chars.replace("\x01", "")
    rust = low("\x01".join(chars)).split("\x01")  # \x01 lowercases to itself: one result per character
    return [c for c, r in zip(chars, rust) if c.lower() != r]


@lru_cache(maxsize=1)
def lowercase_gaps() -> str:
    """Characters ``tokenizers``' Lowercase maps differently from ``str.lower``. Those whose
    Python lowercase holds no word character are separators for Python, so a space in their
    place keeps the word split exact; any other would break it, and is logged."""
    every = _all_chars()
    differ = [c for i in range(0, len(every), 1 << 16) for c in _lowercase_differs(every[i : i + (1 << 16)])]
    bad = [c for c in differ if re.search(r"\w", c.lower())]
    if bad:
        log.warning("word tokenizer.json: tokenizers lowercases %s unlike Python; words holding them get other ids there",
                    ", ".join(f"U+{ord(c):04X}" for c in bad))
    return _ranges([ord(c) for c in differ if c not in bad]) if len(differ) > len(bad) else ""


def word_backend(itos: list[str], unk: str):
    """The word tokenizer as a ``tokenizers.Tokenizer``: lowercase, runs of Python word
    characters, WordLevel over ``itos`` (see the module docstring for the one exception)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(itos)}, unk_token=unk))
    gaps = lowercase_gaps()
    steps = ([normalizers.Replace(Regex(f"[{gaps}]"), " ")] if gaps else []) + [normalizers.Lowercase()]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"[{python_word_class()}]+"), behavior="removed", invert=True)
    return tok


def mdmnist_backend(itos: list[str], unk: str):
    """The MD-MNIST tokenizer as a ``tokenizers.Tokenizer``: Python's ``str.split()``, then
    WordLevel; "<" doubled so that no text is looked up as a special symbol."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(itos)}, unk_token=unk))
    tok.normalizer = normalizers.Replace("<", "<<")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"[^{python_space_class()}]+"), behavior="removed", invert=True)
    return tok


def write_wordlevel(folder: Path, backend, itos: list[str], ids: dict[str, int]) -> None:
    """tokenizer.json + tokenizer_config.json for a kind whose t2i files are vocab.json; ``ids``
    names the special ids (pad, bos, eos, unk)."""
    (folder / TOKENIZER_JSON).write_text(backend.to_str(pretty=True) + "\n", encoding="utf-8")
    added = [{"id": i, "content": itos[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i in sorted(set(ids.values()))]
    write_json(folder / CONFIG_NAME, transformers_config(added, {name: itos[i] for name, i in ids.items()}))
