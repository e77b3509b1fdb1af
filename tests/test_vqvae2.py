"""VQ-VAE-2 (t2i_models/vqvae2.py) and its multi-level image-token shards, streams and top-level prior."""
import io
import json

import numpy as np
import pytest
import torch

from fixtures_sources import make_coco

from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.regimes import Regime
from t2i_data.runner import InProcessRunner
from t2i_data.schema import levels_of, schema_of
from t2i_data.tario import iter_samples
from t2i_data.token_stream import TokenStream
from t2i_models.builders import build_autoencoder
from t2i_models.checkpoint import load_autoencoder, save_autoencoder
from t2i_models.cli import main
from t2i_models.encode import EncodeConfig, check_reencode, encode, sample_views
from t2i_models.vqvae2 import VQVAE2

VIEWS = 2


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour blobs in [0, 1]: (n, 3, size, size), a learnable stand-in for photos."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    c = torch.rand(n, 3, 2, generator=g)
    centre = torch.rand(n, 2, generator=g)
    r = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2)[:, None]  # (n, 1, S, S)
    blob = torch.exp(-r / 0.05)
    return c[..., 0, None, None] * blob + c[..., 1, None, None] * (1 - blob)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """COCO stand-in at 32x32 (regime prior; 4 samples over 4 shards, one of them empty), word
    text tokens, a vqvae2_tiny whose codebooks started from the data, its 2-view token set."""
    from t2i_data import text
    from t2i_data.tokenize import TokenizeConfig, tokenize

    root = tmp_path_factory.mktemp("v2")
    preprocess(PreprocessConfig("coco", str(make_coco(root / "src")), regime="prior", size=32, shard_size=2), root / "img", InProcessRunner())
    images = root / "img" / "val2017"
    captions = [c for p in sorted(images.glob("*.tar")) for s in iter_samples(p) for c in json.loads(s["json"])["captions"]]
    text.train("word", captions, None).save(root / "tk")
    tokenize(root / "tk", images, root / "text", TokenizeConfig(length=6, add_bos=True, add_eos=True), InProcessRunner())
    torch.manual_seed(0)
    model = build_autoencoder("vqvae2_tiny")
    model.init_output_bias(_images(16), torch.Generator().manual_seed(0))  # codebooks from data latents: many codes in use
    save_autoencoder(root / "ae2.pt", model, step=0)
    m = encode(root / "ae2.pt", images, root / "tok", EncodeConfig(views=VIEWS, seed=1, batch_size=3), InProcessRunner())["val2017"]
    return {"root": root, "images": images, "text": root / "text", "tok": root / "tok", "ckpt": root / "ae2.pt", "manifest": m}


def _stored(tok_dir) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for p in sorted(tok_dir.glob("*.tar")):
        for s in iter_samples(p):
            out[s["__key__"]] = {k: np.load(io.BytesIO(v)) for k, v in s.items() if k.endswith(".npy")} | {"members": list(s)[1:]}
    return out


def test_shapes_per_level_at_the_full_and_tiny_configs_and_one_grid_is_refused():
    torch.manual_seed(0)
    full = build_autoencoder("vqvae2_coco256").eval()
    cfg = full.cfg  # Razavi et al. 2019, Table 4: 256x256 in, top 32x32, bottom 64x64, 512 codes of dim 64 each
    assert (cfg.image_size, cfg.levels, cfg.dim, cfg.beta, cfg.hidden, cfg.res_hidden, cfg.n_res) == (
        256, {"top": (32, 512), "bottom": (64, 512)}, 64, 0.25, 128, 64, 2)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        res = full(x)
        codes = full.encode_levels(x)
        assert res["recon"].shape == (1, 3, 256, 256) and full.decode_levels(codes).shape == (1, 3, 256, 256)
    assert codes["top"].shape == (1, 32, 32) and codes["bottom"].shape == (1, 64, 64) and codes["top"].dtype == torch.int64
    tiny = build_autoencoder("vqvae2_tiny").eval()
    codes = tiny.encode_levels(torch.rand(3, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in codes.items()} == {"top": (3, 4, 4), "bottom": (3, 8, 8)}
    for use in (lambda: tiny.cfg.grid, lambda: tiny.cfg.vocab_size, lambda: tiny.encode(torch.rand(1, 3, 32, 32)),
                lambda: tiny.decode(codes["top"])):
        with pytest.raises(T2IError, match=r"two token levels \(top 4x4 of 32 codes, bottom 8x8 of 32 codes\)"):
            use()
    with pytest.raises(T2IError, match="decodes both levels"):
        tiny.decode_levels({"top": codes["top"]})
    with pytest.raises(ValueError, match=r"vqvae2 bottom tokens: expected shape \('\*', 8, 8\), got \(3, 4, 4\)"):
        tiny.decode_levels({"top": codes["top"], "bottom": codes["top"]})
    with pytest.raises(ValueError, match=r"vqvae2 input: expected shape \('\*', 3, 32, 32\), got \(1, 3, 16, 16\)"):
        tiny.encode_levels(torch.rand(1, 3, 16, 16))
    with pytest.raises(T2IError, match="image_size must be a multiple of 8"):
        build_autoencoder("vqvae2_tiny", image_size=36)


def test_the_top_comes_from_the_bottom_encoder_and_the_bottom_is_conditioned_on_the_top():
    torch.manual_seed(0)
    m = build_autoencoder("vqvae2_tiny")
    x = _images(4, seed=3)
    m.init_output_bias(x, torch.Generator().manual_seed(0))
    m.eval()
    seen = {}
    h1 = m.enc_b.register_forward_hook(lambda mod, i, o: seen.__setitem__("f_b", o))
    h2 = m.enc_t.register_forward_pre_hook(lambda mod, i: seen.__setitem__("enc_t_in", i[0]))
    codes = m.encode_levels(x)
    h1.remove(), h2.remove()
    assert seen["enc_t_in"] is seen["f_b"]  # the top encoder reads the bottom encoder's output tensor itself
    assert len(torch.unique(codes["top"])) > 1
    # with the bottom encoder's output zeroed the images no longer reach the top: every image gets one top grid
    h = m.enc_b.register_forward_hook(lambda mod, i, o: torch.zeros_like(o))
    blind = m.encode_levels(x)["top"]
    h.remove()
    assert (blind == blind[:1]).all()

    # one top code changed at cell (0, 0): the bottom quantizer's input changes near it and not at the far corner
    with torch.no_grad():
        f_b = m.bottom_features(x)
        top2 = codes["top"].clone()
        top2[:, 0, 0] = (top2[:, 0, 0] + 1) % m.cfg.vocab_top
        z_a = m.bottom_latents(f_b, m.codebook_top.codebook[codes["top"]].permute(0, 3, 1, 2))
        z_b = m.bottom_latents(f_b, m.codebook_top.codebook[top2].permute(0, 3, 1, 2))
        diff = (z_a - z_b).abs().amax(dim=1)  # (B, 8, 8)
        # dec_t's receptive field: top cells 0..2 → bottom cells 0..6, so cell (7, 7) is out of reach
        assert (diff[:, 0, 0] > 1e-4).all() and (diff[:, 7, :] == 0).all() and (diff[:, :, 7] == 0).all()
        # the decoder reads both: either level's change moves the pixels
        y = m.decode_levels(codes)
        assert (m.decode_levels({"top": top2, "bottom": codes["bottom"]}) - y).abs().max() > 0
        bottom2 = codes["bottom"].clone()
        bottom2[:, 7, 7] = (bottom2[:, 7, 7] + 1) % m.cfg.vocab_bottom
        moved = (m.decode_levels({"top": codes["top"], "bottom": bottom2}) - y).abs().amax(dim=1)  # (B, 32, 32)
        assert moved[:, 28:, 28:].min() > 0 and moved[:, :16, :16].max() == 0  # a bottom cell is local: 4x4 pixels and a margin
    # the sampling rule's bottom codes (vqvae2.bottom_from_top): a valid grid, the same for the same top
    b1, b2 = m.bottom_from_top(codes["top"]), m.bottom_from_top(codes["top"].clone())
    assert b1.shape == (4, 8, 8) and torch.equal(b1, b2) and 0 <= int(b1.min()) and int(b1.max()) < m.cfg.vocab_bottom


def test_a_few_training_steps_reduce_the_loss_and_move_both_codebooks():
    torch.manual_seed(0)
    m = build_autoencoder("vqvae2_tiny")
    x = _images(8, seed=1)
    m.init_output_bias(x, torch.Generator().manual_seed(0))
    books = {k: b.codebook.clone() for k, b in m.books().items()}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for step in range(40):  # 0.046 → 0.020 here (the first ~20 steps move little: the output starts at the mean pixel)
        res = m(x, step=step)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        losses.append(float(res["loss"].detach()))
    assert losses[-1] < 0.6 * losses[0], losses
    assert {"commit_top", "commit_bottom", "perplexity_top", "perplexity_bottom", "used_top", "used_bottom"} <= set(res)
    assert float(res["loss"].detach()) == pytest.approx(float(res["rec"] + 0.25 * (res["commit_top"] + res["commit_bottom"])), rel=1e-5)
    for k, b in m.books().items():  # EMA updates on both levels
        assert not torch.equal(books[k], b.codebook), k


def test_checkpoint_round_trip(sets, tmp_path):
    model, ck = load_autoencoder(sets["ckpt"])
    assert isinstance(model, VQVAE2) and ck["kind"] == "vqvae2" and not model.training
    again, _ = load_autoencoder(sets["ckpt"])
    x = _images(2, seed=5)
    a, b = model.encode_levels(x), again.encode_levels(x)
    assert all(torch.equal(a[k], b[k]) for k in ("top", "bottom"))
    damaged = torch.load(sets["ckpt"], weights_only=True)
    damaged["state_dict"]["codebook_top.codebook"] += 1
    torch.save(damaged, tmp_path / "bad.pt")
    with pytest.raises(T2IError, match="do not match the fingerprint"):
        load_autoencoder(tmp_path / "bad.pt")


def test_encode_writes_one_member_per_level_equal_to_encode_levels_of_the_views(sets):
    m, stored = sets["manifest"], _stored(sets["tok"])
    assert m["autoencoder"]["levels"] == {"top": {"grid": 4, "vocab_size": 32}, "bottom": {"grid": 8, "vocab_size": 32}}
    assert (m["autoencoder"]["grid"], m["autoencoder"]["vocab_size"], m["autoencoder"]["dtype"]) == (8, 32, "uint16")
    assert list(levels_of(m)) == ["top", "bottom"] and list(schema_of(m)) == ["image_tokens.top.npy", "image_tokens.bottom.npy", "json"]
    model, _ = load_autoencoder(sets["ckpt"])
    regime, usage = Regime("prior", 32), {"top": np.zeros(32, int), "bottom": np.zeros(32, int)}
    for p in sorted(sets["images"].glob("*.tar")):
        for s in iter_samples(p):
            got = stored[s["__key__"]]
            assert got["members"] == ["image_tokens.top.npy", "image_tokens.bottom.npy", "json"]
            views = np.stack([a for _, a in sample_views(s, regime, 1, VIEWS)])  # (K, 32, 32, 3) uint8, as encode draws them
            want = model.encode_levels(torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255)
            for level, g in (("top", 4), ("bottom", 8)):
                arr = got[f"image_tokens.{level}.npy"]
                assert arr.dtype == np.uint16 and arr.shape == (VIEWS, g, g)
                assert np.array_equal(arr, want[level].numpy())
                usage[level] += np.bincount(arr.ravel(), minlength=32)
    assert len(stored) == 4 and m["stats"]["views"] == 4 * VIEWS
    for level in ("top", "bottom"):
        assert m["stats"]["code_usage"][level] == {str(c): int(n) for c, n in enumerate(usage[level]) if n}
        assert (usage[level] > 0).sum() > 3  # codebooks started from the data: several codes in use
    assert check_reencode(sets["ckpt"], sets["images"], sets["tok"], n=4) == 3


def test_verify_inspect_and_export_read_the_levels(sets, tmp_path, capsys):
    assert main(["verify", str(sets["tok"]), "--deep"]) == 0
    # the CLI's summary line counts codes per level (not the number of levels)
    capsys.readouterr()
    assert main(["-q", "encode", "--autoencoder", str(sets["ckpt"]), "--images", str(sets["images"]), "--out", str(tmp_path / "cli"),
                 "--views", str(VIEWS), "--seed", "1", "--workers", "0"]) == 0
    line = capsys.readouterr().out
    use = sets["manifest"]["stats"]["code_usage"]
    assert (f"top 4x4 ({len(use['top'])} of 32 codes used), bottom 8x8 ({len(use['bottom'])} of 32 codes used); aligned to "
            f"{sets['manifest']['aligned_to'][:16]}") in line
    capsys.readouterr()
    assert main(["inspect", str(sets["tok"]), "--out", str(tmp_path / "ins")]) == 0
    out = capsys.readouterr().out
    stored = _stored(sets["tok"])
    rep = json.loads((tmp_path / "ins" / "inspect.json").read_text())[0]
    for level in ("top", "bottom"):
        want = np.bincount(np.concatenate([s[f"image_tokens.{level}.npy"].ravel() for s in stored.values()]), minlength=32)
        assert rep["histograms"][f"code_usage_{level}"] == want.tolist()
        assert rep["rates"][f"codes_used_{level}"] == (want > 0).sum() / 32
        assert f"codes used ({level} level)" in out and f"{(want > 0).sum()} of 32" in out
        assert (tmp_path / "ins" / f"coco-val2017-image_tokens-code-usage-{level}.png").is_file()
    assert "code_usage" not in rep["histograms"]
    # preview decodes view 0 of both levels: the decoder's output rounded to 8 bits, computed here from the stored codes
    from t2i_data.preview import iter_previews
    from t2i_models.encode import decode_tokens

    model, _ = load_autoencoder(sets["ckpt"])
    shards = [str(p) for p in sorted(sets["tok"].glob("*.tar"))]
    shown = list(iter_previews(shards, lambda t: decode_tokens(model, t)))
    assert [k for k, _, _ in shown] == sorted(stored) and shown[0][2] == "view 0 decoded from levels top, bottom"
    for key, px, _ in shown:
        with torch.no_grad():
            y = model.decode_levels({lv: torch.from_numpy(stored[key][f"image_tokens.{lv}.npy"][:1].astype(np.int64)) for lv in ("top", "bottom")})
        assert np.array_equal(px, torch.floor(y[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy())
    assert main(["preview", str(sets["tok"]), "--autoencoder", str(sets["ckpt"]), "--out", str(tmp_path / "p.png")]) == 0
    torch.manual_seed(0)
    save_autoencoder(tmp_path / "vq.pt", build_autoencoder("vqvae_tiny"))
    with pytest.raises(T2IError, match="need a multi-level autoencoder"):
        list(iter_previews(shards, lambda t: decode_tokens(load_autoencoder(tmp_path / "vq.pt")[0], t)))
    pa = pytest.importorskip("pyarrow")
    assert main(["export", str(sets["tok"]), "--out", str(tmp_path / "ex")]) == 0
    with pa.memory_map(str(tmp_path / "ex" / "val2017" / "data-00000-of-00001.arrow")) as f:
        table = pa.ipc.open_stream(f).read_all()
    assert table.column_names[2:] == ["image_tokens_top", "image_tokens_bottom", "views"]
    row = table.to_pylist()[0]
    assert np.array_equal(np.array(row["image_tokens_top"]), stored[row["key"]]["image_tokens.top.npy"])
    assert np.array_equal(np.array(row["image_tokens_bottom"]), stored[row["key"]]["image_tokens.bottom.npy"])


def test_a_damaged_levels_record_is_refused():
    base = {"kind": "image_tokens", "dataset": "coco", "split": "val2017", "autoencoder": {"dtype": "uint16"}}
    for bad in ({"../x": {"grid": 4, "vocab_size": 8}}, {"top": {"grid": 0, "vocab_size": 8}}, {"top": {"grid": 4}}, [], {},
                {"top": {"grid": 4, "vocab_size": "8"}}):
        with pytest.raises(T2IError, match="autoencoder.levels"):
            levels_of({**base, "autoencoder": {"dtype": "uint16", "levels": bad}})


def test_token_stream_reads_the_named_level_and_refuses_others(sets, tmp_path):
    stored = _stored(sets["tok"])
    rows = {}
    for level, g in (("top", 4), ("bottom", 8)):
        ds = TokenStream(sets["tok"], sets["text"], batch_size=8, seed=3, shuffle_buffer=1, level=level)
        assert (ds.grid, ds.image_vocab) == (g, 32)
        ds.set_epoch(0)
        b = next(iter(ds))
        rows[level] = {k: r for k, r, ok in zip(b["keys"], b["image"].numpy(), b["valid"].numpy()) if ok}
    assert sorted(rows["top"]) == sorted(stored)
    for key in stored:  # each row is one stored view of that key; top and bottom come from the same view
        picks = {lv: [j for j in range(VIEWS) if np.array_equal(stored[key][f"image_tokens.{lv}.npy"][j].ravel(), rows[lv][key])]
                 for lv in ("top", "bottom")}
        assert picks["top"] and picks["bottom"] and set(picks["top"]) & set(picks["bottom"]), (key, picks)
    for level, msg in ((None, "no level named, but its levels are top, bottom; name one with level="),
                       ("middle", "level='middle', but its levels are top, bottom")):
        with pytest.raises(T2IError, match=msg):
            TokenStream(sets["tok"], sets["text"], batch_size=2, level=level)
    torch.manual_seed(0)
    save_autoencoder(tmp_path / "vq.pt", build_autoencoder("vqvae_tiny"))
    encode(tmp_path / "vq.pt", sets["images"], tmp_path / "one", EncodeConfig(), InProcessRunner())
    with pytest.raises(T2IError, match=r"level='top', but it is a single-grid set \(image_tokens.npy, no levels\); drop level"):
        TokenStream(tmp_path / "one", sets["text"], batch_size=2, level="top")


def _prior_args(sets, out, *more):
    return ["train", "prior", "arch=g1_tiny", f"image_tokens={sets['tok']}", f"text_tokens={sets['text']}", f"out={out}", "batch_size=2",
            "num_workers=0", "warmup=1", "lr=0.003", "log_every=1", "ckpt_every=1", *more]


def test_g1_models_the_top_level_with_text_resumes_and_samples(sets, tmp_path, capsys):
    assert main(_prior_args(sets, tmp_path / "whole", "steps=4", "level=top")) == 0
    assert main(_prior_args(sets, tmp_path / "cut", "steps=4", "level=top", "stop_after=2")) == 0
    assert main(_prior_args(sets, tmp_path / "cut", "steps=4", "level=top")) == 0
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines() if '"train"' in x] for d in ("whole", "cut")]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4] and [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    ck = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert ck["level"] == "top" and ck["tokens"]["grid"] == 4 and ck["tokens"]["image_vocab"] == 32 and ck["config"]["grid"] == 4
    capsys.readouterr()
    # the wrong level, no level, and a resume with another level: one line each, exit 2
    for args, msg in ((_prior_args(sets, tmp_path / "x", "steps=1", "level=middle"), "level='middle', but its levels are top, bottom"),
                      (_prior_args(sets, tmp_path / "y", "steps=1"), "no level named, but its levels are top, bottom"),
                      (_prior_args(sets, tmp_path / "whole", "steps=5", "level=bottom"), "models image-token level top; level='bottom'")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    # t2i sample decodes the top grids with the bottom codes of vqvae2.bottom_from_top
    prior = str(tmp_path / "whole" / "last.pt")
    args = ["sample", "--prior", prior, "--autoencoder", str(sets["ckpt"]), "--tokenizer", str(sets["root"] / "tk"), "--prompt", "a dog",
            "--out", str(tmp_path / "s"), "-n", "2", "--batch-size", "2"]
    assert main(args) == 0
    from t2i_data.pngio import decode_image

    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["models"]["prior"]["level"] == "top" and m["size"] == 32 and m["totals"]["samples"] == 2
    px = [decode_image(s["png"], "x") for p in sorted((tmp_path / "s").glob("*.tar")) for s in iter_samples(p)]
    assert len(px) == 2 and px[0].shape == (32, 32, 3)
    ck["level"] = "bottom"
    torch.save(ck, tmp_path / "bottom.pt")
    capsys.readouterr()
    assert main(args[:2] + [str(tmp_path / "bottom.pt")] + args[3:-6] + ["--out", str(tmp_path / "g.png")]) == 2
    assert "models the bottom level of a vqvae2's tokens" in capsys.readouterr().err


def test_train_autoencoder_cli_trains_vqvae2_tiny_and_refuses_eval_images(sets, tmp_path, capsys):
    preprocess(PreprocessConfig("coco", str(make_coco(tmp_path / "src")), regime="ae", size=32, shard_size=2), tmp_path / "ae",
               InProcessRunner())
    train = tmp_path / "ae" / "val2017"
    base = ["train", "autoencoder", "arch=vqvae2_tiny", f"images={train}", "batch_size=4", "num_workers=0", "log_every=1", "grid_every=100"]
    assert main(base + [f"out={tmp_path / 'run'}", "steps=3"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all({"commit_top", "perplexity_bottom", "used_top"} <= set(r) for r in rows)
    model, ck = load_autoencoder(tmp_path / "run" / "last.pt")
    assert ck["kind"] == "vqvae2" and ck["step"] == 3 and isinstance(model, VQVAE2)
    capsys.readouterr()
    assert main(base + [f"out={tmp_path / 'e'}", "steps=1", f"eval_images={train}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval_images: the held-out figures read one token grid; vqvae2_tiny is a VQ-VAE-2 with levels top, bottom" in err
    assert not (tmp_path / "e" / "last.pt").exists()


def test_the_pipeline_file_plans_and_its_settings_build(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from t2i_models.builders import CONFIGS, config_with
    from t2i_models.g1 import G1Config
    from t2i_models.train_prior import PriorTrainConfig

    path = Path(__file__).resolve().parent.parent / "pipelines" / "vqvae2-coco256.toml"
    doc = tomllib.loads(path.read_text())
    ae = CONFIGS[doc["train_autoencoder"]["arch"]]
    assert ae.image_size == doc["preprocess"]["size"] == 256 and ae.levels == {"top": (32, 512), "bottom": (64, 512)}
    prior = {k: v for k, v in doc["train_prior"].items() if k != "model"}
    assert PriorTrainConfig(**prior, model=doc["train_prior"]["model"]).level == "top"
    g1 = config_with(G1Config, dict(text_vocab=1000, text_len=64, pad_id=0, image_vocab=512, grid=32), doc["train_prior"]["model"], "g1")
    assert (g1.layers, g1.width, g1.heads, g1.mlp, g1.pad, g1.text_loss_weight) == (12, 768, 12, 3072, "learned", 0.125)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "7 stages" in out and "train_prior        to run (after tokenize, encode)" in out
    assert not any(tmp_path.iterdir())  # a dry run touches nothing
