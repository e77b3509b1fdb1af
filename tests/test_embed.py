"""t2i embed: text-embedding shards from a local BERT / Sentence-BERT (t2i_models/embed.py), their
streaming (t2i_data/text_emb.py, ShardStream over derived sets), verify / inspect / export, and the
wrong uses. The encoders are tiny random-init BERTs saved with save_pretrained
(fixtures_text_encoders.py); the reference is transformers' own forward on each caption alone,
pooled here by hand in float32, then cast to float16."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from t2i_data.align import check_text_encoder, zip_aligned
from t2i_data.errors import T2IError
from t2i_data.manifest import load_manifest
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import DaskRunner, InProcessRunner
from t2i_data.stream import ShardStream, decode_and_augment
from t2i_data.tario import TarWriter, iter_samples
from t2i_data.text import sample_captions
from t2i_data.text_emb import caption_index, text_emb_decode, text_emb_row
from t2i_data.tokenize import clean_caption
from t2i_models.cli import main
from t2i_models.embed import EmbedConfig, embed, load_text_encoder, produce_shard, resolve_pooling

from fixtures_sources import make_coco
from fixtures_text_encoders import tiny_bert, tiny_sentence_bert

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("enc") / "bert")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """COCO val2017 stand-in: 4 images in 2 shards, 1 to 5 captions each (one with a control character)."""
    root = make_coco(tmp_path_factory.mktemp("coco") / "coco")
    out = tmp_path_factory.mktemp("img")
    preprocess(PreprocessConfig("coco", str(root), regime="prior", size=32, shard_size=2), out, InProcessRunner())
    return out / "val2017"


@pytest.fixture(scope="module")
def built(enc, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "a"
    return out, embed(enc, images, out, EmbedConfig(), InProcessRunner())["val2017"]


def reference(folder, captions: list[str], pool: str, layers: list[int], max_length: int = 512) -> np.ndarray:
    """Each caption alone through transformers (BertModel / BertTokenizer loaded afresh, truncation
    by the tokenizer), pooled by hand in float32, then float16: (n, D)."""
    from transformers import BertModel, BertTokenizer

    model = BertModel.from_pretrained(str(folder), local_files_only=True).eval()
    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    rows = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for c in captions:
                x = tok(c, truncation=True, max_length=max_length, return_tensors="pt")
                hs = model(**x, output_hidden_states=True).hidden_states
                mask = x["attention_mask"].float().unsqueeze(-1)
                means = [((hs[i] * mask).sum(1) / mask.sum(1))[0] for i in layers]
                if pool == "cls":
                    v = hs[layers[0]][0, 0]
                elif pool == "mean":
                    v = means[0] if len(means) == 1 else torch.stack(means).mean(0)
                else:
                    v = torch.cat(means)
                rows.append(v.numpy().astype(np.float16))
    finally:
        torch.set_num_threads(before)
    return np.stack(rows) if rows else np.zeros((0, 0), np.float16)


def stored(images, emb_dir) -> list[tuple[str, list[str], np.ndarray]]:
    """(key, cleaned captions, stored rows) per sample, zipped by key with the image set."""
    out = []
    for s in zip_aligned(images, emb_dir):
        caps = [clean_caption(c)[0] for c in sample_captions(s, "shard")[0]]
        out.append((s["__key__"], caps, np.load(__import__("io").BytesIO(s["text_emb.npy"]))))
    return out


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rows_are_the_reference_forward_of_each_caption_in_caption_order(enc, images, built):
    out, m = built
    rows = stored(images, out)
    base = load_manifest(images / "manifest.json")
    assert [s["name"] for s in m["shards"]] == [s["name"] for s in base["shards"]] and len(base["shards"]) > 1
    for shard in base["shards"]:  # shard by shard, the same keys in the same order
        assert [s["__key__"] for s in iter_samples(out / shard["name"])] == [s["__key__"] for s in iter_samples(images / shard["name"])]
    assert [len(c) for _, c, _ in rows] == [a.shape[0] for _, _, a in rows] and sum(len(c) for _, c, _ in rows) == m["stats"]["captions"]
    for key, caps, arr in rows:
        assert arr.dtype == np.float16 and arr.shape == (len(caps), 32)
        assert np.array_equal(arr, reference(enc, caps, "mean", [4])), key  # bit for bit, float16 of the fp32 reference


def test_manifest_records_the_encoder_pooling_and_dtype(enc, images, built):
    _, m = built
    t = m["text_encoder"]
    _, _, rec = load_text_encoder(enc)
    assert (t["family"], t["name"], t["fingerprint"], t["hidden_size"], t["num_layers"]) == ("bert", "bert", rec["fingerprint"], 32, 4)
    assert (t["pool"], t["layers"], t["dim"], t["dtype"], t["max_length"], t["precision"]) == ("mean", [4], 32, "float16", 512, "fp32")
    assert t["files"] == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert m["aligned_to"] == load_manifest(images / "manifest.json")["digest"] and m["seed"] is None
    assert m["config"] == {"pool": "mean", "layers": [4], "max_length": 512, "batch_size": None, "device": None}
    assert m["stats"] == {"samples": 4, "captions": 6, "truncated": 0, "control": 1, "repaired": 0}
    assert set(m["encoder"]) == {"npy", "tar", "torch", "transformers"}


def test_bytes_do_not_depend_on_batch_size_or_workers(enc, images, built, tmp_path):
    out, _ = built
    embed(enc, images, tmp_path / "b1", EmbedConfig(batch_size=1), InProcessRunner())
    assert tree(tmp_path / "b1") == tree(out)
    with DaskRunner(workers=2) as runner:
        embed(enc, images, tmp_path / "d", EmbedConfig(batch_size=3), runner)
    assert tree(tmp_path / "d") == tree(out)


@pytest.mark.parametrize("pool, layers, used, dim", [("last4-concat", None, [1, 2, 3, 4], 128), ("cls", (0,), [0], 32),
                                                     ("mean", (-1, 2), [4, 2], 32), ("last4-concat", (0, -1, 2, 1), [0, 4, 2, 1], 128)])
def test_each_pool_equals_its_reference(enc, images, tmp_path, pool, layers, used, dim):
    m = embed(enc, images, tmp_path / "e", EmbedConfig(pool=pool, layers=layers, max_length=8), InProcessRunner())["val2017"]
    assert (m["text_encoder"]["layers"], m["text_encoder"]["dim"]) == (used, dim)
    assert m["stats"]["truncated"] > 0  # some COCO captions are over 6 WordPieces
    for _, caps, arr in stored(images, tmp_path / "e"):
        assert np.array_equal(arr, reference(enc, caps, pool, used, max_length=8))


def test_sentence_bert_folder_pools_as_its_config_says_and_a_given_pool_is_recorded(images, tmp_path):
    st = tiny_sentence_bert(tmp_path / "sbert", pooling="cls", root=False)
    m = embed(st, images, tmp_path / "o", EmbedConfig(pool=None), InProcessRunner())["val2017"]
    t = m["text_encoder"]
    assert (t["format"], t["folder_pool"], t["pool"], t["pool_source"]) == ("sentence-transformers", "cls", "cls", "sentence-transformers Pooling config")
    assert "modules.json" in t["files"] and "1_Pooling/config.json" in t["files"] and "0_Transformer/model.safetensors" in t["files"]
    for _, caps, arr in stored(images, tmp_path / "o"):
        assert np.array_equal(arr, reference(st / "0_Transformer", caps, "cls", [4]))
    m2 = embed(st, images, tmp_path / "o2", EmbedConfig(pool="mean"), InProcessRunner())["val2017"]
    assert (m2["text_encoder"]["pool"], m2["text_encoder"]["folder_pool"], m2["text_encoder"]["pool_source"]) == ("mean", "cls", "given")
    norm = tiny_sentence_bert(tmp_path / "sn", pooling="mean", normalize=True)
    embed(norm, images, tmp_path / "o3", EmbedConfig(pool=None), InProcessRunner())
    for _, caps, arr in stored(images, tmp_path / "o3"):
        ref = reference(norm, caps, "mean", [4]).astype(np.float32)
        assert np.allclose(np.linalg.norm(arr.astype(np.float32), axis=1), 1, atol=2e-3)
        assert np.allclose(arr, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-3)


def test_a_sample_without_captions_gets_a_zero_row_array(enc, tmp_path):
    folder = tmp_path / "shard"
    folder.mkdir()
    w = TarWriter(folder / "x-000000.tar")
    for key, caps in (("k-0", []), ("k-1", ["a dog", "two red birds on a bench"])):
        w.write({"__key__": key, "json": json.dumps({"captions": caps}).encode()})
    rec = w.close()
    _, _, record = load_text_encoder(enc)
    spec = resolve_pooling(EmbedConfig(), record)
    samples = list(produce_shard(str(enc), EmbedConfig(), spec, (str(folder), rec)))
    a0, a1 = (np.load(__import__("io").BytesIO(s["text_emb.npy"])) for s in samples[:2])
    assert a0.shape == (0, 32) and a0.dtype == np.float16 and a1.shape == (2, 32)
    assert np.array_equal(a1, reference(enc, ["a dog", "two red birds on a bench"], "mean", [4]))
    assert samples[2] == {"samples": 2, "captions": 2, "truncated": 0, "control": 0, "repaired": 0}


def test_verify_passes_and_a_flipped_byte_fails(built, tmp_path, capsys):
    out, m = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    assert main(["-q", "verify", str(copy)]) == 0
    shard = copy / m["shards"][1]["name"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 1  # inside the first member's array
    shard.write_bytes(bytes(data))
    assert main(["-q", "verify", str(copy)]) == 1
    assert "mismatch" in capsys.readouterr().out


def test_inspect_and_export_read_a_text_embedding_set(images, built, tmp_path, capsys):
    out, _ = built
    assert main(["-q", "inspect", str(out), "--out", str(tmp_path / "i")]) == 0
    text = capsys.readouterr().out
    assert "6 of dimension 32, L2 norm min" in text
    rep = json.loads((tmp_path / "i" / "inspect.json").read_text())[0]
    norms = np.concatenate([np.linalg.norm(a.astype(np.float32), axis=1) for _, _, a in stored(images, out)])
    assert rep["embeddings"]["count"] == 6 and rep["embeddings"]["norm"]["max"] == pytest.approx(float(norms.max()))
    per = {}
    for _, _, a in stored(images, out):
        per[str(len(a))] = per.get(str(len(a)), 0) + 1
    assert rep["histograms"]["embeddings_per_sample"] == per and len(per) > 1
    assert main(["-q", "export", str(images), str(out), "--format", "parquet", "--out", str(tmp_path / "x")]) == 0
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "x" / "val2017" / "data-00000-of-00001.parquet")
    col = t.column("text_emb").to_pylist()
    for got, (_, _, arr) in zip(col, stored(images, out)):
        assert np.array_equal(np.array(got, dtype=np.float16).reshape(arr.shape), arr)


def test_a_set_of_another_encoder_is_refused(enc, built, tmp_path):
    _, m = built
    _, _, rec = load_text_encoder(enc)
    check_text_encoder(m, rec["fingerprint"])
    other = tiny_bert(tmp_path / "other", seed=1)
    _, _, rec2 = load_text_encoder(other)
    assert rec2["fingerprint"] != rec["fingerprint"]
    with pytest.raises(T2IError, match=f"made by text_encoder {rec['fingerprint'][:16]}, but the model expects {rec2['fingerprint'][:16]}"):
        check_text_encoder(m, rec2["fingerprint"])


def test_stream_over_images_and_over_image_tokens_gives_each_key_its_row(images, built, tmp_path):
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode

    out, _ = built
    rows = {k: a for k, _, a in stored(images, out)}
    decode = text_emb_decode(5, decode_and_augment(None, 0), dim=32)
    batches = list(ShardStream([images, out], decode, batch_size=2, seed=1, shuffle_buffer=1))
    got = [(k, int(i), e) for b in batches for k, i, e in zip(b["key"], b["caption_index"], b["text_emb"])]
    assert sorted(k for k, _, _ in got) == sorted(rows) and batches[0]["image"].shape == (2, 3, 52, 52)  # prior-32 stores 52x52
    for k, i, e in got:
        assert i == caption_index(k, 5, 0, len(rows[k])) and torch.equal(e, torch.from_numpy(rows[k][i].astype(np.float32)))
    torch.manual_seed(0)
    save_autoencoder(tmp_path / "ae.pt", build_autoencoder("dvae_tiny"), step=1)
    encode(tmp_path / "ae.pt", images, tmp_path / "tok", EncodeConfig(), InProcessRunner())
    both = ShardStream([tmp_path / "tok", out], text_emb_decode(5), batch_size=2, seed=1, shuffle_buffer=1)
    got2 = [(k, int(i)) for b in both for k, i in zip(b["key"], b["caption_index"])]
    assert sorted(got2) == sorted((k, i) for k, i, _ in got)
    from t2i_data.manifest import write_manifest

    fake = tmp_path / "fake"  # a text-embedding set of another image set
    shutil.copytree(out, fake)
    mf = load_manifest(fake / "manifest.json")
    write_manifest(fake / "manifest.json", {k: v for k, v in mf.items() if k != "digest"} | {"aligned_to": "0" * 64})
    with pytest.raises(T2IError, match="belongs to image set 0000000000000000, but .*tok \\(image_tokens\\) to"):
        ShardStream([tmp_path / "tok", fake], text_emb_decode(5), batch_size=2)


def test_text_emb_row_picks_the_token_streams_caption_and_refuses_bad_rows():
    from t2i_data.npyio import npy_bytes
    from t2i_data.rng import key_ids, keyed_u64, stream_id

    arr = np.arange(5 * 3, dtype=np.float16).reshape(5, 3)
    for epoch in range(4):
        row, i = text_emb_row({"__key__": "coco-1", "text_emb.npy": npy_bytes(arr)}, 7, epoch)
        assert i == int(keyed_u64(7, stream_id("caption"), key_ids(["coco-1"]), epoch)[0] % np.uint64(5))  # TokenStream's draw
        assert row.dtype == np.float32 and np.array_equal(row, arr[i].astype(np.float32))
    for bad, msg in ((np.zeros((0, 3), np.float16), "has no captions"), (arr.astype(np.float32), "float32 array"),
                     (arr[:, :2], r"float16 \(captions, 3\)")):
        with pytest.raises(T2IError, match=msg):
            text_emb_row({"__key__": "k", "text_emb.npy": npy_bytes(np.ascontiguousarray(bad))}, 0, 0, dim=3)
    with pytest.raises(T2IError, match="is missing"):
        text_emb_row({"__key__": "k"}, 0, 0)


def test_wrong_uses_exit_2_with_one_line(enc, images, built, tmp_path, capsys):
    out, _ = built
    no_weights = tmp_path / "nw"
    shutil.copytree(enc, no_weights)
    (no_weights / "model.safetensors").unlink()
    pickled = tmp_path / "pk"
    shutil.copytree(no_weights, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    deeper, shallower = tmp_path / "deep", tmp_path / "shallow"
    for d, n in ((deeper, 5), (shallower, 3)):
        shutil.copytree(enc, d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": n}))
    wide = tmp_path / "wide"
    shutil.copytree(enc, wide)
    (wide / "config.json").write_text(json.dumps(json.loads((wide / "config.json").read_text()) | {"intermediate_size": 80}))
    no_tok = tmp_path / "nt"
    shutil.copytree(enc, no_tok)
    for f in ("tokenizer.json", "vocab.txt"):
        (no_tok / f).unlink()
    maxpool = tiny_sentence_bert(tmp_path / "mx", pooling="max_tokens")
    damaged = tmp_path / "dmg"  # a weights file cut short: safetensors' own error, as one line
    shutil.copytree(enc, damaged)
    (damaged / "model.safetensors").write_bytes((enc / "model.safetensors").read_bytes()[:1000])
    roberta = tmp_path / "rob"  # RoBERTa-type position ids start after the pad id: 16 rows hold 14 tokens
    from transformers import RobertaConfig, RobertaModel

    vocab = json.loads((enc / "config.json").read_text())["vocab_size"]
    RobertaModel(RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=16, pad_token_id=1)).save_pretrained(roberta)
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (enc / f).exists():
            shutil.copy(enc / f, roberta / f)
    base = ["-q", "embed", "--images", str(images), "--workers", "0"]
    capsys.readouterr()
    cases = [
        (["--encoder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "no such folder; nothing is downloaded"),
        (["--encoder", str(no_weights), "--out", str(tmp_path / "o")], "no model.safetensors in the folder"),
        (["--encoder", str(pickled), "--out", str(tmp_path / "o")], "weights only in a pickle"),
        (["--encoder", str(no_tok), "--out", str(tmp_path / "o")], "no tokenizer.json or vocab.txt"),
        (["--encoder", str(deeper), "--out", str(tmp_path / "o")], "its weights do not fit its config.json: 16 tensors missing"),
        (["--encoder", str(shallower), "--out", str(tmp_path / "o")], "16 tensors its config has no place for (e.g. encoder.layer.3."),
        (["--encoder", str(wide), "--out", str(tmp_path / "o")], "transformers cannot load it"),
        (["--encoder", str(maxpool), "--out", str(tmp_path / "o")], "turns on pooling_mode_max_tokens"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--pool", "max"], "--pool must be one of mean, cls, last4-concat"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--layers", "5"], "--layers 5: bert has hidden states 0..4"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--layers", "-6"], "indexes run from -5 to 4"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--layers", "4", "-1"], "names a hidden state twice"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--pool", "cls", "--layers", "1", "2"], "--pool cls takes the [CLS] state of one layer"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--pool", "last4-concat", "--layers", "1", "2", "3"], "concatenates four layers"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--max-length", "513"], "has 512 positions"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--max-length", "2"], "--max-length must be in 3.."),
        (["--encoder", str(enc), "--out", str(images / "emb")], "inside the input"),
        (["--encoder", str(damaged), "--out", str(tmp_path / "o")], "transformers cannot load it (SafetensorError"),
        (["--encoder", str(roberta), "--out", str(tmp_path / "o"), "--max-length", "16"], "rob has 14 positions"),
        (["--encoder", str(enc), "--out", str(images)], "inside the input"),
        (["--encoder", str(enc), "--out", str(tmp_path / "o"), "--batch-size", "0"], "--batch-size must be >= 1"),
    ] + ([] if torch.cuda.is_available() else
         [(["--encoder", str(enc), "--out", str(tmp_path / "o"), "--device", "cuda"], "--device cuda: this torch sees no CUDA device")])
    for args, msg in cases:
        assert main(base + args) == 2, args
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (args, err)
    assert main(["-q", "embed", "--encoder", str(enc), "--images", str(out), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "a text_emb set; t2i embed reads the captions of an image shard set" in capsys.readouterr().err
    assert not list(tmp_path.glob("o/**/*.tar")) and not (tmp_path / "o" / "manifest.json").exists() and not (images / "emb").exists()


def test_cli_and_pipeline_stage(enc, images, built, tmp_path, capsys):
    out, m = built
    assert main(["-q", "embed", "--encoder", str(enc), "--images", str(images), "--out", str(tmp_path / "c"), "--workers", "0",
                 "--batch-size", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"val2017: 4 samples, 6 captions -> 32-d float16 embeddings (mean of hidden states 4 of bert bert, "
                    f"{m['text_encoder']['fingerprint'][:16]}); truncated to 512 tokens: 0; aligned to {m['aligned_to'][:16]}")
    assert tree(tmp_path / "c") == tree(out)
    (tmp_path / "p.toml").write_text(f'[embed]\nencoder = "{enc}"\nimages = "{images}"\nout = "{tmp_path / "r"}"\npool = "cls"\n'
                                     f'layers = [-2]\nworkers = 0\n')
    assert main(["-q", "run", str(tmp_path / "p.toml")]) == 0
    r = load_manifest(tmp_path / "r" / "manifest.json")
    assert (r["text_encoder"]["pool"], r["text_encoder"]["layers"]) == ("cls", [3])
    capsys.readouterr()
    assert main(["-q", "run", str(tmp_path / "p.toml")]) == 0
    assert "done (verified)" in capsys.readouterr().out
