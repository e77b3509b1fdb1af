"""Issue 14: what a caption can cost a tokenizer trainer is bounded, and a caption that is not a
str stops every reader of image shards with one message (never ``str(None)`` = "None")."""
import json
from functools import partial

import numpy as np
import pytest

from t2i_models.cli import main
from t2i_data.digest import canonical_json
from t2i_data.errors import T2IError
from t2i_data.pngio import encode_png
from t2i_data.runner import InProcessRunner
from t2i_data.build import build_shard_set
from t2i_data.text import CaptionLimits, check_captions, cut_captions, load_tokenizer, train
from t2i_data.text.captions import MAX_CAPTION_CHARS, MAX_WORD_CHARS

NORMAL = [
    "a small bird with a red crown and white belly",
    "the bird has long black wings and a short beak",
    "a man riding a wave on top of a surfboard",
    "two dogs playing with a frisbee in the park",
    "a plate of food with broccoli and rice",
    "a red bus parked next to a tall building",
    "a cat sleeping on a blue couch",
    "a giraffe standing in a grassy field",
] * 5
HUGE = "a" * 64_000  # one caption, no space: over both caps
LONG_WORD = "the " + "b" * 10_000 + " end"  # one word over the word cap, caption over the caption cap
VOCAB = {"bpe": 300, "wordpiece": 300, "word": None}


def entry_text(tok, entry: str) -> str:
    """A vocabulary entry as the letters it stands for (no byte-level space mark, no ##)."""
    if tok.kind == "bpe":
        return tok.tok.decoder.decode([entry]).strip()
    return entry.removeprefix("##")


def vocabulary(tok) -> list[str]:
    return list(tok.itos) if tok.kind == "word" else list(tok.tok.get_vocab())


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "word"])
def test_caps_bound_the_vocabulary_and_record_the_cut(kind, tmp_path):
    caps = NORMAL + [HUGE, LONG_WORD]
    fps = {train(kind, caps, VOCAB[kind]).save(tmp_path / f"run{i}") for i in range(2)}
    assert len(fps) == 1  # deterministic
    tok = load_tokenizer(tmp_path / "run0")
    longest = max(len(entry_text(tok, e)) for e in vocabulary(tok))
    assert longest <= MAX_WORD_CHARS
    meta = json.loads((tmp_path / "run0" / "t2i_tokenizer.json").read_text())
    assert meta["source"]["cut"] == {"captions_truncated": 2, "words_truncated": 2,
                                     "max_caption_chars": MAX_CAPTION_CHARS, "max_word_chars": MAX_WORD_CHARS}
    # without the caps a long run goes into the vocabulary (2,000 letters here: 64,000 costs seconds)
    raw = train(kind, NORMAL + ["a" * 2000], VOCAB[kind], limits=CaptionLimits(None, None))
    assert max(len(entry_text(raw, e)) for e in vocabulary(raw)) >= 256 and "cut" not in raw.source


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "word"])
def test_captions_under_the_caps_give_the_tokenizer_trained_without_them(kind, tmp_path):
    capped = train(kind, NORMAL, VOCAB[kind]).save(tmp_path / "capped")
    assert train(kind, NORMAL, VOCAB[kind], limits=CaptionLimits(None, None)).save(tmp_path / "free") == capped
    assert "cut" not in load_tokenizer(tmp_path / "capped").source


def test_cut_truncates_words_and_space_runs_and_counts_them():
    caps = ["short one", "x" * 30 + " " + "y" * 12, "keep " + "z" * 9 + " tail", "a" + " " * 20 + "b", "w" * 40]
    out, cut = cut_captions(caps, CaptionLimits(max_caption_chars=35, max_word_chars=8))
    assert out == ["short one", "x" * 8 + " " + "y" * 4, "keep " + "z" * 8 + " tail", "a" + " " * 8 + "b", "w" * 8]
    assert cut == {"captions_truncated": 2, "words_truncated": 4, "max_caption_chars": 35, "max_word_chars": 8}
    assert out[0] is caps[0]  # untouched captions are the same objects
    with pytest.raises(ValueError, match="max_word_chars"):
        CaptionLimits(max_word_chars=0)


def test_check_captions_names_the_place_the_index_and_the_fix():
    assert check_captions(["a", "b"], "s.tar: sample k") == ["a", "b"] and check_captions([], "x") == []
    for bad, said in ((["ok", None], "captions[1] is null"), ([3.5], "captions[0] is the number 3.5"),
                      (["ok", "ok", ["a"]], "captions[2] is a list"), ("a bird", "'captions' is a string"),
                      (None, "no 'captions' list")):
        with pytest.raises(T2IError) as e:
            check_captions(bad, "s.tar: sample k")
        assert str(e.value).startswith("s.tar: sample k: ") and said in str(e.value) and "t2i preprocess" in str(e.value)


# -- image shards with a bad caption stop tokenize, export and tokenizer train -----------------
PNG = encode_png(np.zeros((4, 4, 3), np.uint8))
KEY_BAD = "x-000000000003"


def produce(bad, index: int):
    for i in range(index * 4, index * 4 + 4):
        meta = {"captions": ["a red bird", "a small bird"], "split": "train"}
        key = f"x-{i:012d}"
        if key == KEY_BAD:
            if bad == "missing":
                del meta["captions"]
            else:
                meta["captions"][1] = bad
        yield {"__key__": key, "png": PNG, "json": canonical_json(meta)}


def image_set(root, bad):
    ident = {"kind": "images", "dataset": "x", "split": "train", "regime": None, "size": None, "config": {}, "seed": 0,
             "sources": {}, "aligned_to": None, "encoder": {}}
    build_shard_set(partial(produce, bad), root, "x-train", [4, 4], ident, InProcessRunner())
    return root


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train("word", NORMAL, None).save(folder)
    return folder


@pytest.mark.parametrize("bad,said", [(None, "captions[1] is null"), (7, "captions[1] is the number 7"),
                                      (["a", "b"], "captions[1] is a list"), ("missing", "no 'captions' list")])
def test_a_caption_that_is_not_a_string_stops_every_reader(bad, said, word_tokenizer, tmp_path, capsys):
    images = image_set(tmp_path / "images", bad)
    shard = str(images / "x-train-000000.tar")
    runs = {
        "tokenize": ["tokenize", "--tokenizer", str(word_tokenizer), "--images", str(images), "--out", str(tmp_path / "tt"),
                     "--length", "8", "--workers", "0"],
        "export": ["export", str(images), "--out", str(tmp_path / "ex")],
        "tokenizer train": ["tokenizer", "train", "--kind", "word", "--images", str(images), "--out", str(tmp_path / "tk")],
    }
    for name, argv in runs.items():
        assert main(["-q", *argv]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("t2i: error: "), (name, err)
        assert f"{shard}: sample {KEY_BAD}: " in err[0] and said in err[0] and "t2i preprocess" in err[0], (name, err)
    assert not (tmp_path / "tk").exists() and not (tmp_path / "ex").exists()


def test_cli_train_caps_are_flags_printed_and_recorded(tmp_path, capsys):
    images = image_set(tmp_path / "images", "z" * 300)  # one caption of 300 letters
    argv = ["tokenizer", "train", "--kind", "word", "--images", str(images)]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "16 training captions; cut before training: 0 captions over 1,000 characters, 1 words over 48 characters" in out
    meta = json.loads((tmp_path / "d" / "t2i_tokenizer.json").read_text())
    assert meta["source"]["cut"] == {"captions_truncated": 0, "words_truncated": 1, "max_caption_chars": 1000, "max_word_chars": 48}
    assert meta["source"]["trained_on"]["captions"] == 16
    assert main([*argv, "--out", str(tmp_path / "s"), "--max-caption-chars", "100", "--max-word-chars", "0"]) == 0
    assert "1 captions over 100 characters, 0 words (no cap)" in capsys.readouterr().out
    assert "z" * 100 in load_tokenizer(tmp_path / "s").itos
    assert main([*argv, "--out", str(tmp_path / "n"), "--max-word-chars", "-1"]) == 2
    assert "--max-word-chars must be 0 (no cap) or more, got -1" in capsys.readouterr().err
