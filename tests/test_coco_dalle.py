"""``pipelines/coco-dalle.toml`` (the DALL·E reproduction on COCO 2017) through ``t2i run``, end to
end, on tiny stand-ins of each input it names, laid out where the file expects them:

- COCO: 4 train + 2 val real val2017 JPEGs of ``$T2I_REALDATA`` with their real captions;
- ``pretrained/dall-e/encoder.pkl`` / ``decoder.pkl``: the ``dall-e`` package's own Encoder /
  Decoder (the oracle, installed with ``--no-deps``) at small widths, random init, saved with
  ``torch.save(model)`` as the published files are;
- ``pretrained/bert-base-uncased``: the real bert-base-uncased ``vocab.txt`` (30,522 ids) beside a
  2-layer BERT of that vocabulary saved by ``save_pretrained``; ``pretrained/gpt2``: a 2-layer GPT-2
  with 1,024 positions (the 32 × 32 grid).

Only the model sizes and the run length are overridden; every stage runs its real code: centre
crops at 256, BERT WordPiece text tokens with [CLS] / [SEP], OpenAI-dVAE tokens (32 × 32, uint16),
and a G3 warm-started from the folders.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_data.tario import iter_samples
from t2i_models.checkpoint import load_autoencoder, load_prior
from t2i_models.cli import main

dall_e = pytest.importorskip("dall_e", reason="the oracle: pip install --no-deps DALL-E==0.1 (and attrs, requests)")

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = str(ROOT / "pipelines" / "coco-dalle.toml")
WIDTH = 32
TINY = ["preprocess.shard_size=4", "encode.batch_size=4",
        "train_prior.steps=4", "train_prior.restarts=[[2, 0.001]]", "train_prior.warmup=1", "train_prior.batch_size=2",
        "train_prior.grad_accum=2", "train_prior.eval_every=2", "train_prior.num_workers=0", "train_prior.log_every=1",
        f"train_prior.model.width={WIDTH}", "train_prior.model.encoder_layers=2", "train_prior.model.decoder_layers=2",
        "train_prior.model.heads=2", "train_prior.model.mlp=64"]


def _coco(realdata: Path, root: Path) -> dict[str, list[int]]:
    src = json.loads((realdata / "coco" / "annotations" / "captions_val2017.json").read_text())
    have = sorted(int(p.stem) for p in (realdata / "coco" / "val2017").glob("*.jpg"))
    chosen = {"train2017": have[:4], "val2017": have[4:6]}
    (root / "annotations").mkdir(parents=True)
    for split, ids in chosen.items():
        (root / split).mkdir()
        for i in ids:
            shutil.copy(realdata / "coco" / "val2017" / f"{i:012d}.jpg", root / split)
        doc = {"info": src.get("info", {}), "licenses": src.get("licenses", []),
               "images": [im for im in src["images"] if im["id"] in ids],
               "annotations": [a for a in src["annotations"] if a["image_id"] in ids]}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(doc))
    return chosen


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_coco_dalle_pipeline_runs_end_to_end_on_stand_ins(realdata, tmp_path, monkeypatch, capsys, caplog):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    monkeypatch.chdir(tmp_path)
    chosen = _coco(realdata, tmp_path / "data" / "coco")
    torch.manual_seed(0)
    dalle = tmp_path / "pretrained" / "dall-e"
    dalle.mkdir(parents=True)
    enc = dall_e.Encoder(n_hid=64, vocab_size=512)
    torch.save(enc, dalle / "encoder.pkl")
    torch.save(dall_e.Decoder(n_hid=64, n_init=32, vocab_size=512), dalle / "decoder.pkl")
    bert, gpt2 = tmp_path / "pretrained" / "bert-base-uncased", tmp_path / "pretrained" / "gpt2"
    BertModel(BertConfig(vocab_size=30522, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(bert)
    shutil.copy(realdata / "vocab" / "bert-base-uncased" / "vocab.txt", bert / "vocab.txt")
    GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_embd=WIDTH, n_layer=2, n_head=2, n_inner=64, n_positions=1024)).save_pretrained(gpt2)

    assert main(["-q", "run", PIPELINE, *TINY]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "t2i" in r.name], caplog.text  # val2017 is COCO's held-out split

    # images: centre crops at 256, the center regime in the manifest
    img = json.loads((tmp_path / "data" / "coco-dalle-images" / "train2017" / "manifest.json").read_text())
    assert img["regime"] == "center" and img["size"] == 256 and sum(s["samples"] for s in img["shards"]) == len(chosen["train2017"])
    # text: bert-base-uncased's WordPiece ids, [CLS] first
    txt_dir = tmp_path / "data" / "coco-dalle-text" / "train2017"
    txt = json.loads((txt_dir / "manifest.json").read_text())
    assert txt["tokenizer"]["vocab_size"] == 30522 and txt["config"]["length"] == 64
    vocab = (bert / "vocab.txt").read_text().split("\n")
    first = next(iter_samples(sorted(txt_dir.glob("*.tar"))[0]))
    ids = np.load(io.BytesIO(first["text_tokens.npy"]))
    assert vocab[int(ids[0, 0])] == "[CLS]" and "[SEP]" in {vocab[int(i)] for i in ids[0]}
    # image tokens: the dall-e package's own tokens of each stored image, uint16 32x32
    tok_dir = tmp_path / "data" / "coco-dalle-tokens" / "train2017"
    tm = json.loads((tok_dir / "manifest.json").read_text())
    _, rec = load_autoencoder(dalle / "encoder.pkl")
    assert tm["autoencoder"]["kind"] == "openai_dvae" and tm["autoencoder"]["fingerprint"] == rec["fingerprint"]
    assert tm["autoencoder"]["grid"] == 32 and tm["autoencoder"]["dtype"] == "uint16"
    from PIL import Image

    shard = sorted(tok_dir.glob("*.tar"))[0].name
    for image, tokens in zip(iter_samples(tmp_path / "data" / "coco-dalle-images" / "train2017" / shard), iter_samples(tok_dir / shard)):
        x = torch.from_numpy(np.asarray(Image.open(io.BytesIO(image["jpg"])).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            want = enc(dall_e.map_pixels(x)).argmax(1)[0].numpy()
        got = np.load(io.BytesIO(tokens["image_tokens.npy"]))
        assert got.shape == (1, 32, 32) and np.array_equal(got[0], want)
    # the prior: G3 warm-started from the folders, rebuilt from its checkpoint alone
    prior, ck = load_prior(tmp_path / "runs" / "coco-dalle-g3" / "last.pt")
    assert ck["kind"] == "g3" and ck["step"] == 4
    assert ck["config"]["pretrained"] and prior.model.decoder.config.vocab_size == 513
    assert ck["fingerprints"]["autoencoder"] == rec["fingerprint"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "coco-dalle-g3" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[:4] == pytest.approx([0.003, 0.003, 0.001, 0.0005])  # warmup 1 to 3e-3, the line from step 1; restart at 2 to 1e-3, halfway at 3
    # t2i sample takes the published files as --autoencoder: G3 tokens decoded by the dVAE into pixels
    assert main(["sample", "--prior", str(tmp_path / "runs" / "coco-dalle-g3" / "last.pt"), "--autoencoder", str(dalle / "encoder.pkl"),
                 "--tokenizer", str(tmp_path / "data" / "tok-bert-base-uncased"), "--prompt", "a cat on a red sofa", "-n", "1",
                 "--out", str(tmp_path / "samples.png")]) == 0
    assert Image.open(tmp_path / "samples.png").size[0] >= 128
    # a second run finds every stage done and verified
    assert main(["run", PIPELINE, *TINY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("done (verified)") == 5, out
