"""Our loaders on the real vocabularies give the reference tokenizers' ids (skipped without them)."""
import pytest

from t2i_data.text import load_pretrained, load_tokenizer

from reference_tokenizers import SENTENCES, CLIPReference, GPT2Reference


@pytest.fixture(scope="module")
def vocab(realdata):
    path = realdata / "vocab"
    if not (path / "gpt2" / "vocab.json").is_file():
        pytest.skip(f"no tokenizer vocabularies in {path}")
    return path


def saved(tok, tmp_path):
    tok.save(tmp_path)
    return load_tokenizer(tmp_path)  # what t2i tokenize uses: the saved form, reloaded


def test_gpt2_matches_the_original_encoder_and_transformers(vocab, tmp_path):
    from transformers import GPT2Tokenizer

    ours = saved(load_pretrained("bpe", vocab / "gpt2"), tmp_path)
    ref = GPT2Reference(vocab / "gpt2" / "vocab.json", vocab / "gpt2" / "merges.txt")
    hf = GPT2Tokenizer(vocab=str(vocab / "gpt2" / "vocab.json"), merges=str(vocab / "gpt2" / "merges.txt"))
    got = ours.encode_batch(SENTENCES)
    assert got == [ref.encode(s) for s in SENTENCES]
    assert got == [hf.encode(s, add_special_tokens=False) for s in SENTENCES]
    assert ours.encode_batch(["Hello world"]) == [[15496, 995]]
    assert (ours.eos_id, ours.pad_id, ours.vocab_size) == (50256, 50257, 50258)
    assert [ours.decode(i) for i in got] == [s.strip() for s in SENTENCES]


def test_clip_matches_simple_tokenizer(vocab, tmp_path):
    ours = saved(load_pretrained("bpe", vocab / "clip" / "bpe_simple_vocab_16e6.txt.gz"), tmp_path)
    ref = CLIPReference(vocab / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    assert ours.encode_batch(SENTENCES) == [ref.encode(s) for s in SENTENCES]
    assert ours.encode_batch(["a photo of a cat"]) == [[320, 1125, 539, 320, 2368]]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.sot_id, ref.eot_id, 49408)


@pytest.mark.parametrize("source", ["vocab.txt", "folder"])
def test_bert_uncased_matches_transformers_fast_tokenizer(vocab, tmp_path, source):
    from transformers import BertTokenizerFast

    folder = vocab / "bert-base-uncased"
    ours = saved(load_pretrained("wordpiece", folder / "vocab.txt" if source == "vocab.txt" else folder), tmp_path)
    hf = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    assert ours.encode_batch(SENTENCES) == [hf.encode(s, add_special_tokens=False) for s in SENTENCES]
    assert (ours.pad_id, ours.unk_id, ours.bos_id, ours.eos_id, ours.vocab_size) == (0, 100, 101, 102, 30522)
    assert ours.encode_batch(["[PAD] [CLS]"])[0] != [0, 101]  # spelled specials are text, not specials
