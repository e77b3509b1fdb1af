"""A saved tokenizer folder reopens in `tokenizers` and `transformers` with t2i's ids.

For every kind, trained and loaded: ``tokenizers.Tokenizer.from_file(DIR/tokenizer.json)`` and
``transformers.AutoTokenizer.from_pretrained(DIR, local_files_only=True)`` give the ids of
``load_tokenizer(DIR).encode_batch`` on the fuzz strings of test_fastpath_fuzz.py, on awkward
Unicode, and on the real COCO and CUB captions; transformers' pad, BOS, EOS and UNK ids are
t2i's; and the fingerprint is the one the folder had before the interop files existed
(interop.py: why). GPT-2, CLIP, BERT and the captions come from $T2I_REALDATA (skipped without).
"""
import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from t2i_data.errors import T2IError
from t2i_data.text import load_pretrained, load_tokenizer, train
from t2i_data.text.base import META_NAME, folder_fingerprint
from t2i_data.tokenize import TokenizeConfig, encode_rows

from conftest import realdata_dir
from test_fastpath_fuzz import CORPUS, fuzz_strings

VOCAB = realdata_dir() / "vocab"
UNICODE = [
    "", " ", "café crème brûlée", "a 猫 sitting next to a 🐦", "ǅungla İstanbul ﬁsh ß", "x²³ ½ ① a_b __init__",
    "e\u0301 n\u0303", "a\u00a0b\u2003c\u3000d", "a\x1cb\x1dc\x1ed\x1fe", "line\nbreak\ttab\rret", "a\u200bb\u2028c\u0085d", "\ufffd\ufffdbird",
    "[PAD] red", "<|endoftext|> <|startoftext|>", "<pad> <unk> <sos> <eos> <bos> <<pad>>", "4 30 g down 8 40 b up", "4\u00a030\x1cg",
    "ΑΒΓ δεζ", "x" * 300, "\x00nul\x7fdel", "😀😀 ok", "ＦＵＬＬ ｗｉｄｔｈ",
]
GPT2_DIR, CLIP_GZ, BERT_DIR = VOCAB / "gpt2", VOCAB / "clip" / "bpe_simple_vocab_16e6.txt.gz", VOCAB / "bert-base-uncased"


def _need_vocab():
    if not (GPT2_DIR / "vocab.json").is_file():
        pytest.skip(f"no tokenizer vocabularies in {VOCAB} (set T2I_REALDATA)")


def _tokenizer_json_file(tmp: Path) -> Path:
    """A tokenizer.json as another tool writes one: the trained BPE's full pipeline, specials included."""
    path = tmp / "elsewhere" / "tokenizer.json"
    path.parent.mkdir(parents=True)
    path.write_text(train("bpe", CORPUS, 300).tok.to_str())
    return path


def _specials_past_vocab(tmp: Path) -> Path:
    """A tokenizer.json whose special tokens are added after the model's vocabulary (not in it):
    tokenizers alone does not know their ids, transformers gives them the ids t2i has."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    path = tmp / "past" / "tokenizer.json"
    path.parent.mkdir(parents=True)
    tok.save(str(path))
    return path


def _t2i_folder(tmp: Path) -> Path:
    folder = tmp / "t2i-wordpiece"
    train("wordpiece", CORPUS, 200).save(folder)
    return folder


MAKERS = {
    "bpe": lambda tmp: train("bpe", CORPUS, 300),
    "wordpiece": lambda tmp: train("wordpiece", CORPUS, 200),
    "word": lambda tmp: train("word", CORPUS, None),
    "mdmnist": lambda tmp: load_pretrained("mdmnist", None),
    "bpe-tokenizer.json": lambda tmp: load_pretrained("bpe", _tokenizer_json_file(tmp)),
    "bpe-specials-past-vocab": lambda tmp: load_pretrained("bpe", _specials_past_vocab(tmp)),
    "wordpiece-t2i-folder": lambda tmp: load_pretrained("wordpiece", _t2i_folder(tmp)),  # a saved folder, through transformers
    "gpt2": lambda tmp: (_need_vocab(), load_pretrained("bpe", GPT2_DIR))[1],
    "clip": lambda tmp: (_need_vocab(), load_pretrained("bpe", CLIP_GZ))[1],
    "bert-vocab.txt": lambda tmp: (_need_vocab(), load_pretrained("wordpiece", BERT_DIR / "vocab.txt"))[1],
    "bert-folder": lambda tmp: (_need_vocab(), load_pretrained("wordpiece", BERT_DIR))[1],
}


@pytest.fixture(scope="module")
def fuzz():
    return fuzz_strings()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            tmp = tmp_path_factory.mktemp(name.replace(".", "-"))
            fp = MAKERS[name](tmp).save(tmp / "tok")
            cache[name] = (tmp / "tok", fp)
        return cache[name]

    return get


@lru_cache(maxsize=None)
def reopened(folder: Path):
    """The folder as the two libraries open it (once per folder: loading GPT-2 takes seconds)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def assert_same_ids(ours, texts, where):
    for tool, got in where.items():
        bad = [(t, o, g) for t, o, g in zip(texts, ours, got) if o != g]
        assert not bad, f"{tool}: {len(bad)} of {len(texts)} differ from t2i; first: {bad[0]}"


@pytest.mark.parametrize("name", list(MAKERS))
def test_saved_folder_reopens_with_t2i_ids_and_special_ids(name, saved, fuzz):
    folder, fp = saved(name)
    tok = load_tokenizer(folder)
    raw, hf = reopened(folder)
    # word and mdmnist run pipelines built for the other libraries: all 20,000 strings; bpe and
    # wordpiece run t2i's own pipeline there, less its special added tokens: a seeded fifth
    texts = (fuzz if tok.kind in ("word", "mdmnist") else fuzz[::5]) + UNICODE
    ours = tok.encode_batch(texts)
    assert_same_ids(ours, texts, {
        "tokenizers": [e.ids for e in raw.encode_batch(texts)],  # default add_special_tokens=True: there is no post-processor
        "transformers": hf(texts)["input_ids"],
    })
    assert hf(texts[:500], add_special_tokens=False)["input_ids"] == ours[:500]
    spelled = raw.encode("[PAD] red <pad> <|endoftext|>").ids
    assert spelled == tok.encode_batch(["[PAD] red <pad> <|endoftext|>"])[0] and tok.pad_id not in spelled
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id)
    assert len(hf) == tok.vocab_size and tok.fingerprint == fp


@pytest.mark.parametrize("name", ["bpe", "wordpiece", "word", "mdmnist", "gpt2", "clip", "bert-vocab.txt"])
@pytest.mark.parametrize("bos,eos", [(False, False), (True, True)])
def test_transformers_padding_and_truncation_give_t2i_rows(name, bos, eos, saved, fuzz):
    folder, _ = saved(name)
    tok = load_tokenizer(folder)
    _, hf = reopened(folder)
    texts, L = fuzz[:500], 12
    rows, _ = encode_rows(tok, texts, TokenizeConfig(length=L, add_bos=bos, add_eos=eos), "int64")
    body = hf(texts, add_special_tokens=False, truncation=True, max_length=L - bos - eos)["input_ids"]
    framed = [[hf.bos_token_id] * bos + ids + [hf.eos_token_id] * eos for ids in body]
    padded = hf.pad({"input_ids": framed}, padding="max_length", max_length=L)["input_ids"]
    assert np.array_equal(rows, np.array(padded))


def _old_layout(tok, folder: Path) -> str:
    """The folder as t2i wrote it before the interop files: the kind's files and the meta only."""
    tok.save(folder)
    for name in ("tokenizer_config.json",) + (("tokenizer.json",) if tok.kind in ("word", "mdmnist") else ()):
        (folder / name).unlink()
    if tok.kind in ("bpe", "wordpiece"):
        (folder / "tokenizer.json").write_text(tok.tok.to_str(pretty=True) + "\n", encoding="utf-8")  # the old _save_files
    meta = json.loads((folder / META_NAME).read_text())
    return folder_fingerprint(folder, meta["files"] + [META_NAME])  # bytes on disk, as before


@pytest.mark.parametrize("name", list(MAKERS))
def test_fingerprint_is_the_one_before_interop_files_and_survives_a_resave(name, saved, tmp_path):
    folder, fp = saved(name)
    tok = load_tokenizer(folder)
    old = tmp_path / "old"
    assert _old_layout(tok, old) == fp
    again = load_tokenizer(old)  # a folder saved before this change loads with its fingerprint and ids
    assert again.fingerprint == fp and again.encode_batch(UNICODE) == tok.encode_batch(UNICODE)
    assert again.save(tmp_path / "resaved") == fp and (tmp_path / "resaved" / "tokenizer_config.json").is_file()
    own = ["tokenizer.json"] if tok.kind in ("bpe", "wordpiece") else ["vocab.json"]
    assert json.loads((folder / META_NAME).read_text())["files"] == own  # the interop files are not t2i's


def test_pinned_fingerprint_of_the_fixed_mdmnist_vocabulary(tmp_path):
    # value written by t2i before tokenizer.json and tokenizer_config.json were added to the folder
    assert load_pretrained("mdmnist", None).save(tmp_path) == "79108ea9b652a36465995cc8eed35d1ec7b0baea9e72849213e0e8515119a93b"


def test_only_files_t2i_reads_move_the_fingerprint(saved, tmp_path):
    folder = tmp_path / "wp"
    shutil.copytree(saved("wordpiece")[0], folder)
    fp = load_tokenizer(folder).fingerprint
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, model_max_length=77)))  # transformers only
    assert load_tokenizer(folder).fingerprint == fp
    added = config["added_tokens_decoder"]
    added["4"]["content"] = "[MASKED]"  # an added token t2i registers: part of t2i's form of tokenizer.json
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, added_tokens_decoder=added)))
    assert load_tokenizer(folder).fingerprint != fp
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(T2IError, match="tokenizer_config.json"):
        load_tokenizer(folder)


def test_raw_tokenizers_file_keeps_the_specials_as_vocabulary(saved):
    from tokenizers import Tokenizer

    folder, _ = saved("wordpiece")
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert spec["added_tokens"] == [] and spec["post_processor"] is None
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = load_tokenizer(folder)
    assert [raw.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id]
    assert raw.decode(tok.encode_batch(["a small bird"])[0]) == "a small bird"


# -- every code point, for the two pipelines built here -------------------------------------
def _all_code_points(chunk: int = 48) -> list[str]:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and c != 0x3A3]  # Σ: see below
    return ["".join(chars[i : i + chunk]) for i in range(0, len(chars), chunk)]


@pytest.mark.parametrize("kind", ["word", "mdmnist"])
def test_word_and_mdmnist_pipelines_equal_t2i_on_every_code_point(kind, tmp_path):
    texts = _all_code_points()
    # word: a vocabulary of every word t2i finds, so a different lowercase shows as another id
    tok = train("word", texts, None) if kind == "word" else load_pretrained("mdmnist", None)
    tok.save(tmp_path)
    raw, hf = reopened(tmp_path)
    ours = tok.encode_batch(texts)
    assert_same_ids(ours, texts, {"tokenizers": [e.ids for e in raw.encode_batch(texts)]})
    assert_same_ids(ours[::50], texts[::50], {"transformers": hf(texts[::50])["input_ids"]})


def test_word_final_capital_sigma_is_the_one_input_that_differs(tmp_path):
    """Python lowercases a word-final "Σ" to "ς"; tokenizers' Lowercase, one character at a
    time, to "σ". The ids differ only where the vocabulary holds the word (interop.py)."""
    from tokenizers import Tokenizer

    tok = train("word", ["οδος και σας"], None)
    tok.save(tmp_path)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.encode_batch(["ΟΔΟΣ"]) == [[tok.stoi["οδος"]]] and raw.encode("ΟΔΟΣ").ids == [tok.unk_id]
    assert raw.encode("ΣΑΣ ΚΑΙ οδος").ids != tok.encode_batch(["ΣΑΣ ΚΑΙ οδος"])[0]
    same = ["Σ", "ΣΑ", "οδος", "ΚΑΙ", "ΑΣΑ"]  # no word-final capital sigma after a letter
    assert [e.ids for e in raw.encode_batch(same)] == tok.encode_batch(same)


# -- real captions ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_captions():
    root = realdata_dir()
    coco, cub = root / "coco" / "annotations" / "captions_val2017.json", root / "cub" / "birds" / "text"
    if not coco.is_file() or not cub.is_dir():
        pytest.skip(f"COCO captions or CUB text not found under {root} (set T2I_REALDATA)")
    caps = [a["caption"] for a in json.loads(coco.read_bytes())["annotations"]]
    caps += [line for p in sorted(cub.rglob("*.txt")) for line in p.read_text(encoding="utf-8").splitlines()]
    return caps


@pytest.mark.parametrize("name", ["word", "mdmnist", "bpe", "wordpiece", "gpt2", "clip", "bert-vocab.txt"])
def test_real_coco_and_cub_captions_get_t2i_ids(name, real_captions, saved, tmp_path):
    if name in ("bpe", "wordpiece", "word"):  # a vocabulary of the captions themselves, so few ids are unk
        train(name, real_captions[::4], {"bpe": 1000, "wordpiece": 1000, "word": None}[name]).save(tmp_path)
        folder = tmp_path
    else:
        folder = saved(name)[0]
    tok = load_tokenizer(folder)
    raw, hf = reopened(folder)
    # every caption for the pipelines built for the other libraries; a seeded fifth for t2i's own
    caps = real_captions if tok.kind in ("word", "mdmnist") else real_captions[::5]
    ours = tok.encode_batch(caps)
    assert_same_ids(ours, caps, {"tokenizers": [e.ids for e in raw.encode_batch(caps)], "transformers": hf(caps)["input_ids"]})


def test_a_saved_tokenizer_json_loads_again_with_its_specials(saved):
    folder, _ = saved("bpe")
    tok = load_tokenizer(folder)
    again = load_pretrained("bpe", folder / "tokenizer.json")  # its specials are in tokenizer_config.json beside it
    assert again.specials == tok.specials and (again.pad_id, again.bos_id, again.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    assert again.encode_batch(UNICODE) == tok.encode_batch(UNICODE)
