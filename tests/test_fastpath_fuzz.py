"""The pure-Python fast path (t2i_data/text/fastpath.py) equals the Rust tokenizer id for id.

20,000 seeded random printable-ASCII strings, built around what the fast path's regular
expressions must get right: contractions ('s 't 're 've 'm 'll 'd, in upper and title case
too), digit runs, punctuation runs, runs of spaces, leading and trailing spaces, spelled special
tokens, and words past WordPiece's 100-character limit. For trained BPE and WordPiece always;
GPT-2, CLIP and BERT from $T2I_REALDATA/vocab (skipped without them).
"""
import json
import logging
import random
import string

import pytest

from t2i_data.text import fastpath, load_pretrained, load_tokenizer, train

N_FUZZ = 20_000
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
SPELLED = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[BOS]", "[EOS]", "<|endoftext|>", "<|startoftext|>", "<pad>", "<unk>",
           "<sos>", "<eos>", "<bos>", "<s>", "</s>", "</w>", "##", "##s", "[pad]", "[Pad]", "<|ENDOFTEXT|>", "<PAD>"]
CORPUS = [
    "a small bird with a red crown and white belly", "the bird has long black wings and a short beak",
    "a man riding a wave on top of a surfboard", "two dogs playing with a frisbee in the park",
    "it's a plate of food with broccoli and rice, isn't it?", "3 cats and 12 birds; they'll sit on 2 benches",
] * 40


def _piece(rng: random.Random) -> str:
    k = rng.randrange(8)
    if k == 0:
        c = rng.choice(CONTRACTIONS)
        return rng.choice((c, c.upper(), c.title()))
    if k == 1:
        return "".join(rng.choices(string.digits, k=rng.randint(1, 12)))
    if k == 2:
        return "".join(rng.choices(string.punctuation, k=rng.randint(1, 6)))
    if k == 3:
        return " " * rng.randint(1, 5)
    if k == 4:
        return rng.choice(SPELLED)
    n = rng.choice((1, 2, 3, 4, 5, 6, 8, 12)) if rng.random() < 0.97 else rng.randint(95, 130)
    word = "".join(rng.choices(string.ascii_lowercase if k < 7 else string.ascii_letters, k=n))
    return word.upper() if rng.random() < 0.1 else word


def fuzz_strings(n: int = N_FUZZ, seed: int = 0) -> list[str]:
    """Deterministic for (n, seed): pieces glued with or without a space, some strings padded
    with spaces at either end; every string printable ASCII (the fast path's domain)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = "".join(_piece(rng) + (" " if rng.random() < 0.5 else "") for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.2:
            text = " " * rng.randint(1, 3) + text
        if rng.random() < 0.2:
            text += " " * rng.randint(1, 3)
        out.append(text)
    return out


@pytest.fixture(scope="module")
def fuzz():
    return fuzz_strings()


def test_fuzz_strings_are_seeded_printable_ascii_and_cover_each_stress(fuzz):
    assert fuzz_strings(500, seed=0) == fuzz[:500] and fuzz_strings(500, seed=1) != fuzz[:500]
    assert len(fuzz) == N_FUZZ and all(t.isascii() and t.isprintable() for t in fuzz)
    count = lambda pred: sum(map(pred, fuzz))  # noqa: E731
    for c in CONTRACTIONS:
        assert count(lambda t: c in t) > 300 and count(lambda t: c.upper() in t) > 300
    assert count(lambda t: any(s in t for s in ("[PAD]", "<|endoftext|>", "[CLS]", "<pad>"))) > 2000
    assert count(lambda t: any(len(r) >= 6 for r in t.split() if r.isdigit())) > 1000
    assert count(lambda t: "   " in t) > 2000 and count(lambda t: t.startswith(" ")) > 3000 and count(lambda t: t.endswith(" ")) > 3000
    assert count(lambda t: any(len(w) > 100 for w in t.split())) > 100 and count(lambda t: t == "") > 100


def _makers() -> tuple[dict, object]:
    from conftest import realdata_dir

    makers = {"bpe": lambda: train("bpe", CORPUS, 300), "wordpiece": lambda: train("wordpiece", CORPUS, 200)}
    vocab = realdata_dir() / "vocab"
    if (vocab / "gpt2" / "vocab.json").is_file():
        makers.update({
            "gpt2": lambda: load_pretrained("bpe", vocab / "gpt2"),
            "clip": lambda: load_pretrained("bpe", vocab / "clip" / "bpe_simple_vocab_16e6.txt.gz"),
            "bert": lambda: load_pretrained("wordpiece", vocab / "bert-base-uncased" / "vocab.txt"),
        })
    return makers, vocab


@pytest.mark.parametrize("name", ["bpe", "wordpiece", "gpt2", "clip", "bert"])
def test_fast_path_equals_rust_id_for_id(name, fuzz, tmp_path, caplog):
    makers, vocab = _makers()
    if name not in makers:
        pytest.skip(f"no tokenizer vocabularies in {vocab} (set T2I_REALDATA) for {name}")
    makers[name]().save(tmp_path)
    tok = load_tokenizer(tmp_path)  # the saved form, as t2i tokenize uses it
    with caplog.at_level(logging.INFO, logger=fastpath.__name__):
        fast = tok.encode_batch(fuzz)
    assert tok._fast.split is not None and tok._fast.off == "", f"fast path is off: {tok._fast.off}"
    assert not caplog.records
    rust = tok.encode_batch_rust(fuzz)
    bad = [(t, f, r) for t, f, r in zip(fuzz, fast, rust) if f != r]
    assert not bad, f"{len(bad)} of {len(fuzz)} differ; first: {bad[0]}"
    assert tok.encode_batch(fuzz[:100]) == fast[:100]  # cached pre-tokens give the same ids again


def test_fast_path_logs_once_why_it_is_off_for_an_unknown_pipeline(tmp_path, caplog):
    from tokenizers import normalizers

    tok = train("bpe", CORPUS, 300)
    tok.tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Lowercase()])  # not a shipped pipeline
    with caplog.at_level(logging.INFO, logger=fastpath.__name__):
        for _ in range(3):
            ids = tok.encode_batch(["a small bird", "  Two dogs  "])
    assert ids == tok.encode_batch_rust(["a small bird", "  Two dogs  "])
    [rec] = caplog.records
    assert rec.levelno == logging.INFO and "fast path off" in rec.getMessage() and "not one of the shipped pipelines" in rec.getMessage()
    assert "Strip" in tok._fast.off or "Sequence" in tok._fast.off


def test_fast_path_switches_itself_off_with_a_warning_when_its_self_check_fails(monkeypatch, caplog):
    tok = train("bpe", CORPUS, 300)
    real = fastpath.splitter(json.loads(tok.tok.to_str()))
    monkeypatch.setattr(fastpath, "splitter", lambda spec: ((lambda text: text.split()), real[1]))  # drops the spaces
    texts = ["a small bird", "it's 12 dogs"]
    with caplog.at_level(logging.INFO, logger=fastpath.__name__):
        assert tok.encode_batch(texts) == tok.encode_batch_rust(texts)
        tok.encode_batch(texts)
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING and "self-check differs from tokenizers" in rec.getMessage()
    assert tok._fast.split is None


def test_fast_path_is_off_and_says_so_for_added_tokens_that_are_not_special(caplog):
    tok = train("wordpiece", CORPUS, 200)
    tok.tok.add_tokens(["brisket"])
    with caplog.at_level(logging.INFO, logger=fastpath.__name__):
        assert tok.encode_batch(["a brisket bird"]) == tok.encode_batch_rust(["a brisket bird"])
    assert "not special" in tok._fast.off and len(caplog.records) == 1
