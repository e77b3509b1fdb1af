"""G3 warm-started from local BERT and GPT-2 folders, as the DALL·E reproduction on COCO 2017
(../shared/seeds/004_ec04a6c4ed01c216.txt, §2.2.2) starts its BERT2GPT2: tiny BERT and GPT-2
(2 layers, width 32) made here with random weights and ``save_pretrained``, a tiny WordPiece
vocabulary for the text side. Checked: the weights come from the folders, the decoder's rows past
GPT-2's vocabulary from the seeded generator, the LM head stays tied, a checkpoint rebuilds
without the folders, every refusal's message, and the reproduction's recipe (batch 8 × 3,
AdamW, linear schedule with restarts) as ``t2i run`` resolves it."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from fractions import Fraction

import pytest
import torch

pytest.importorskip("transformers")

from t2i_data.errors import T2IError
from t2i_models.checkpoint import load_prior, save_prior
from t2i_models.prior_builders import g3_coco, g3_tiny, prior_from_config

WORDS = ["a", "the", "red", "bus", "dog", "on", "street", "man", "riding", "horse", "##s", "."]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT2_VOCAB = 20  # below V + 1 = 33: rows 20..32 are new
V, GRID, TEXT_LEN = 32, 4, 8
SIZES = dict(encoder_layers=2, decoder_layers=2, heads=2, width=32, text_positions=16)


@pytest.fixture
def folders(tmp_path):
    """(bert folder, gpt2 folder, the WordPiece tokenizer of the BERT's vocab.txt)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    from t2i_data.text import load_pretrained

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n")
    tok = load_pretrained("wordpiece", vocab)
    torch.manual_seed(123)
    bert, gpt2 = tmp_path / "bert-tiny", tmp_path / "gpt2-tiny"
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=16)).save_pretrained(bert)
    GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(gpt2)
    shutil.copy(vocab, bert / "vocab.txt")
    return bert, gpt2, tok


def tokens(tok) -> dict:
    return dict(text_vocab=tok.vocab_size, text_len=TEXT_LEN, pad_id=tok.pad_id, image_vocab=V, grid=GRID)


def warm(folders, **over):
    bert, gpt2, tok = folders
    return g3_coco(**tokens(tok), **SIZES, bert=str(bert), gpt2=str(gpt2), **over)


def batch(tok, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = tok.encode_batch(["a red bus on the street", "a man riding a horse", "the dogs"])
    text = torch.full((b, TEXT_LEN), tok.pad_id)
    for i, row in enumerate(ids[:b]):
        text[i, : len(row)] = torch.tensor(row[:TEXT_LEN])
    return text, torch.randint(0, V, (b, GRID * GRID), generator=g)


def test_the_encoder_and_decoder_start_from_the_folders_and_new_rows_from_the_seed(folders):
    from transformers import BertModel, GPT2LMHeadModel

    bert, gpt2, tok = folders
    torch.manual_seed(0)
    m = warm(folders, init_seed=5)
    saved_bert = BertModel.from_pretrained(bert, local_files_only=True).state_dict()
    enc = m.model.encoder.state_dict()
    assert set(saved_bert) - set(enc) == {"pooler.dense.weight", "pooler.dense.bias"}  # dropped: it gets no gradient
    assert all(torch.equal(enc[k], saved_bert[k]) for k in enc)
    saved_gpt2 = GPT2LMHeadModel.from_pretrained(gpt2, local_files_only=True).state_dict()
    dec = m.model.decoder.state_dict()
    assert all(torch.equal(dec[k], saved_gpt2[k]) for k in saved_gpt2 if "wte" not in k and "lm_head" not in k)
    assert any("crossattention" in k for k in dec)  # added to GPT-2, new weights
    wte = m.model.decoder.get_input_embeddings().weight
    assert wte.shape == (V + 1, 32) and m.bos == V
    assert torch.equal(wte[:GPT2_VOCAB], saved_gpt2["transformer.wte.weight"])
    rows = torch.empty(V + 1 - GPT2_VOCAB, 32).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(5))
    assert torch.equal(wte[GPT2_VOCAB:], rows)
    assert m.model.decoder.get_output_embeddings().weight is wte  # the LM head is the embedding matrix, resized
    torch.manual_seed(99)  # torch's global generator moves only the cross-attention, not the new rows
    other = warm(folders, init_seed=5)
    assert torch.equal(other.model.decoder.get_input_embeddings().weight[GPT2_VOCAB:], rows)
    c = m.cfg  # the config rebuilds it: both configs, where the weights came from, no folder
    assert (c.bert, c.gpt2) == ("", "") and c.decoder_config["vocab_size"] == V + 1 and c.decoder_config["add_cross_attention"]
    assert c.decoder_config["bos_token_id"] == V and c.encoder_config["vocab_size"] == tok.vocab_size
    assert c.pretrained["bert"]["folder"] == str(bert) and c.pretrained["gpt2"]["folder"] == str(gpt2)
    assert c.pretrained["bert"]["sha256"] == {"model.safetensors": hashlib.sha256((bert / "model.safetensors").read_bytes()).hexdigest()}
    assert c.pretrained["init_seed"] == 5 and c.pretrained["gpt2_vocab"] == GPT2_VOCAB


def test_forward_loss_gradients_and_a_short_generate(folders):
    torch.manual_seed(0)
    m = warm(folders)
    text, image = batch(folders[2])
    out = m(text, image)
    assert out["image_logits"].shape == (3, GRID * GRID, V) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []  # DDP needs every parameter in the graph
    m.eval()
    greedy = m.generate(text, temperature=0)
    assert greedy.shape == (3, GRID * GRID) and 0 <= int(greedy.min()) and int(greedy.max()) < V
    assert torch.equal(greedy, m.generate(text, temperature=0, use_cache=False))
    sampled = m.generate(text[:1], top_k=5, generator=torch.Generator().manual_seed(1))
    assert sampled.shape == (1, GRID * GRID)


def test_a_checkpoint_rebuilds_without_the_folders(folders, tmp_path):
    from t2i_models.train_prior import PriorTrainConfig, build_prior

    bert, gpt2, tok = folders
    torch.manual_seed(0)
    m = warm(folders).eval()
    text, image = batch(tok)
    before = m(text, image)["image_logits"]
    fp = save_prior(tmp_path / "ck" / "last.pt", m, tokens=tokens(tok))
    gone = tmp_path / "moved"
    gone.mkdir()
    shutil.move(bert, gone / "bert")
    shutil.move(gpt2, gone / "gpt2")
    with pytest.raises(T2IError, match="no such folder"):
        warm(folders)
    loaded, ck = load_prior(tmp_path / "ck" / "last.pt")
    assert ck["fingerprint"] == fp and loaded.cfg == m.cfg
    assert torch.equal(loaded(text, image)["image_logits"], before)
    assert loaded.model.decoder.get_output_embeddings().weight is loaded.model.decoder.get_input_embeddings().weight
    # a resumed training run rebuilds it the same way: from the checkpoint, not from model.bert / model.gpt2
    cfg = PriorTrainConfig(arch="g3_coco", image_tokens="i", text_tokens="t", out="o", steps=1,
                           model=dict(SIZES, bert=str(bert), gpt2=str(gpt2)))
    resumed = build_prior(cfg, tokens(tok), ck, tmp_path / "ck" / "last.pt")
    assert resumed.cfg == m.cfg and set(resumed.state_dict()) == set(ck["state_dict"])


def test_training_starts_from_the_folders_and_resumes_without_them(md_tokens, tmp_path):
    """``t2i train prior`` with ``model.bert`` / ``model.gpt2`` on MD-MNIST tokens (24 text ids,
    V = 16 on 32 × 32: GPT-2's 20 rows shrink to 17, none new), the linear schedule with a
    restart, stopped after 1 of 3 steps; with the folders moved away the rerun resumes from its
    checkpoint and ends where the uninterrupted run ends. The folders' dropout is 0: a resume does
    not restore torch's generator, so dropout would draw other masks after it."""
    import json

    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    from t2i_models.train_common import lr_at
    from t2i_models.train_prior import PriorTrainConfig, train_prior

    torch.manual_seed(7)
    bert, gpt2 = tmp_path / "bert", tmp_path / "gpt2"
    BertModel(BertConfig(vocab_size=24, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=16, pad_token_id=20, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(bert)
    GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=1024, bos_token_id=0, eos_token_id=0,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).save_pretrained(gpt2)
    kw = dict(arch="g3_coco", image_tokens=str(md_tokens / "img"), text_tokens=str(md_tokens / "text"), batch_size=2, num_workers=0,
              lr=3e-3, warmup=0, lr_schedule="linear", restarts=[[2, 1e-3]], steps=3, log_every=1, ckpt_every=1,
              model=dict(SIZES, bert=str(bert), gpt2=str(gpt2)))
    train_prior(PriorTrainConfig(out=str(tmp_path / "whole"), **kw))
    train_prior(PriorTrainConfig(out=str(tmp_path / "cut"), stop_after=1, **kw))
    shutil.move(bert, tmp_path / "bert-moved")
    shutil.move(gpt2, tmp_path / "gpt2-moved")
    train_prior(PriorTrainConfig(out=str(tmp_path / "cut"), **kw))
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("whole", "cut")}
    assert [r["loss"] for r in rows["whole"]] == [r["loss"] for r in rows["cut"]]
    c = PriorTrainConfig(out="o", **kw)
    assert [r["lr"] for r in rows["whole"]] == [lr_at(c, s, 0, 3) for s in range(3)] == [3e-3, 3e-3 / 2, 1e-3]
    (wa, ca), (_, cb) = (load_prior(tmp_path / name / "last.pt") for name in ("whole", "cut"))
    assert ca["fingerprint"] == cb["fingerprint"] and ca["config"]["pretrained"]["gpt2_vocab"] == GPT2_VOCAB
    assert wa.model.decoder.get_input_embeddings().weight.shape == (17, 32)


def test_g3_configs_saved_before_the_new_fields_rebuild_as_they_were(tmp_path):
    torch.manual_seed(0)
    m = g3_tiny().eval()
    old = {k: v for k, v in dataclasses.asdict(m.cfg).items()
           if k not in ("text_positions", "bert", "gpt2", "init_seed", "encoder_config", "decoder_config", "pretrained")}
    rebuilt = prior_from_config("g3", old)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert rebuilt.model.encoder.config.max_position_embeddings == m.cfg.text_len  # 0 = text_len, as before
    save_prior(tmp_path / "old.pt", m)
    loaded, _ = load_prior(tmp_path / "old.pt")
    text = torch.randint(0, 20, (2, 12))
    image = torch.randint(0, 32, (2, 16))
    assert torch.equal(loaded(text, image)["image_logits"], m(text, image)["image_logits"])


def test_g3_coco_is_bert_base_and_gpt2_small_for_the_openai_dvae():
    with torch.device("meta"):
        m = g3_coco()
    enc, dec = m.model.encoder.config, m.model.decoder.config
    assert (enc.vocab_size, enc.num_hidden_layers, enc.hidden_size, enc.num_attention_heads, enc.intermediate_size,
            enc.max_position_embeddings) == (30522, 12, 768, 12, 3072, 512)
    assert (dec.vocab_size, dec.n_layer, dec.n_embd, dec.n_head, dec.n_positions, dec.add_cross_attention) == (8193, 12, 768, 12, 1024, True)
    assert (m.cfg.text_len, m.cfg.pad_id, m.cfg.image_vocab, m.cfg.grid, m.bos) == (64, 0, 8192, 32, 8192)


def test_each_refusal_names_what_is_wrong(folders, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    bert, gpt2, tok = folders
    short = tmp_path / "gpt2-short"
    GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=8)).save_pretrained(short)
    untied = tmp_path / "gpt2-untied"
    GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                               tie_word_embeddings=False)).save_pretrained(untied)
    empty = tmp_path / "empty"
    empty.mkdir()
    base = dict(**tokens(tok), **SIZES)
    cases = [
        (dict(bert=bert, gpt2=short), "GPT-2 has n_positions 8, fewer than the 16 image tokens of a 4x4 grid"),
        (dict(bert=bert, gpt2=gpt2, text_len=20), "BERT has 16 positions, fewer than the text length 20"),
        (dict(bert=bert, gpt2=gpt2, text_vocab=tok.vocab_size + 1),
         f"BERT's vocabulary has {tok.vocab_size} ids, the text tokens' tokenizer {tok.vocab_size + 1}"),
        (dict(bert=tmp_path / "nowhere", gpt2=gpt2), r"model.bert=.*nowhere: no such folder"),
        (dict(bert=bert, gpt2=tmp_path / "nowhere"), r"model.gpt2=.*nowhere: no such folder"),
        (dict(bert=gpt2, gpt2=gpt2), "config.json has model_type 'gpt2', not 'bert'"),
        (dict(bert=bert, gpt2=bert), "config.json has model_type 'bert', not 'gpt2'"),
        (dict(bert=empty, gpt2=gpt2), "no config.json; not a transformers model folder"),
        (dict(bert=bert, gpt2=gpt2, width=64), "width 64 but BERT hidden_size 32; width 64 but GPT-2 n_embd 32"),
        (dict(bert=bert, gpt2=untied), "GPT-2's LM head is not tied to its input embeddings"),
        (dict(bert=bert), "bert and gpt2 go together"),
    ]
    for over, message in cases:
        over = {k: str(v) if k in ("bert", "gpt2") else v for k, v in over.items()}
        with pytest.raises(T2IError, match=message):
            g3_coco(**{**base, **over})


def seed_rate(step: int) -> Fraction:
    """The seed's schedule, computed here on its own: 10 warm-up steps to 3e-3, then straight
    lines to 0 at step 10,000 (from 3e-3 at step 10), 25,000 (from 1.8e-3) and 50,000 (from 1.5e-3)."""
    if step < 10:
        return Fraction(3, 1000) * (step + 1) / 10
    for start, end, peak in ((10, 10000, Fraction(3, 1000)), (10000, 25000, Fraction(18, 10000)), (25000, 50000, Fraction(15, 10000))):
        if step < end:
            return peak * (end - step) / (end - start)
    return Fraction(0)


def test_the_seeds_recipe_resolves_through_t2i_run(tmp_path, monkeypatch):
    from t2i_models.run import stage_config
    from t2i_models.train_common import lr_at, total_steps

    path = Path(__file__).resolve().parents[1] / "pipelines" / "coco-dalle.toml"  # the shipped recipe
    monkeypatch.chdir(tmp_path)
    cfg = stage_config(path, "train_prior")
    got = {k: getattr(cfg, k) for k in ("arch", "steps", "batch_size", "grad_accum", "optimizer", "weight_decay", "grad_clip", "lr",
                                         "warmup", "lr_schedule", "restarts", "eval_every")}
    assert got == dict(arch="g3_coco", steps=50000, batch_size=8, grad_accum=3, optimizer="adamw", weight_decay=0.0, grad_clip=1.0,
                       lr=0.003, warmup=10, lr_schedule="linear", restarts=[[10000, 0.0018], [25000, 0.0015]], eval_every=1000)
    assert cfg.batch_size * cfg.grad_accum == 24  # "an effective batch size of 24"
    assert cfg.model == {"bert": "pretrained/bert-base-uncased", "gpt2": "pretrained/gpt2"}
    total = total_steps(cfg, 10**6)
    assert total == 50000
    steps = (0, 9, 10, 9999, 10000, 24999, 25000, 49999)
    rates = {s: lr_at(cfg, s, 0, total) for s in steps}
    assert rates == {s: pytest.approx(float(seed_rate(s)), rel=1e-12, abs=0) for s in steps}
    assert (rates[0], rates[9], rates[10], rates[10000], rates[25000]) == (pytest.approx(3e-4), 0.003, 0.003, 0.0018, 0.0015)
    assert rates[9999] < 1e-6 and rates[24999] < 1e-6 and rates[49999] < 1e-6  # each line ends at 0 where the next begins
    with pytest.raises(T2IError, match=r"model.bert=pretrained/bert-base-uncased: no such folder"):
        g3_coco(**cfg.model)  # the folders are the user's to put there
    with torch.device("meta"):
        arch = g3_coco(**{k: v for k, v in cfg.model.items() if k not in ("bert", "gpt2")})
    assert arch.model.decoder.config.vocab_size == 8193
