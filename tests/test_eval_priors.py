"""The evaluation CLIP beyond MD-MNIST and ``t2i eval priors`` (issue 19), on a tiny stack built from
the real CUB images and captions in $T2I_REALDATA: 18 train / 23 test images at 32x32 (regime
prior), a word tokenizer trained on the train captions (L = 20 with BOS and EOS), a random tiny
dVAE with a 4x4 grid of 16 codes, G1 / G2 and a token CLIP trained a few steps each."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_data import text
from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import InProcessRunner
from t2i_data.tokenize import TokenizeConfig, tokenize
from t2i_models.caption_variants import CLASSES, words
from t2i_models.cli import main
from t2i_models.clip import CLIPConfig, clip_tiny, clip_tokens, clip_tokens_tiny
from t2i_models.eval_priors import EvalPriorsConfig, choose_captions, evaluate_priors, read_test_set

L = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Ops this small gain nothing from a second thread and lose several times when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_token_clip_sizes_its_patches_from_the_image_and_masks_padding():
    m = clip_tokens(image_size=128, text_vocab=500, text_len=32, pad_id=0)
    c = m.cfg
    assert (c.patch, c.width, c.layers, c.heads, c.mlp, c.embed, c.dropout, c.text_input) == (8, 128, 8, 8, 256, 128, 0.1, "tokens")  # Table 8
    assert m.image_tower.pos.shape == (1 + 16 * 16, 128) and m.text_tower.pos.shape == (1 + 32, 128) and m.text_emb.num_embeddings == 500
    assert [clip_tokens(image_size=s, text_vocab=9, text_len=4, pad_id=0).cfg.patch for s in (64, 256)] == [4, 16]
    assert clip_tokens_tiny(image_size=32, text_vocab=9, text_len=4, pad_id=0).cfg.patch == 8  # a 4x4 grid
    with pytest.raises(T2IError, match="clip_tokens cuts 16 x 16 patches; image_size 40 is not a multiple of 16: set model.patch"):
        clip_tokens(image_size=40, text_vocab=9, text_len=4, pad_id=0)
    assert clip_tokens(image_size=40, text_vocab=9, text_len=4, pad_id=0, patch=8).image_tower.pos.shape[0] == 1 + 25
    with pytest.raises(T2IError, match="clip_tokens needs text_vocab, text_len, pad_id"):
        clip_tokens(image_size=64)
    with pytest.raises(ValueError, match="pad_id -1 must be an id of the text vocabulary"):
        CLIPConfig(text_input="tokens", text_vocab=9)
    assert set(clip_tiny().state_dict()) == set(clip_tokens_tiny(image_size=128, text_vocab=9, text_len=12, pad_id=0).state_dict())

    torch.manual_seed(0)
    m = clip_tokens_tiny(image_size=32, text_vocab=50, text_len=10, pad_id=0).eval()
    rows = torch.tensor([[2, 5, 6, 7, 3, 0, 0, 0, 0, 0], [2, 9, 3, 0, 0, 0, 0, 0, 0, 0], [0] * 10])  # BOS .. EOS, padding; all padding
    with torch.no_grad():
        before = m.text_features(rows)
        m.text_emb.weight[0] += torch.randn(32)  # the pad embedding: no query attends to it
        m.text_tower.pos[6:] += torch.randn(5, 32)  # nor to the positions only padding holds
        after = m.text_features(rows)
        m.text_emb.weight[5] += torch.randn(32)  # a word of the first caption only
        changed = m.text_features(rows)
    assert torch.isfinite(before).all() and torch.allclose(before[:2], after[:2], atol=1e-6)
    assert not torch.allclose(changed[0], after[0], atol=1e-3) and torch.allclose(changed[1], after[1], atol=1e-6)
    with pytest.raises(ValueError, match=r"CLIP text tokens must be ids 0..49, got 0..50"):
        m.text_features(torch.tensor([[50] + [0] * 9]))
    with pytest.raises(ValueError, match=r"CLIP text tokens: expected shape \('\*', 10\), got \(1, 12\)"):
        m.text_features(torch.zeros(1, 12, dtype=torch.long))


@pytest.fixture(scope="module")
def cub(realdata, tmp_path_factory):
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode
    from t2i_models.train_prior import PriorTrainConfig, train_prior

    if not (realdata / "cub" / "CUB_200_2011" / "images.txt").is_file():
        pytest.skip(f"no CUB data in {realdata}")
    root = tmp_path_factory.mktemp("evalpriors")
    preprocess(PreprocessConfig("cub", str(realdata / "cub"), regime="prior", size=32, shard_size=8), root / "cub", InProcessRunner())
    captions, _ = text.training_captions(root / "cub" / "train")
    text.train("word", captions, None).save(root / "tk")
    tokenize(root / "tk", root / "cub", root / "text", TokenizeConfig(length=L, add_bos=True, add_eos=True), InProcessRunner())
    torch.manual_seed(0)
    save_autoencoder(root / "ae.pt", build_autoencoder("dvae_tiny", image_size=32, hidden=16, downsamples=3, vocab_size=16))
    encode(root / "ae.pt", root / "cub", root / "img", EncodeConfig(), InProcessRunner())
    for arch in ("g1_tiny", "g2_tiny"):
        train_prior(PriorTrainConfig(arch=arch, image_tokens=str(root / "img" / "train"), text_tokens=str(root / "text" / "train"),
                                     out=str(root / arch), steps=3, batch_size=8, warmup=1, num_workers=0))
    assert main(["-q", "train", "clip", "arch=clip_tokens_tiny", f"image_tokens={root / 'img' / 'train'}", f"text_tokens={root / 'text' / 'train'}",
                 f"autoencoder={root / 'ae.pt'}", f"out={root / 'clip'}", "steps=4", "batch_size=8", "num_workers=0"]) == 0
    return root


def test_train_clip_on_cub_records_the_token_space_and_refuses_misuse(cub, tmp_path, capsys):
    from t2i_models.checkpoint import load_clip
    from t2i_models.train_clip import ClipTrainConfig, train_clip

    model, ck = load_clip(cub / "clip" / "last.pt")
    manifest = json.loads((cub / "text" / "train" / "manifest.json").read_text())
    vocab = text.load_tokenizer(cub / "tk").vocab_size
    assert manifest["tokenizer"]["vocab_size"] == vocab and ck["step"] == 4
    assert ck["tokens"] == {"text_vocab": vocab, "text_len": L, "pad_id": 0, "image_size": 32, "grid": 4, "image_vocab": 16}
    assert ck["text_config"] == {"length": L, "add_bos": True, "add_eos": True} and ck["text_input"] == "tokens"
    assert ck["fingerprints"] == {"tokenizer": text.load_tokenizer(cub / "tk").fingerprint,
                                  "autoencoder": torch.load(cub / "ae.pt", weights_only=True)["fingerprint"]}
    assert (model.cfg.text_vocab, model.cfg.text_len, model.cfg.pad_id, model.cfg.image_size, model.cfg.patch) == (vocab, L, 0, 32, 8)
    capsys.readouterr()
    base = dict(image_tokens=str(cub / "img" / "train"), text_tokens=str(cub / "text" / "train"), autoencoder=str(cub / "ae.pt"),
                steps=1, batch_size=4, num_workers=0)
    with pytest.raises(T2IError, match="cub captions tokenized by a word tokenizer; .* for other captions train arch=clip_tokens"):
        train_clip(ClipTrainConfig(arch="clip_tiny", out=str(tmp_path / "a"), **base))
    with pytest.raises(T2IError, match="model.pad_id, model.text_len: set by the arch and the text-token manifest"):
        train_clip(ClipTrainConfig(arch="clip_tokens_tiny", out=str(tmp_path / "b"), model={"text_len": 8, "pad_id": 1}, **base))
    with pytest.raises(T2IError, match="clip_tokens_tiny: eval_image_tokens / eval_text_tokens are for the MD-MNIST CLIPs"):
        ClipTrainConfig(arch="clip_tokens_tiny", out="c", eval_image_tokens="i", eval_text_tokens="t", **base)


def eval_args(root, out, *extra):
    return ["-q", "eval", "priors", "--priors", str(root / "g1_tiny" / "last.pt"), str(root / "g2_tiny" / "last.pt"),
            "--clip", str(root / "clip" / "last.pt"), "--autoencoder", str(root / "ae.pt"), "--tokenizer", str(root / "tk"),
            "--image-tokens", str(root / "img" / "test"), "--text-tokens", str(root / "text" / "test"), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def evaluated(cub, tmp_path_factory):
    """``t2i eval priors`` run once through the command line: --variants cub, 12 captions in batches
    of 5, the grid settings from an [eval_priors] table of --config."""
    out = tmp_path_factory.mktemp("ev")
    (out / "p.toml").write_text("[eval_priors]\nvariants = \"mdmnist\"\nn = 99\ngrid_prompts = 2\ngrid_samples = 1\neval_batch_size = 10\n")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(eval_args(cub, out / "r", "--config", str(out / "p.toml"), "--variants", "cub", "--n", "12", "--batch-size", "5")) == 0
    return out / "r", buf.getvalue()


def test_eval_priors_end_to_end_writes_the_report_and_figures(cub, evaluated):
    out, printed = evaluated
    r = json.loads((out / "report.json").read_text())
    assert r["format"] == "t2i-eval-priors/1" and r["config"]["n"] == 12 and r["config"]["variants"] == "cub"  # flags over the table
    assert (r["config"]["grid_prompts"], r["config"]["m_max"]) == (2, 4)  # the table, and cub's default M
    assert r["eval_set"] == {"split": "test", "dataset": "cub", "digest": r["eval_set"]["digest"], "samples": 23, "captions": 230,
                             "chosen": 12, "skipped_not_round_trip": 0, "test_pass_samples": 23}
    assert r["priors"]["a"]["arch"] == "g1_tiny" and r["priors"]["b"]["kind"] == "g2" and r["clip"]["arch"] == "clip_tokens_tiny"
    assert set(r["fingerprints"]) == {"autoencoder", "tokenizer", "clip"} and r["fingerprints"]["tokenizer"] == text.load_tokenizer(cub / "tk").fingerprint
    c = r["cics"]
    assert c["a_wins"] + c["b_wins"] + c["ties"] == 12 and c["per_100"]["complete_batches"] == 0
    for s in ("a", "b"):
        ct = r["ctrs"][s]
        assert len(ct["picked"]) == len(ct["true_rank"]) == 5 and sum(ct["picked"]) == ct["complete_sets"] == ct["images"]
        assert [p["captions"] + p["without_variant"] for p in ct["per_m"]] == [12] * 4
        loss = r["loss"][s]
        assert loss["n"] == 23 and 0 < loss["mean"] < 2 * math.log(16) and sum(r["loss"]["histogram"][s]) == 23
    t = r["clip"]["test"]
    assert t["chance"] == 0.2 and sum(t["picked"]) == t["complete_sets"] <= 23 and [p["captions"] + p["without_variant"] for p in t["per_m"]] == [23] * 4
    assert r["variants"]["mode"] == "cub" and r["variants"]["truncated"] == [0] * 4 and "rufous" in r["variants"]["unknown_to_tokenizer"]
    assert len(r["warnings"]) == (t["top1"] <= t["chance"]) and printed.count("WARNING: CLIP picks") == len(r["warnings"])
    assert "CICS over 12 captions" in printed and f"captions without variant m = 1..4: {r['variants']['without_variant']}" in printed
    sizes = {}
    for name in r["figures"].values():
        with Image.open(out / name) as im:
            sizes[name] = im.size
            px = np.asarray(im.convert("RGB"))
        assert (px < 100).any() and (px == 255).all(axis=2).mean() > 0.3  # dark marks on a white page
    assert sizes["cics.png"] == sizes["ctrs.png"] == sizes["ctrs_per_m.png"] == sizes["loss_hist.png"] == (900, 480)
    assert sizes["samples.png"][0] == 2 * (128 + 4) + 4 + 16 and sizes["samples.png"][1] > 2 * 128  # 1 + 1 samples, 2 caption rows


def test_cics_and_ctrs_counts_equal_a_recomputation_from_the_saved_scores(cub, evaluated):
    out, _ = evaluated
    r = json.loads((out / "report.json").read_text())
    recs = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and len({(x["key"], x["caption"]) for x in recs}) == 12
    a0, b0 = [x["a"][0] for x in recs], [x["b"][0] for x in recs]
    wins = (sum(a > b for a, b in zip(a0, b0)), sum(b > a for a, b in zip(a0, b0)), sum(a == b for a, b in zip(a0, b0)))
    c = r["cics"]
    assert (c["a_wins"], c["b_wins"], c["ties"]) == wins and c["per_100"]["a_mean"] == round(100 * wins[0] / 12, 4)
    k, n = min(wins[:2]), wins[0] + wins[1]
    assert c["p_value"] == pytest.approx(min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0)
    without = [sum(x["variants"][m - 1] is None for x in recs) for m in range(1, 5)]
    assert r["variants"]["without_variant"] == without
    for s in ("a", "b"):
        ct = r["ctrs"][s]
        for m in range(1, 5):
            have = [x[s] for x in recs if x[s][m] is not None]
            assert ct["per_m"][m - 1] == {"m": m, "captions": len(have), "without_variant": 12 - len(have),
                                          "true_above": sum(v[0] > v[m] for v in have),
                                          "share": round(sum(v[0] > v[m] for v in have) / len(have), 6) if have else None}
        full = [x[s] for x in recs if None not in x[s]]
        picked, rank, ties = [0] * 5, [0] * 5, 0
        for v in full:
            top = max(v)
            picked[max(i for i in range(5) if v[i] == top)] += 1  # ties go to the larger m
            rank[sum(x >= v[0] for x in v[1:])] += 1
            ties += v.count(top) > 1
        assert (ct["picked"], ct["true_rank"], ct["ties"], ct["complete_sets"]) == (picked, rank, ties, len(full))
    lookup = {w: cls for cls, groups in CLASSES.items() for g in groups for w in g}
    for x in recs:  # the variants in the file: exactly m words changed, each within its class
        assert x["swappable"] == sum(v is not None for v in x["variants"]) or x["swappable"] >= 4
        for m, v in enumerate(x["variants"], start=1):
            if v is not None:
                diff = [(p, q) for p, q in zip(words(x["text"]), words(v)) if p != q]
                assert len(diff) == m and all(lookup[p] == lookup[q] for p, q in diff)


def test_the_caption_choice_is_seeded_not_the_first_n_and_the_run_is_deterministic(cub, evaluated, tmp_path):
    out, _ = evaluated
    tok = text.load_tokenizer(cub / "tk")
    ts = read_test_set(str(cub / "img" / "test"), str(cub / "text" / "test"), tok.fingerprint,
                       torch.load(cub / "ae.pt", weights_only=True)["fingerprint"])
    chosen, skipped = choose_captions(ts, tok, 0, 12)
    recs = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert [(ts.keys[i], j) for i, j, _ in chosen] == [(x["key"], x["caption"]) for x in recs] and skipped == 0
    assert [(ts.keys[i], j) for i, j, _ in chosen] != [(ts.keys[0], j) for j in range(10)] + [(ts.keys[1], 0), (ts.keys[1], 1)]
    assert len({i for i, _, _ in chosen}) >= 6  # spread over the set, not one sample's ten captions
    assert chosen != choose_captions(ts, tok, 1, 12)[0] and choose_captions(ts, tok, 0, 5)[0] == chosen[:5]
    with pytest.raises(T2IError, match="230 captions in the test set, 230 of them usable .*; --n at most 230"):
        choose_captions(ts, tok, 0, 231)
    cfg = EvalPriorsConfig(priors=(str(cub / "g1_tiny" / "last.pt"), str(cub / "g2_tiny" / "last.pt")), clip=str(cub / "clip" / "last.pt"),
                           autoencoder=str(cub / "ae.pt"), tokenizer=str(cub / "tk"), image_tokens=str(cub / "img" / "test"),
                           text_tokens=str(cub / "text" / "test"), variants="cub", out=str(tmp_path), n=12, batch_size=5,
                           grid_prompts=2, grid_samples=1, eval_batch_size=10)
    evaluate_priors(cfg)
    for name in ("report.json", "captions.jsonl"):  # the same config and seed: the same bytes
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_eval_priors_refuses_a_clip_of_another_tokenizer_or_token_space(cub, tmp_path, capsys):
    clip = torch.load(cub / "clip" / "last.pt", weights_only=True)

    def run_with(ck: dict, *extra) -> str:
        torch.save(ck, tmp_path / "clip.pt")
        args = eval_args(cub, tmp_path / "o", "--variants", "cub", "--n", "2", *extra)
        args[args.index("--clip") + 1] = str(tmp_path / "clip.pt")
        assert main(args) == 2
        return capsys.readouterr().err

    err = run_with(dict(clip, fingerprints=dict(clip["fingerprints"], tokenizer="f" * 64)))
    assert "the CLIP" in err and "trained on text of tokenizer ffffffffffffffff, but --tokenizer is" in err
    err = run_with(dict(clip, fingerprints=dict(clip["fingerprints"], autoencoder="e" * 64)))
    assert "reconstructions by autoencoder eeeeeeeeeeeeeeee" in err
    err = run_with(dict(clip, text_config={"length": L, "add_bos": False, "add_eos": True}))
    assert "tokenize the test split as the CLIP's train split was" in err
    err = run_with({k: v for k, v in clip.items() if k != "tokens"})
    assert "records no token settings" in err and "retrain it with 't2i train clip'" in err
    err = run_with(clip, "--variants", "mdmnist")
    assert "is not a 12-symbol MD-MNIST description; --variants mdmnist is for MD-MNIST captions" in err
    other = tmp_path / "tk2"
    text.train("word", ["a red bird"], None).save(other)
    args = eval_args(cub, tmp_path / "o", "--variants", "cub", "--tokenizer", str(other))
    assert main(args) == 2
    assert "text tokens made by tokenizer" in capsys.readouterr().err
    assert main(["-q", "eval", "priors", "--priors", "a", "b", "--clip", "c"]) == 2
    assert "autoencoder, tokenizer, image_tokens, text_tokens, variants, out needed" in capsys.readouterr().err


def test_t2i_run_runs_an_eval_priors_stage_and_then_finds_it_done(cub, evaluated, tmp_path, capsys):
    out, _ = evaluated
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[eval_priors]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {
        "priors": [str(cub / "g1_tiny" / "last.pt"), str(cub / "g2_tiny" / "last.pt")], "clip": str(cub / "clip" / "last.pt"),
        "autoencoder": str(cub / "ae.pt"), "tokenizer": str(cub / "tk"), "image_tokens": str(cub / "img" / "test"),
        "text_tokens": str(cub / "text" / "test"), "variants": "cub", "out": str(tmp_path / "ev"), "n": 12, "batch_size": 5,
        "grid_prompts": 2, "grid_samples": 1, "eval_batch_size": 10}.items()))
    assert main(["-q", "run", str(pipeline)]) == 0
    first = capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    assert "eval_priors: done in" in first and f"CICS A {r['cics']['a_wins']} / B {r['cics']['b_wins']} / ties {r['cics']['ties']}" in first
    assert (tmp_path / "ev" / "report.json").read_bytes() == (out / "report.json").read_bytes()  # the stage is the subcommand
    assert main(["-q", "run", str(pipeline)]) == 0
    assert "nothing to run: every chosen stage is done" in capsys.readouterr().out


def test_eval_priors_on_mdmnist_with_a_symbol_clip_and_the_mdmnist_variants(tmp_path, capsys):
    """The MD-MNIST route through ``t2i eval priors``: a symbol CLIP (clip_tiny) and --variants
    mdmnist on test descriptions tokenized with BOS / EOS (L = 14): every caption has all 12
    variants, each exactly the symbols changed that clip_eval.variant changes."""
    from t2i_data.mdmnist import SYMBOL_ID, MDMNISTConfig, build
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode
    from t2i_models.train_prior import PriorTrainConfig, train_prior

    build(MDMNISTConfig(seed=0, train=16, test=8, shard_size=8), tmp_path / "md", InProcessRunner())
    text.load_pretrained("mdmnist", None).save(tmp_path / "tk")
    tokenize(tmp_path / "tk", tmp_path / "md", tmp_path / "text", TokenizeConfig(length=14, add_bos=True, add_eos=True), InProcessRunner())
    torch.manual_seed(0)
    save_autoencoder(tmp_path / "ae.pt", build_autoencoder("dvae_tiny", image_size=128, hidden=16, downsamples=4, vocab_size=16))
    encode(tmp_path / "ae.pt", tmp_path / "md", tmp_path / "img", EncodeConfig(), InProcessRunner())
    for arch in ("g1_tiny", "g2_tiny"):
        train_prior(PriorTrainConfig(arch=arch, image_tokens=str(tmp_path / "img" / "train"), text_tokens=str(tmp_path / "text" / "train"),
                                     out=str(tmp_path / arch), steps=2, batch_size=8, warmup=1, num_workers=0))
    assert main(["-q", "train", "clip", "arch=clip_tiny", f"image_tokens={tmp_path / 'img' / 'train'}", f"text_tokens={tmp_path / 'text' / 'train'}",
                 f"autoencoder={tmp_path / 'ae.pt'}", f"out={tmp_path / 'clip'}", "steps=2", "batch_size=8", "num_workers=0"]) == 0
    cfg = EvalPriorsConfig(priors=(str(tmp_path / "g1_tiny" / "last.pt"), str(tmp_path / "g2_tiny" / "last.pt")), clip=str(tmp_path / "clip" / "last.pt"),
                           autoencoder=str(tmp_path / "ae.pt"), tokenizer=str(tmp_path / "tk"), image_tokens=str(tmp_path / "img" / "test"),
                           text_tokens=str(tmp_path / "text" / "test"), variants="mdmnist", out=str(tmp_path / "ev"), n=4, batch_size=4,
                           grid_prompts=1, grid_samples=1)
    r = evaluate_priors(cfg)
    assert r["variants"]["m_max"] == 12 and r["variants"]["without_variant"] == [0] * 12 and r["eval_set"]["chosen"] == 4
    assert r["clip"]["arch"] == "clip_tiny" and r["clip"]["test"]["complete_sets"] == 8 and sum(r["clip"]["test"]["picked"]) == 8
    for s in ("a", "b"):
        assert r["ctrs"][s]["complete_sets"] == 4 and sum(r["ctrs"][s]["picked"]) == sum(r["ctrs"][s]["true_rank"]) == 4
    for x in (json.loads(line) for line in (tmp_path / "ev" / "captions.jsonl").read_text().splitlines()):
        true = np.array([SYMBOL_ID[w] for w in x["text"].split()])
        assert len(true) == 12 and None not in x["a"] and len(x["a"]) == 13
        assert [int((np.array([SYMBOL_ID[w] for w in v.split()]) != true).sum()) for v in x["variants"]] == list(range(1, 13))


def test_eval_priors_reads_its_test_sets_by_url_as_from_the_folders(cub, tmp_path, monkeypatch):
    from fixtures_http import fetched_shards, http_server

    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "p.toml").write_text("[eval_priors]\ngrid_prompts = 1\ngrid_samples = 1\n")
    small = ("--variants", "cub", "--n", "4", "--batch-size", "4", "--config", str(tmp_path / "p.toml"))
    assert main(eval_args(cub, tmp_path / "local", *small)) == 0
    with http_server(cub) as (base, requests):
        argv = eval_args(cub, tmp_path / "http", *small)
        for flag in ("--image-tokens", "--text-tokens"):
            argv[argv.index(flag) + 1] = argv[argv.index(flag) + 1].replace(str(cub), base, 1)
        assert main(argv) == 0
    assert fetched_shards(requests, "/img/test") and fetched_shards(requests, "/text/test")
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("local", "http")]

    for r, where in zip(reports, (str(cub), base)):  # the settings name the sets as they were given; all else is equal
        assert (r["config"].pop("image_tokens"), r["config"].pop("text_tokens")) == (f"{where}/img/test", f"{where}/text/test")
    assert reports[1] == reports[0]
    pngs = sorted(p.name for p in (tmp_path / "local").glob("*.png"))
    assert pngs and all((tmp_path / "http" / n).read_bytes() == (tmp_path / "local" / n).read_bytes() for n in pngs)
