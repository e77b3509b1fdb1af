"""Caption variants for CTRS (thesis §4.3.3): variant m of a caption has exactly m words changed,
each to another word of its own class, so that a CLIP which reads the caption ranks the true one
above its variants, and the more so the larger m.

The thesis built its variants only for MD-MNIST, where every description has 12 attributes, and
left real captions open: "we will need a set of rules, that will define how text is modified ...
the adjectives have to be replaced with adjectives" (§4.3.3). Two modes, one table (``VARIANTS``):

- ``cub``: colour words are swapped for other colour words and bird-part words for other
  bird-part words. The classes are the CUB-200-2011 attribute names (``attributes/attributes.txt``
  of the dataset, Wah et al. 2011: 312 attributes ``has_<part>_<aspect>::<value>``; that folder is
  not in ``realdata/cub``, so the lists are written here):
  colours: the 15 values every ``has_<part>_color`` attribute takes (blue, brown, iridescent,
  purple, rufous, grey, yellow, olive, green, pink, orange, black, white, red, buff); parts: the
  parts those attributes name (bill, wing, upperparts, underparts, breast, back, upper_tail,
  under_tail, head, throat, eye, forehead, nape, belly, primary, leg, crown) and ``tail`` (from
  ``has_tail_shape`` / ``has_tail_pattern``). Spellings added, each in its concept's group so that a
  swap between spellings of one concept never counts as a change: ``gray`` (grey: the AttnGAN
  captions write both, 601 and 928 times in the 543 caption files of ``realdata``), ``beak``,
  ``beaks``, ``bills`` (bill: ``beak`` is the commonest word for it there, 2,050 against 1,925),
  and the plurals ``wings``, ``eyes``, ``legs``, ``primaries`` (parts that come in pairs or sets,
  written mostly in the plural: wings 1,240 against wing 210). ``upper_tail`` and ``under_tail``
  are two-word names that the captions do not use; their head noun ``tail`` stands for them, so a
  variant changes whole single words only. Anatomical synonyms that are no attribute name (chest,
  feet, tarsus, crest, rump, ...) are left alone: which of them equal which part is a judgement
  the attribute list does not make. A word matches case-insensitively as a whole ``[A-Za-z]+`` run.
- ``mdmnist``: the 12 description symbols, changed exactly as ``clip_eval.variant`` changes them
  (the ``eval mdmnist`` variants), keyed by the caption instead of a description index.

Words, not tokens: a mode works on the caption's text, which ``eval_priors`` takes from the
tokenizer's decode of the stored row (the text the priors were given, truncation included; the
evaluation has no image shards to read captions from), and each variant is re-tokenized with the
same tokenizer and settings (``eval_priors.tokenize``). A replacement is spelled by the first
spelling of its group that the tokenizer encodes without its unknown id, and a group with no such
spelling is never a replacement (a word tokenizer trained on the train split may not know
``rufous``): otherwise a swap between two unknown words would change no token.

Determinism: variant m of caption (key, j) is a pure function of (seed, key, j, m): the m changed
words are the first m of a keyed random permutation of the caption's swappable words (distinct
positions, drawn from (seed, key, j, m)), and each takes a uniformly drawn other group of its class
(drawn from the same coordinates). A caption with fewer than m swappable words has no variant m
(``None``); the evaluation counts those captions per m and never pads a set.

How many variants a CUB caption has: of the 5,430 captions in ``realdata/cub`` (543 images),
through a word tokenizer trained on them (which knows every listed word but ``rufous`` and
``upperparts``), the share with at least m swappable words is, for m = 1..8: 99.9%, 97.9%, 86.8%,
59.9%, 34.8%, 19.4%, 9.4%, 4.8%. The default M = 4 (``CUB_M_MAX``) is the largest m that most
captions reach; ``m_max`` in ``[eval_priors]`` changes it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from t2i_data.errors import T2IError
from t2i_data.mdmnist import SYMBOL_ID
from t2i_data.rng import keyed_u64, stream_id
from t2i_data.tokenize import TokenizeConfig, encode_rows

from .clip_eval import M_MAX as MDMNIST_M_MAX
from .clip_eval import describe, variant

# CUB-200-2011 attributes.txt: the 15 values of every has_<part>_color attribute; "gray" added to grey's group
COLOUR_GROUPS = (("blue",), ("brown",), ("iridescent",), ("purple",), ("rufous",), ("grey", "gray"), ("yellow",), ("olive",),
                 ("green",), ("pink",), ("orange",), ("black",), ("white",), ("red",), ("buff",))
# the parts of has_<part>_color (upper_tail / under_tail as "tail") and has_tail_*; beak, beaks, bills and plurals added
PART_GROUPS = (("bill", "beak", "beaks", "bills"), ("wing", "wings"), ("upperparts",), ("underparts",), ("breast",), ("back",),
               ("tail",), ("head",), ("throat",), ("eye", "eyes"), ("forehead",), ("nape",), ("belly",), ("primary", "primaries"),
               ("leg", "legs"), ("crown",))
CLASSES = {"colour": COLOUR_GROUPS, "part": PART_GROUPS}
ADDED_SPELLINGS = ("gray", "beak", "beaks", "bills", "wings", "eyes", "legs", "primaries")
WORD = re.compile(r"[A-Za-z]+")
CUB_M_MAX = 4  # default variants per caption (module docstring: 60% of real CUB captions have all four)


@dataclass(frozen=True)
class Slot:
    """A swappable word of a caption: its character span, its class and its group's index there."""
    start: int
    end: int
    word: str
    cls: str
    group: int


def _lookup() -> dict[str, tuple[str, int]]:
    table = {}
    for cls, groups in CLASSES.items():
        for g, spellings in enumerate(groups):
            for w in spellings:
                if w in table:
                    raise AssertionError(f"{w!r} is listed twice")  # a fault of the lists above, not of input
                table[w] = (cls, g)
    return table


LOOKUP = _lookup()


def swappable_words(text: str) -> list[Slot]:
    """The words of ``text`` that are colour or bird-part words (any listed spelling, any case), in order."""
    out = []
    for m in WORD.finditer(text):
        hit = LOOKUP.get(m.group().lower())
        if hit is not None:
            out.append(Slot(m.start(), m.end(), m.group(), hit[0], hit[1]))
    return out


def words(text: str) -> list[str]:
    """The ``[A-Za-z]+`` words of a text, lowercased (what a variant changes, and what tests compare)."""
    return [w.lower() for w in WORD.findall(text)]


class CubVariants:
    """Colour and bird-part swaps (module docstring) for captions of one tokenizer."""

    kind = "cub"
    default_m_max = CUB_M_MAX

    def __init__(self, tok) -> None:
        def known(w: str) -> bool:
            ids = tok.encode_batch([w])[0]
            return bool(ids) and (tok.unk_id is None or tok.unk_id not in ids)

        # per class, per group: the spelling a replacement takes (None: the tokenizer knows none of them)
        self.spelling = {cls: [next((w for w in groups[g] if known(w)), None) for g in range(len(groups))] for cls, groups in CLASSES.items()}
        self.usable = {cls: [g for g, w in enumerate(sp) if w is not None] for cls, sp in self.spelling.items()}

    def describe(self) -> dict:
        """The word lists as used with this tokenizer (for the report)."""
        return {"source": "CUB-200-2011 attributes.txt: has_<part>_color values (colours) and parts; see caption_variants",
                "colours": [list(g) for g in COLOUR_GROUPS], "parts": [list(g) for g in PART_GROUPS], "added_spellings": list(ADDED_SPELLINGS),
                "unknown_to_tokenizer": sorted("/".join(CLASSES[c][g]) for c, sp in self.spelling.items() for g, w in enumerate(sp) if w is None)}

    def slots(self, text: str) -> list[Slot]:
        """The caption's swappable words: listed words whose class has another group the tokenizer knows."""
        return [s for s in swappable_words(text) if any(g != s.group for g in self.usable[s.cls])]

    def count(self, text: str) -> int:
        """How many variants the caption can have: its number of swappable words."""
        return len(self.slots(text))

    def __call__(self, text: str, seed: int, key: str, caption: int, m_max: int) -> list[str | None]:
        """Variants m = 1..m_max of caption ``caption`` of sample ``key`` (its text ``text``): a list
        of m_max texts, ``None`` where the caption has fewer than m swappable words."""
        if m_max < 1:
            raise T2IError(f"m_max must be >= 1 (variants per caption), got {m_max}")
        slots = self.slots(text)
        sid = stream_id("caption-variants", "cub", key, caption)
        pos = np.arange(len(slots), dtype=np.uint64)
        out: list[str | None] = []
        for m in range(1, m_max + 1):
            if m > len(slots):
                out.append(None)
                continue
            chosen = np.argsort(keyed_u64(seed, sid, pos, 2 * m), kind="stable")[:m]
            draws = keyed_u64(seed, sid, pos, 2 * m + 1)
            new = text
            for p in sorted(chosen.tolist(), key=lambda i: -slots[i].start):  # right to left: earlier spans stay valid
                s = slots[p]
                others = [g for g in self.usable[s.cls] if g != s.group]
                g = others[int((int(draws[p]) >> 32) * len(others) >> 32)]  # multiply-shift, as rng.uniform_int
                word = self.spelling[s.cls][g]
                word = word.capitalize() if s.word[:1].isupper() else word
                new = new[: s.start] + word + new[s.end :]
            out.append(new)
        return out


class MdmnistVariants:
    """The MD-MNIST variants (``clip_eval.variant``) of a caption that is a 12-symbol description."""

    kind = "mdmnist"
    default_m_max = MDMNIST_M_MAX

    def __init__(self, tok=None) -> None:
        pass

    def describe(self) -> dict:
        return {"source": "clip_eval.variant: m of the 12 symbols changed, each to another value of its attribute"}

    def count(self, text: str) -> int:
        """Every description has 12 changeable symbols."""
        return MDMNIST_M_MAX

    def __call__(self, text: str, seed: int, key: str, caption: int, m_max: int) -> list[str | None]:
        """Variants m = 1..m_max (at most 12) of a description given as text ("2 40 b down ..."); every one exists."""
        if not 1 <= m_max <= MDMNIST_M_MAX:
            raise T2IError(f"m_max must be in 1..{MDMNIST_M_MAX} for MD-MNIST descriptions, got {m_max}")
        sym = text.split()
        if len(sym) != MDMNIST_M_MAX or any(w not in SYMBOL_ID for w in sym):
            raise T2IError(f"caption {caption} of {key}: {text!r} is not a 12-symbol MD-MNIST description; --variants mdmnist is for "
                           f"MD-MNIST captions (CUB captions take --variants cub)")
        symbols = np.array([[SYMBOL_ID[w] for w in sym]], dtype=np.int64)
        idx = np.array([stream_id("caption-variants", "mdmnist", key, caption)], dtype=np.uint64)
        return [describe(variant(symbols, seed, "caption-variants", idx, m)[0]) for m in range(1, m_max + 1)]


def variant_sets(maker, tok, cfg: TokenizeConfig, rows: np.ndarray, texts, keys, js, seed: int, m_max: int):
    """CTRS text sets for b captions: their stored rows (b, L), texts, keys and caption indices →
    (sets (b, 1 + M, L) int64: the true row, then variants m = 1..M re-tokenized with ``tok`` and
    ``cfg``, the settings of the stored rows; present (b, 1 + M) bool; the variant texts (b, M),
    None where absent; truncated (M,) int64: variants longer than L and cut, per m). An absent
    variant's row holds the true row as a placeholder that ``present`` masks (never scored)."""
    var = [maker(t, seed, k, j, m_max) for t, k, j in zip(texts, keys, js)]
    present = np.ones((len(rows), 1 + m_max), dtype=bool)
    present[:, 1:] = [[v is not None for v in vs] for vs in var]
    sets = np.repeat(rows[:, None, :], 1 + m_max, axis=1).astype(np.int64)
    where = np.argwhere(present[:, 1:])
    truncated = np.zeros(m_max, dtype=np.int64)
    if len(where):
        enc, stats = encode_rows(tok, [var[r][m] for r, m in where], cfg, "int64")
        sets[where[:, 0], where[:, 1] + 1] = enc
        room = cfg.length - cfg.add_bos - cfg.add_eos
        np.add.at(truncated, where[:, 1], np.array(stats["lengths"]) > room)
    return sets, present, var, truncated


VARIANTS = {"cub": CubVariants, "mdmnist": MdmnistVariants}


def make_variants(kind: str, tok):
    """The variant maker of mode ``kind`` for tokenizer ``tok``; ``T2IError`` naming the modes for another kind."""
    if kind not in VARIANTS:
        raise T2IError(f"--variants must be one of {', '.join(VARIANTS)}, got {kind!r}")
    return VARIANTS[kind](tok)


__all__ = ["COLOUR_GROUPS", "PART_GROUPS", "CLASSES", "ADDED_SPELLINGS", "VARIANTS", "CubVariants", "MdmnistVariants", "Slot",
           "make_variants", "swappable_words", "variant_sets", "words"]
