"""Captions as the tokenizers see them: read from image shards, checked, and capped for training.

Checking. A caption in a shard's ``<key>.json`` must be a str, in a ``captions`` list. Anything
else (null, a number, a nested list, a missing ``captions``) stops the run with one ``T2IError``
naming the shard, the key and the caption's index: turning it into text (``str(None)`` is
"None") would train and tokenize a word nobody wrote. ``t2i preprocess`` drops such captions from
the sources, so rebuilding the image set is the fix. Every reader of captions calls
``check_captions`` (or ``sample_captions`` for a raw sample), so there is one rule and one message.

Capping. Tokenizer training costs more than linearly in the length of a word: ``tokenizers``'
trainers count pairs inside each word and update them after every merge, and a long run of one
letter merges into tokens of 2, 4, 8, ... letters. Measured on a 2-core machine (tokenizers
0.23.3; ``train(kind, 40 ordinary captions + ["a" * N], 300, limits=CaptionLimits(None, None))``;
issue 14's report has the script), for N = 16k, 32k, 64k, 128k: bpe 0.24, 1.09, 4.41, 11.60 s,
wordpiece 0.32, 1.08, 3.76, 9.97 s, with vocabulary entries up to 16,384 (bpe) and 65,536
(wordpiece) letters long; the word tokenizer stays fast but keeps the whole run as one word.
With the default caps every kind takes 0.01 s or less at every N, and no entry is over 48
characters. BpeTrainer's own ``max_token_length=48`` keeps the entries short but not the time
(one run of the bare trainer at 128k: 12.35 s without it, 10.20 s with it): the pair counts are
still taken over the whole word. It is not set at all: it counts byte-level characters (one per UTF-8
byte), so it would also shorten entries of non-ASCII words under the cap, uncounted, and change
tokenizers that nothing was cut from. So the captions are capped here, before any trainer
(bpe, wordpiece, word) sees them, at about 1.2 µs a caption (0.71 s for 591,753 COCO-shaped
captions):

- a caption longer than ``max_caption_chars`` is cut to its first ``max_caption_chars``;
- then a run of more than ``max_word_chars`` non-space characters (a word, with any punctuation
  attached) is cut to its first ``max_word_chars``; so is a run of more than that many spaces,
  which byte-level BPE takes as one pre-token and would merge the same way.

A word over the cap is truncated, not split into pieces: split, a 64,000-letter word becomes
1,333 copies of the same 48-letter piece, and one bad caption would outweigh every real word in
the pair counts; truncated, it counts as one rare word, as a long real word does.

Defaults. ``max_caption_chars = 1000``: the longest caption measured is 247 characters in COCO
val2017's 25,014 and 284 in the 5,430 captions of the 543 CUB text files at hand (of 11,788),
so 1,000 is 3.5x that; it is also about all that DALL·E's 256-token text context holds (~4 characters per
BPE token), so text past it could never reach a model. ``max_word_chars = 48``: the longest
English dictionary word has 45 letters (pneumonoultramicroscopicsilicovolcanoconiosis); the
longest non-space run measured is 25 characters in COCO ("laptops,computer,keyboard") and 18 in
CUB; and WordPiece encodes any word over 100 characters as [UNK], so it could never use a
longer one. Languages written without spaces need a larger ``--max-word-chars``.

Nothing is recorded when nothing is cut: the caps then changed nothing, so the tokenizer (and
its fingerprint) is the one trained without them. When something is cut, the tokenizer's
``source["cut"]`` records the counts and both caps.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import T2IError
from ..manifest import find_manifests, load_manifest
from ..tario import iter_samples

TRAIN_SPLITS = ("train", "train2017")
MAX_CAPTION_CHARS = 1000
MAX_WORD_CHARS = 48
FIX = "rebuild the image set with 't2i preprocess', which drops captions that are not text"


def _describe(value) -> str:
    """A JSON value in a few words, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    kind = {list: "a list", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)
    return f"{kind} {json.dumps(value, ensure_ascii=True)[:40]}"


def check_captions(captions, where: str) -> list[str]:
    """``captions`` if it is a list of str; otherwise one ``T2IError`` naming ``where`` (e.g.
    "SHARD.tar: sample KEY"), the caption's index and the fix. ``None`` means a missing
    ``captions``. An empty list is fine: such a sample keeps its key with no caption rows."""
    if captions is None:
        raise T2IError(f"{where}: its JSON has no 'captions' list (or it is null); {FIX}")
    if not isinstance(captions, list):
        raise T2IError(f"{where}: 'captions' is {_describe(captions)}, not a list of strings; {FIX}")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise T2IError(f"{where}: captions[{i}] is {_describe(c)}, not a string; {FIX}")
    return captions


def sample_captions(sample: dict, shard) -> tuple[list[str], bool]:
    """The checked captions of a raw image-shard sample, and whether its JSON needed repair.

    Invalid UTF-8 is decoded with U+FFFD (the tokenize stage's defined behaviour, counted as
    ``repaired``); JSON that does not parse, a JSON that is not an object, and captions that are
    not a list of str stop with a ``T2IError`` naming the shard and the key."""
    where = f"{shard}: sample {sample['__key__']}"
    raw = sample.get("json")
    if raw is None:
        raise T2IError(f"{where} has no .json with captions; not an image shard set")
    repaired = False
    try:
        try:
            meta = json.loads(raw)
        except UnicodeDecodeError:
            meta, repaired = json.loads(raw.decode("utf-8", errors="replace")), True
    except ValueError as e:
        raise T2IError(f"{where}: unreadable JSON ({e}); {FIX}") from None
    if not isinstance(meta, dict):
        raise T2IError(f"{where}: its JSON is {_describe(meta)}, not an object with 'captions'; {FIX}")
    return check_captions(meta.get("captions"), where), repaired


@dataclass(frozen=True)
class CaptionLimits:
    """Caps applied to captions before a tokenizer is trained (see the module docstring for why
    and for the defaults); ``None`` switches a cap off."""

    max_caption_chars: int | None = MAX_CAPTION_CHARS
    max_word_chars: int | None = MAX_WORD_CHARS

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None (no cap), got {value!r}")


def cut_captions(captions: list[str], limits: CaptionLimits) -> tuple[list[str], dict]:
    """Captions with the caps applied, and what was cut: ``{"captions_truncated": n,
    "words_truncated": m, "max_caption_chars": ..., "max_word_chars": ...}``. Captions under the
    caps come back as the same objects; the result depends on the captions and caps only."""
    cmax, wmax = limits.max_caption_chars, limits.max_word_chars
    long_run = re.compile(rf"\S{{{wmax + 1},}}|\s{{{wmax + 1},}}") if wmax is not None else None
    out, ncap, nword = [], 0, 0
    for c in captions:
        if cmax is not None and len(c) > cmax:
            c, ncap = c[:cmax], ncap + 1
        if long_run is not None and len(c) > wmax:  # a caption no longer than the cap holds no longer run
            c2, k = long_run.subn(lambda m: m.group()[:wmax], c)
            if k:
                c, nword = c2, nword + k
        out.append(c)
    return out, {"captions_truncated": ncap, "words_truncated": nword, "max_caption_chars": cmax, "max_word_chars": wmax}


def training_captions(images: str | Path) -> tuple[list[str], dict]:
    """Every caption of the training split of an image shard set (never the test split), checked,
    and where they came from (digest, dataset, split, count; ``repaired`` if any JSON was not
    UTF-8)."""
    paths = find_manifests(images)
    train = [p for p in paths if load_manifest(p)["split"] in TRAIN_SPLITS]
    if not train:
        found = ", ".join(sorted(load_manifest(p)["split"] for p in paths))
        raise T2IError(f"{images}: no training split here (found {found}); tokenizers train on {' or '.join(TRAIN_SPLITS)} captions only")
    m = load_manifest(train[0])
    captions: list[str] = []
    repaired = 0
    for s in m["shards"]:
        shard = train[0].parent / s["name"]
        for sample in iter_samples(shard):
            caps, fixed = sample_captions(sample, shard)
            captions += caps
            repaired += fixed
    origin = {"digest": m["digest"], "dataset": m["dataset"], "split": m["split"], "captions": len(captions)}
    if repaired:
        origin["repaired"] = repaired
    return captions, origin
