"""CTRS caption variants (t2i_models.caption_variants) on the real CUB captions in $T2I_REALDATA:
exactly m words changed, each within its class, deterministic, re-tokenized with the same
tokenizer; captions without variant m counted; the MD-MNIST mode is eval mdmnist's."""
import json

import numpy as np
import pytest

from t2i_data import text
from t2i_data.errors import T2IError
from t2i_data.mdmnist import SYMBOL_ID
from t2i_data.rng import stream_id
from t2i_data.sources.records import clean_caption_lines
from t2i_data.tokenize import TokenizeConfig, encode_rows
from t2i_models.caption_variants import CLASSES, COLOUR_GROUPS, PART_GROUPS, CubVariants, MdmnistVariants, make_variants, variant_sets, words
from t2i_models.clip_eval import ATTRIBUTES, describe, random_descriptions, variant

M = 6


@pytest.fixture(scope="module")
def cub_captions(realdata):
    """Every caption of the 543 caption files in realdata/cub (AttnGAN text_c10), as the CUB source reads them."""
    files = sorted((realdata / "cub" / "birds" / "text").glob("*/*.txt"))
    if not files:
        pytest.skip(f"no CUB caption files in {realdata}")
    caps = [c for f in files for c in clean_caption_lines(f.read_bytes(), replace_fffd=True)[0]]
    assert len(files) == 543 and len(caps) == 5430
    return caps


@pytest.fixture(scope="module")
def word_tok(cub_captions):
    return text.train("word", cub_captions, None)


def group_of(word: str):
    """(class, group index) of a listed word, found by scanning the lists (not caption_variants' own table)."""
    for cls, groups in CLASSES.items():
        for g, spellings in enumerate(groups):
            if word in spellings:
                return cls, g
    return None


def test_word_lists_are_the_cub_attribute_names_and_their_added_spellings():
    assert [g[0] for g in COLOUR_GROUPS] == ["blue", "brown", "iridescent", "purple", "rufous", "grey", "yellow", "olive", "green", "pink",
                                              "orange", "black", "white", "red", "buff"]  # attributes.txt's 15 colour values, in its order
    assert [g[0] for g in PART_GROUPS] == ["bill", "wing", "upperparts", "underparts", "breast", "back", "tail", "head", "throat", "eye",
                                            "forehead", "nape", "belly", "primary", "leg", "crown"]
    every = [w for groups in CLASSES.values() for g in groups for w in g]
    assert len(every) == len(set(every)) == 15 + 1 + 16 + 7  # gray; beak, beaks, bills, wings, eyes, primaries, legs


def test_variants_change_exactly_m_words_each_within_its_class(cub_captions, word_tok):
    cv = CubVariants(word_tok)
    decoded = [word_tok.decode(ids) for ids in word_tok.encode_batch(cub_captions)]
    changed_classes = {"colour": 0, "part": 0}
    for c, t in enumerate(decoded[:1500]):
        before = words(t)
        variants = cv(t, 3, f"cub-{c:05d}", c % 10, M)
        assert len(variants) == M
        for m, v in enumerate(variants, start=1):
            if cv.count(t) < m:
                assert v is None
                continue
            after = words(v)
            assert len(after) == len(before)  # one word for one word: nothing inserted or dropped
            diff = [p for p, (a, b) in enumerate(zip(before, after)) if a != b]
            assert len(diff) == m, (t, v)
            for p in diff:
                old, new = group_of(before[p]), group_of(after[p])
                assert old is not None and new is not None and old[0] == new[0] and old[1] != new[1], (before[p], after[p])
                assert after[p] == cv.spelling[new[0]][new[1]]  # the group's first spelling the tokenizer knows
                assert word_tok.unk_id not in word_tok.encode_batch([after[p]])[0]
                changed_classes[new[0]] += 1
    assert changed_classes["colour"] > 1000 and changed_classes["part"] > 1000
    assert cv("a gray bird", 0, "k", 0, 1)[0] != "a grey bird"  # grey and gray are one colour: never a change


def test_variants_are_a_function_of_seed_key_caption_and_m(cub_captions, word_tok):
    cv = CubVariants(word_tok)
    t = word_tok.decode(word_tok.encode_batch([cub_captions[0]])[0])  # 4 swappable words
    assert cv.count(t) == 4
    base = cv(t, 0, "cub-00039", 0, 4)
    assert cv(t, 0, "cub-00039", 0, 4) == base and cv(t, 0, "cub-00039", 0, 2) == base[:2]  # m_max does not change variant m
    for other in (cv(t, 1, "cub-00039", 0, 4), cv(t, 0, "cub-00040", 0, 4), cv(t, 0, "cub-00039", 1, 4)):
        assert other != base and all(v is not None for v in other)  # seed, key and caption index each change the draw
    assert t == "the medium sized bird has a dark grey color a black downward curved beak and long wings"
    assert base == ["the medium sized bird has a dark grey color a green downward curved beak and long wings",  # pinned
                    "the medium sized bird has a dark grey color a pink downward curved leg and long wings",
                    "the medium sized bird has a dark green color a buff downward curved beak and long belly",
                    "the medium sized bird has a dark red color a blue downward curved wing and long eye"]


def test_captions_without_variant_m_are_counted_not_padded(cub_captions, word_tok):
    """How many of the 5,430 real captions lack variant m, against an independent count of their
    listed words (the figures in caption_variants' docstring)."""
    cv = CubVariants(word_tok)
    decoded = [word_tok.decode(ids) for ids in word_tok.encode_batch(cub_captions)]
    unknown = {w for groups in CLASSES.values() for g in groups for w in g if word_tok.unk_id in word_tok.encode_batch([w])[0]}
    assert unknown == {"rufous", "upperparts"}  # the only listed words these captions never use
    swappable = [sum(1 for w in words(t) if group_of(w) is not None) for t in decoded]  # every class has other known groups here
    assert [cv.count(t) for t in decoded] == swappable
    without = [sum(1 for n in swappable if n < m) for m in range(1, 9)]
    assert without == [8, 115, 719, 2178, 3542, 4376, 4918, 5172]
    sets = [cv(t, 0, f"k{c}", 0, 8) for c, t in enumerate(decoded)]
    assert [sum(1 for s in sets if s[m - 1] is None) for m in range(1, 9)] == without


def test_only_replacements_the_tokenizer_knows():
    tiny = text.train("word", ["a red bird with a black wing", "a gray bird with a white head"], None)
    cv = CubVariants(tiny)
    assert cv.usable == {"colour": [5, 11, 12, 13], "part": [1, 7]}  # grey (as gray), black, white, red; wing, head
    assert cv.spelling["colour"][5] == "gray"  # "grey" is unknown to it
    t = "a rufous bird with a blue tail"  # unknown words may be swapped out, never in
    assert cv.count(t) == 3
    variants = cv(t, 0, "k", 0, 4)
    assert variants[3] is None
    for v in variants[:3]:
        assert set(words(v)) - set(words(t)) <= {"gray", "black", "white", "red", "wing", "head"}
    assert cv.count("a red wing") == 2 and cv.count("a red head and wing") == 3
    assert cv("Red bird", 0, "k", 0, 1)[0].split()[0] in ("Gray", "Black", "White")  # the capital is kept
    only = CubVariants(text.train("word", ["a red bird"], None))
    assert only.count("a red bird with a blue tail") == 1  # red is the only colour it knows: blue -> red; nothing else for red or tail


def test_variants_are_retokenized_with_the_same_tokenizer_and_settings(cub_captions, word_tok):
    cfg = TokenizeConfig(length=12, add_bos=True, add_eos=True)
    rows, _ = encode_rows(word_tok, cub_captions[:40], cfg, "int64")
    texts = [word_tok.decode(r.tolist()) for r in rows]
    cv = CubVariants(word_tok)
    keys, js = [f"cub-{i:05d}" for i in range(40)], [i % 10 for i in range(40)]
    sets, present, var, truncated = variant_sets(cv, word_tok, cfg, rows, texts, keys, js, 5, 4)
    assert sets.shape == (40, 5, 12) and (sets[:, 0] == rows).all()
    for r in range(40):
        for m in range(1, 5):
            assert present[r, m] == (var[r][m - 1] is not None) == (cv.count(texts[r]) >= m)
            want = encode_rows(word_tok, [var[r][m - 1]], cfg, "int64")[0][0] if present[r, m] else rows[r]  # absent: the true row, masked
            assert (sets[r, m] == want).all()
            if present[r, m]:
                assert sets[r, m, 0] == word_tok.bos_id and (sets[r, m] != rows[r]).sum() == m  # a word is a token here
    assert truncated.tolist() == [0, 0, 0, 0]  # the texts were cut to 10 words already; a swap keeps the word count


def test_mdmnist_mode_is_eval_mdmnists_variant():
    symbols = random_descriptions(2, np.arange(20))
    mv = make_variants("mdmnist", None)
    for i, s in enumerate(symbols):
        got = mv(describe(s), 9, f"mdmnist-test-{i:08d}", 0, 12)
        idx = np.array([stream_id("caption-variants", "mdmnist", f"mdmnist-test-{i:08d}", 0)], dtype=np.uint64)
        assert got == [describe(variant(s[None], 9, "caption-variants", idx, m)[0]) for m in range(1, 13)]
        for m, v in enumerate(got, start=1):
            ids = np.array([SYMBOL_ID[w] for w in v.split()])
            assert (ids != s).sum() == m and all(ids[p] in ATTRIBUTES[p % 4] for p in range(12))
    with pytest.raises(T2IError, match="not a 12-symbol MD-MNIST description; --variants mdmnist is for MD-MNIST captions"):
        mv("a red bird", 0, "k", 0, 12)
    with pytest.raises(T2IError, match="m_max must be in 1..12"):
        mv(describe(symbols[0]), 0, "k", 0, 13)
    with pytest.raises(T2IError, match="--variants must be one of cub, mdmnist, got 'coco'"):
        make_variants("coco", None)
    assert isinstance(make_variants("cub", text.train("word", ["a red bird"], None)), CubVariants)
    assert MdmnistVariants.default_m_max == 12 and CubVariants.default_m_max == 4
    json.dumps(CubVariants(text.train("word", ["a red bird"], None)).describe())  # the report's record is JSON
