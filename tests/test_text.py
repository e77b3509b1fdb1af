import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from t2i_data.align import check_tokenizer, zip_aligned
from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import AutoRunner, DaskRunner, InProcessRunner
from t2i_data.tario import TarWriter, iter_samples
from t2i_data.text import load_pretrained, load_tokenizer, train
from t2i_data.tokenize import TokenizeConfig, clean_caption, encode_rows, tokenize

TRAIN = [
    "a small bird with a red crown and white belly",
    "the bird has long black wings and a short beak",
    "a man riding a wave on top of a surfboard",
    "two dogs playing with a frisbee in the park",
    "a plate of food with broccoli and rice",
] * 40
UNSEEN = "brisket"  # appears in no training caption; its letters do


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = {}
    for kind, v in (("bpe", 300), ("wordpiece", 200), ("word", None)):
        folder = tmp_path_factory.mktemp(kind)
        train(kind, TRAIN, v).save(folder)
        out[kind] = load_tokenizer(folder)
    return out


def test_unseen_word_is_unk_for_word_and_known_subwords_for_bpe_and_wordpiece(trained):
    word, bpe, wp = trained["word"], trained["bpe"], trained["wordpiece"]
    assert word.encode_batch([f"a {UNSEEN} bird"]) == [[word.stoi["a"], word.unk_id, word.stoi["bird"]]]
    ids = bpe.encode_batch([UNSEEN])[0]
    assert len(ids) > 1 and bpe.decode(ids) == UNSEEN
    ids = wp.encode_batch([UNSEEN])[0]
    pieces = [wp.tok.id_to_token(i) for i in ids]
    assert wp.unk_id not in ids and len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert wp.decode(ids) == UNSEEN


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "word"])
def test_round_trip_on_normal_captions(trained, kind):
    tok = trained[kind]
    caps = ["a small bird with a red crown", "Two dogs playing in the park", "the bird has long black wings"]
    ids = tok.encode_batch(caps)
    decoded = [tok.decode(i) for i in ids]
    assert decoded == [c.lower() for c in caps]
    assert tok.encode_batch(decoded) == ids


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "word", "mdmnist"])
def test_pad_id_is_never_produced_for_real_text(trained, kind):
    tok = trained.get(kind) or load_pretrained("mdmnist", None)
    texts = TRAIN[:5] + ["[PAD]", "<pad>", "[PAD] [CLS] [SEP]", "<|endoftext|>", "!!!", "", "4 30 g down 8 40 b up 6 40 b middle"]
    assert all(tok.pad_id not in ids for ids in tok.encode_batch(texts))
    assert tok.pad_id < tok.vocab_size


def test_training_is_deterministic_across_processes_and_threads(tmp_path):
    script = (
        "import sys; from t2i_data.text import train\n"
        "caps = [f'w{i % 97} x{(i * 7) % 89} the bird {i % 13}' for i in range(3000)]\n"
        "print(' '.join(train(k, caps, 400).save(sys.argv[1] + '/' + k)[:16] for k in ('bpe', 'wordpiece', 'word')))\n"
    )
    outs = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        outs.add(subprocess.run([sys.executable, "-c", script, str(tmp_path / threads)], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1, outs


def test_word_ids_follow_frequency_then_word_from_training_only():
    tok = train("word", ["b a", "a c", "c a", "d"], None)
    assert tok.itos == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "c", "b", "d"]
    assert train("word", ["b a", "a c", "c a", "d"], 6).itos[4:] == ["a", "c"]


def test_mdmnist_vocabulary_is_the_thesis_one():
    tok = load_pretrained("mdmnist", None)
    assert tok.encode_batch(["4 30 g down 8 40 b up 6 40 b middle"]) == [[4, 11, 15, 19, 8, 12, 16, 17, 6, 12, 16, 18]]
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (20, 21, 22, 23, 24)
    assert tok.encode_batch(["4 31 g"]) == [[4, 23, 15]]


def test_awkward_captions_have_defined_behaviour(trained):
    tok = trained["word"]
    cfg = TokenizeConfig(length=6, add_bos=True, add_eos=True)
    caps = ["", "a bird with a red crown and white belly", "a\x00bird\twith\u200b wings", "!!! ...", "a bird"]
    rows, st = encode_rows(tok, caps, cfg, "uint16")
    pad, bos, eos, s = tok.pad_id, tok.bos_id, tok.eos_id, tok.stoi
    assert rows.dtype == np.uint16 and rows.shape == (5, 6)
    assert rows[0].tolist() == [bos, eos, pad, pad, pad, pad]  # empty caption: BOS, EOS, padding
    assert rows[1].tolist() == [bos, s["a"], s["bird"], s["with"], s["a"], eos]  # cut to L, EOS kept last
    assert rows[2].tolist() == [bos, s["abird"] if "abird" in s else tok.unk_id, s["with"], s["wings"], eos, pad]
    assert rows[3].tolist() == [bos, eos, pad, pad, pad, pad]  # punctuation only has no word
    assert st == {"captions": 5, "truncated": 1, "empty": 2, "control": 1, "lengths": [0, 9, 3, 0, 2]}
    assert clean_caption("a\x00b\tc\u200bd") == ("ab cd", True) and clean_caption("plain") == ("plain", False)
    bpe_rows, _ = encode_rows(trained["bpe"], ["!!! ..."], TokenizeConfig(length=8), "uint16")
    assert (bpe_rows[0] != trained["bpe"].pad_id).sum() >= 2  # BPE keeps punctuation as tokens


@pytest.fixture(scope="module")
def md_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("md")
    build(MDMNISTConfig(seed=2, train=300, test=100, shard_size=128), out, InProcessRunner())
    return out


def test_text_token_shards_are_aligned_and_identical_across_worker_counts(md_images, tmp_path, capfd):
    tok_dir = tmp_path / "tok"
    load_pretrained("mdmnist", None).save(tok_dir)
    cfg = TokenizeConfig(length=12)
    m = tokenize(tok_dir, md_images, tmp_path / "a", cfg, InProcessRunner())
    with DaskRunner(workers=2) as runner:
        tokenize(tok_dir, md_images, tmp_path / "b", cfg, runner)
    capfd.readouterr()
    with AutoRunner(workers=2, start_cost_s=0.0) as runner:  # a pool forked after this process used the tokenizer
        tokenize(tok_dir, md_images, tmp_path / "c", cfg, runner)
        assert runner.started
    assert "huggingface/tokenizers" not in capfd.readouterr().err  # no fork warning from the pool's process
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b") == files(tmp_path / "c")
    t = m["train"]
    assert t["aligned_to"] == json.loads((md_images / "train" / "manifest.json").read_text())["digest"]
    assert t["tokenizer"]["pad_id"] == 20 and t["tokenizer"]["length"] == 12 and t["tokenizer"]["dtype"] == "uint16"
    assert t["stats"]["captions"] == 300 and t["stats"]["token_length_histogram"] == {"12": 300}
    n = 0
    for sample in zip_aligned(md_images / "train", tmp_path / "a" / "train"):
        arr = np.load(io.BytesIO(sample["text_tokens.npy"]))
        assert arr.shape == (1, 12) and arr.dtype == np.uint16
        assert arr[0].tolist() == json.loads(sample["json"])["symbol_ids"]
        n += 1
    assert n == 300


def test_zipping_misaligned_sets_or_another_tokenizer_fails_naming_both_digests(md_images, tmp_path):
    tok_dir = tmp_path / "tok"
    load_pretrained("mdmnist", None).save(tok_dir)
    tokenize(tok_dir, md_images / "test", tmp_path / "t", TokenizeConfig(length=12), InProcessRunner())
    train_digest = json.loads((md_images / "train" / "manifest.json").read_text())["digest"]
    test_digest = json.loads((md_images / "test" / "manifest.json").read_text())["digest"]
    with pytest.raises(T2IError) as e:
        next(zip_aligned(md_images / "train", tmp_path / "t"))
    assert test_digest[:16] in str(e.value) and train_digest[:16] in str(e.value) and "re-derive" in str(e.value)
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    other = "0" * 64
    with pytest.raises(T2IError) as e:
        check_tokenizer(m, other, "the G1 checkpoint")
    assert m["tokenizer"]["fingerprint"][:16] in str(e.value) and other[:16] in str(e.value)
    check_tokenizer(m, m["tokenizer"]["fingerprint"])


def test_invalid_utf8_in_a_caption_json_is_repaired_and_counted(tmp_path, trained):
    from t2i_data.manifest import FORMAT_VERSION, write_manifest

    d = tmp_path / "imgs"
    d.mkdir()
    w = TarWriter(d / "x-test-000000.tar")
    bad = b'{"captions": ["a bird \xff\xfe with wings"]}'
    w.write({"__key__": "x-0001", "json": bad, "__content__": {"json": bad}})  # our writer would refuse to parse it
    w.write({"__key__": "x-0002", "json": b'{"captions": []}'})
    rec = w.close()
    write_manifest(d / "manifest.json", {"format_version": FORMAT_VERSION, "kind": "images", "dataset": "x", "split": "test", "shards": [rec],
                                        "totals": {"shards": 1, "samples": 2, "bytes": rec["bytes"], "quarantined": 0}, "quarantined": []})
    trained["word"].save(tmp_path / "tok")
    m = tokenize(tmp_path / "tok", d, tmp_path / "out", TokenizeConfig(length=8), InProcessRunner())["test"]
    assert m["stats"]["repaired"] == 1 and m["stats"]["captions"] == 1
    rows = [np.load(io.BytesIO(s["text_tokens.npy"])) for s in iter_samples(tmp_path / "out" / "x-test-000000.tar")]
    assert rows[0].shape == (1, 8) and rows[1].shape == (0, 8)  # a sample without captions keeps its key


def test_cli_train_refuses_the_test_split(md_images, tmp_path, capsys):
    from t2i_models.cli import main

    assert main(["tokenizer", "train", "--kind", "word", "--images", str(md_images / "test"), "--out", str(tmp_path / "w")]) == 2
    assert "no training split here (found test)" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--kind", "bpe", "--images", str(md_images), "--out", str(tmp_path / "b")]) == 2
    assert "--vocab-size is needed" in capsys.readouterr().err
    assert main(["-q", "tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--images", str(md_images), "--out", str(tmp_path / "b")]) == 0
    meta = json.loads((tmp_path / "b" / "t2i_tokenizer.json").read_text())
    assert meta["source"]["trained_on"]["split"] == "train" and meta["source"]["trained_on"]["captions"] == 300


@pytest.mark.parametrize("bos,eos", [(False, False), (True, False), (False, True), (True, True)])
def test_vectorised_rows_equal_the_per_caption_reference(trained, bos, eos):
    from t2i_data.tokenize import encode_rows_reference

    caps = TRAIN[:7] + ["", "!!!", "a " * 40, "brisket brisket", "a\tbird"]
    for kind in ("bpe", "wordpiece", "word"):
        cfg = TokenizeConfig(length=9, add_bos=bos, add_eos=eos)
        rows, _ = encode_rows(trained[kind], caps, cfg, "uint16")
        assert np.array_equal(rows, encode_rows_reference(trained[kind], caps, cfg, "uint16"))
    assert encode_rows(trained["word"], [], TokenizeConfig(length=4), "uint16")[0].shape == (0, 4)


def test_a_word_vocabulary_saved_with_the_old_sos_name_loads_as_saved(tmp_path):
    """BOS is <bos> now (one name for one token); a vocab.json saved with the thesis' <sos> keeps
    its ids and its words; anything else at ids 0-3 is refused with the file named."""
    tok = train("word", ["a b", "b c"], None, 1)
    assert tok.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and tok.bos_id == 2
    tok.save(tmp_path / "old")
    vocab = tmp_path / "old" / "vocab.json"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace('"<bos>"', '"<sos>"'), encoding="utf-8")
    old = load_tokenizer(tmp_path / "old")
    assert old.itos == ["<pad>", "<unk>", "<sos>", "<eos>", "b", "a", "c"] and old.bos_id == 2
    assert old.encode_batch(["c b x"]) == tok.encode_batch(["c b x"]) == [[6, 4, 1]]
    vocab.write_text(vocab.read_text(encoding="utf-8").replace('"<sos>"', '"<start>"'), encoding="utf-8")
    with pytest.raises(T2IError, match=r"old/vocab.json: starts with \['<pad>', '<unk>', '<start>', '<eos>'\]"):
        load_tokenizer(tmp_path / "old")


def test_zipping_checks_every_shard_against_its_manifest(md_images, tmp_path):
    """zip_aligned reads through manifest.checked_samples: a text-token shard changed after the
    build stops the zip naming the shard, before any of its samples is yielded."""
    tok_dir = tmp_path / "tok"
    load_pretrained("mdmnist", None).save(tok_dir)
    tokenize(tok_dir, md_images / "train", tmp_path / "t", TokenizeConfig(length=12), InProcessRunner())
    shard = sorted((tmp_path / "t").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[600] ^= 1  # inside the first member's bytes: the tar still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(T2IError, match=f"{shard.name}: sha256 .* so the checksum does not match the manifest"):
        next(zip_aligned(md_images / "train", tmp_path / "t"))
