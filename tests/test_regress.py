"""The Transformer/VAE study's regression baselines (seed 000; t2i_models/regress.py, train_regress.py,
regress_eval.py): the study's model on the meta device, the target against codebook[tokens], the
triplet loss by hand, the histogram pairs' rules, both modes training on a COCO-like set (tiny BERT
last4-concat embeddings, a tiny VQ-VAE's tokens), the report against an independent recomputation,
exact resume, the pipeline's settings, and wrong uses (exit 2, one line)."""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_data.errors import T2IError
from t2i_data.runner import InProcessRunner
from t2i_models.builders import build_autoencoder
from t2i_models.checkpoint import load_autoencoder, load_regress, save_autoencoder
from t2i_models.cli import main
from t2i_models.encode import EncodeConfig, encode
from t2i_models.regress import (LatentSpace, build_regressor, draw_captions, histogram_pairs, pair_values, param_count,
                                triplet_loss, words)

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
THINGS = ["dog", "cat", "bus", "kite", "boat", "horse"]
PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "regress-coco.toml"


def coco_captioned(root: Path, n_train: int = 16, n_val: int = 8) -> Path:
    """A COCO layout of 48x40 JPEGs (a colour under random 8x8 cells) with three captions each, two
    of which name the colour and a thing; a third shares no word with most others'."""
    (root / "annotations").mkdir(parents=True)
    for split, ids in {"train2017": range(1, n_train + 1), "val2017": range(1000, 1000 + n_val)}.items():
        (root / split).mkdir()
        images, anns = [], []
        for image_id in ids:
            color, thing = list(COLORS)[image_id % 4], THINGS[image_id % 6]
            cells = np.random.default_rng(image_id).integers(0, 256, (5, 6, 3), dtype=np.uint8)
            arr = (np.array(COLORS[color], np.uint8) // 2 + np.kron(cells, np.ones((8, 8, 1), np.uint8)) // 2).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=95)
            name = f"{image_id:012d}.jpg"
            (root / split / name).write_bytes(buf.getvalue())
            images.append({"id": image_id, "file_name": name, "width": 48, "height": 40, "license": 1})
            for cap in (f"a {color} {thing}", f"the {thing} is {color}", f"{thing}s everywhere {image_id}"):
                anns.append({"image_id": image_id, "id": len(anns) + 1 + 10_000 * (split == "val2017"), "caption": cap})
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"info": {}, "licenses": [], "images": images,
                                                                                 "annotations": anns}))
    return root


def tiny_vq(images: Path, path: Path, seed: int = 0) -> Path:
    """vqvae_tiny with its codebook drawn from eval-mode encoder outputs of ``images`` (so encoding
    spreads over the codes; a fresh N(0, 1) codebook maps every cell to one code)."""
    from t2i_data.augment import stored_image
    from t2i_data.tario import iter_samples

    torch.manual_seed(seed)
    vq = build_autoencoder("vqvae_tiny")
    ims = [np.asarray(stored_image(s).resize((32, 32))) for t in sorted(images.glob("*.tar")) for s in iter_samples(t)]
    with torch.no_grad():
        z = vq.eval().latents(torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255)
        vq.codebook.init_from(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), generator=torch.Generator().manual_seed(seed))
    save_autoencoder(path, vq, step=0)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    fixtures = pytest.importorskip("fixtures_text_encoders")
    from t2i_models.embed import EmbedConfig, embed

    root = tmp_path_factory.mktemp("regress")
    src = coco_captioned(root / "coco")
    assert main(["-q", "preprocess", "coco", "--root", str(src), "--out", str(root / "img"), "--regime", "prior", "--size", "32",
                 "--workers", "0", "--shard-size", "8"]) == 0
    vq = tiny_vq(root / "img" / "train2017", root / "vq.pt")
    torch.manual_seed(1)
    save_autoencoder(root / "dvae.pt", build_autoencoder("dvae_tiny"), step=0)
    bert = fixtures.tiny_bert(root / "bert")
    for split in ("train2017", "val2017"):
        encode(vq, root / "img" / split, root / "tok" / split, EncodeConfig(views=2, seed=0), InProcessRunner())
        embed(bert, root / "img" / split, root / "emb" / split, EmbedConfig(pool="last4-concat"), InProcessRunner())
    encode(root / "dvae.pt", root / "img" / "train2017", root / "dtok", EncodeConfig(), InProcessRunner())
    embed(bert, root / "img" / "train2017", root / "emb32", EmbedConfig(pool="mean"), InProcessRunner())
    return root


def args(d: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "train", "regress", "arch=regress_tiny", f"text_emb={d / 'emb' / 'train2017'}", f"image_tokens={d / 'tok' / 'train2017'}",
            f"autoencoder={d / 'vq.pt'}", f"eval_text_emb={d / 'emb' / 'val2017'}", f"eval_image_tokens={d / 'tok' / 'val2017'}",
            f"pair_images={d / 'img' / 'val2017'}", f"out={out}", "batch_size=4", "num_workers=0", "log_every=1", "lr=1e-3", *extra]


def rows_of(folder: Path, member: str) -> dict[str, np.ndarray]:
    """{key: array} of every ``<key>.<member>`` in a set's shards, read with tarfile and np.load."""
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith("." + member):
                    out[m.name[: -len(member) - 1]] = np.load(io.BytesIO(tf.extractfile(m).read()))
    return out


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_study_model_on_the_meta_device():
    """Eight layers: 4096 -> 4096 seven times, then 4096 -> 131,072 (seed, "BERT Encoder with VQ-VAE"):
    7 x (4096^2 + 4096) + 4096 x 131,072 + 131,072 = 654,471,168 parameters, 2.6 GB in fp32, not allocated."""
    m = build_regressor("regress_study", "mlp", 4096, 131072, device="meta")
    shapes = [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
    assert shapes == [(4096, 4096)] * 7 + [(131072, 4096)] and all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == param_count(m.cfg) == 7 * (4096**2 + 4096) + 4096 * 131072 + 131072 == 654_471_168
    assert sum(isinstance(x, torch.nn.ReLU) for x in m.mlp) == 7 and isinstance(m.mlp[-1], torch.nn.Linear)
    s = build_regressor("regress_study", "siamese", 4096, 131072, device="meta")  # head 4096 -> 768 (seed: Sentence-BERT's 768)
    assert tuple(s.head.weight.shape) == (768, 4096) and tuple(s.mlp[0].weight.shape) == (4096, 768)
    assert sum(p.numel() for p in s.parameters()) == param_count(s.cfg) == 654_471_168 - 16_781_312 + (768 * 4096 + 4096) + (4096 * 768 + 768)
    assert s(torch.zeros(2, 4096, device="meta")).shape == (2, 131072)
    with pytest.raises(T2IError, match="head_dim=0 with mode=siamese"):
        build_regressor("regress_tiny", "siamese", 8, 8, head_dim=0)
    with pytest.raises(T2IError, match="model.depth: not a setting"):
        build_regressor("regress_tiny", "mlp", 8, 8, depth=3)
    with pytest.raises(T2IError, match="layers must be >= 1"):
        build_regressor("regress_tiny", "mlp", 8, 8, layers=0)
    with pytest.raises(ValueError, match=r"expected shape \('\*', 8\), got \(2, 5\)"):
        build_regressor("regress_tiny", "mlp", 8, 8)(torch.zeros(2, 5))


def test_the_target_is_the_codebook_row_of_each_token(data):
    vq, _ = load_autoencoder(data / "vq.pt")
    space = LatentSpace(vq, "vq")
    book = vq.codebook.codebook.detach().numpy()
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, space.vocab, (3, space.grid, space.grid)))
    got = space.target(tokens).numpy()
    want = np.zeros((3, space.dim, space.grid, space.grid), np.float32)
    for b in range(3):
        for y in range(space.grid):
            for x in range(space.grid):
                want[b, :, y, x] = book[int(tokens[b, y, x])]
    assert got.shape == (3, 16 * 8 * 8) and np.array_equal(got, want.reshape(3, -1))
    assert torch.equal(space.target(space.nearest(space.target(tokens))), space.target(tokens))  # each cell's own codeword is nearest
    assert torch.allclose(space.decode(space.target(tokens)), vq.decode(tokens).clamp(0, 1), atol=1e-6)
    with pytest.raises(T2IError, match="one-hot codes"):
        LatentSpace(build_autoencoder("dvae_tiny"), "dvae")
    with pytest.raises(T2IError, match="VQ-VAE-2"):
        LatentSpace(build_autoencoder("vqvae2_tiny"), "vqvae2")


def test_triplet_loss_equals_the_hand_computation():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    p = torch.tensor([[0.0, 1.0], [1.0, 2.5], [0.0, 3.0]])
    n = torch.tensor([[0.5, 0.0], [4.0, 6.0], [3.0, -1.0]])
    eps = 1e-6
    dist = lambda u, v: math.sqrt(sum((x - y + eps) ** 2 for x, y in zip(u, v)))  # noqa: E731 (torch's pairwise_distance)
    want = [max(dist(a[i].tolist(), p[i].tolist()) - dist(a[i].tolist(), n[i].tolist()) + 1.0, 0.0) for i in range(3)]
    assert want[1] == 0.0 and want[0] > 0 and want[2] > 1  # one triplet past the margin, one inside, one inverted
    assert float(triplet_loss(a, p, n)) == pytest.approx(sum(want) / 3, rel=1e-6)
    assert float(triplet_loss(a, p, n, margin=0.25)) == pytest.approx(sum(max(w - 0.75, 0) for w in want) / 3, rel=1e-6)
    cos, mse = pair_values(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]]))
    assert cos.tolist() == pytest.approx([0.0, 1.0, 0.0]) and mse.tolist() == pytest.approx([2.5, 1.0, 0.5])


def test_histogram_pairs_follow_the_seeds_rules():
    caps = [["a red dog", "the dog is red", "dogs everywhere"], ["blue kite", "a kite"], ["one"], [], ["green bus x", "the bus"]]
    counts = [len(c) for c in caps]
    pairs = histogram_pairs(counts, seed=3, captions=caps)
    assert pairs == histogram_pairs(counts, seed=3, captions=caps)  # seeded
    assert [p[0] for p in pairs["similar"]] == [0, 1, 4] and all(i == j and a != b for i, a, j, b in pairs["similar"])
    assert {p[0] for p in pairs["dissimilar"]} <= {0, 1, 2, 4} and pairs["dissimilar"]
    for i, a, j, b in pairs["dissimilar"]:
        assert i != j and not words(caps[i][a]) & words(caps[j][b])
    blind = histogram_pairs(counts, seed=3)  # no texts: any caption of another image
    assert all(i != j and counts[j] > 0 for i, _, j, _ in blind["dissimilar"]) and len(blind["dissimilar"]) == 4
    assert all(draw_captions(5, 0, f"k{i}", e)[0] != draw_captions(5, 0, f"k{i}", e)[1] for i in range(20) for e in range(3))


@pytest.mark.parametrize("mode", ["mlp", "siamese"])
def test_both_modes_learn_and_report_the_histograms(data, tmp_path, mode):
    out = tmp_path / mode
    assert main(args(data, out, f"mode={mode}", "steps=40")) == 0
    rows = metrics(out)
    train = [r for r in rows if r.get("split") == "train"]
    assert len(train) == 40 and np.mean([r["mse"] for r in train[-4:]]) < 0.5 * np.mean([r["mse"] for r in train[:4]])
    if mode == "siamese":
        assert all("triplet" in r for r in train) and all(r["loss"] == pytest.approx(r["mse"] + r["triplet"], rel=1e-5) for r in train)
    held = [r for r in rows if r.get("split") == "test"]
    assert len(held) == 1 and held[0]["samples"] == 8 and held[0]["mse"] > 0
    report = json.loads((out / "report.json").read_text())
    hist = report["histograms"]
    assert hist["set"] == "held-out" and hist["dissimilar_rule"] == "no words in common" and report["heldout"]["mse"] == held[0]["mse"]
    assert len(hist["similar"]) == 8 and 0 < len(hist["dissimilar"]) <= 8  # every val image has three captions
    assert set(hist["stages"]) == ({"input", "head", "latent"} if mode == "siamese" else {"input", "latent"})
    # independent recomputation: the rows from the shards (tarfile + np.load), captions from the COCO json
    emb = rows_of(data / "emb" / "val2017", "text_emb.npy")
    ann = json.loads((data / "coco" / "annotations" / "captions_val2017.json").read_text())["annotations"]
    texts: dict[int, list[str]] = {}
    for a in ann:
        texts.setdefault(a["image_id"], []).append(a["caption"])
    model, ck = load_regress(out / "last.pt")
    assert ck["autoencoder"]["fingerprint"] == load_autoencoder(data / "vq.pt")[1]["fingerprint"] and ck["mode"] == mode
    for kind in ("similar", "dissimilar"):
        u = np.stack([emb[k1][a].astype(np.float32) for k1, a, _, _ in hist[kind]])
        v = np.stack([emb[k2][b].astype(np.float32) for _, _, k2, b in hist[kind]])
        for k1, a, k2, b in hist[kind]:
            assert (k1 == k2 and a != b) if kind == "similar" else k1 != k2
            if kind == "dissimilar":
                t1, t2 = texts[int(k1.split("-")[-1])][a], texts[int(k2.split("-")[-1])][b]
                assert not set(t1.lower().split()) & set(t2.lower().split())
        for stage, (x, y) in {"input": (u, v), "latent": tuple(model(torch.from_numpy(w)).detach().double().numpy() for w in (u, v))}.items():
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
            assert np.allclose(hist["stages"][stage][kind]["cosine"], cos, rtol=1e-5, atol=1e-6)
            assert np.allclose(hist["stages"][stage][kind]["mse"], ((x - y) ** 2).mean(1), rtol=1e-4, atol=1e-9)
    for stage, per in hist["counts"].items():
        for measure, c in per.items():
            edges = np.array(c["edges"])
            for kind in ("similar", "dissimilar"):
                assert np.histogram(hist["stages"][stage][kind][measure], edges)[0].tolist() == c[kind]
                assert sum(c[kind]) == len(hist[kind])
    im = np.asarray(Image.open(out / "histograms.png").convert("L"))
    assert im.shape == (40 + 360 * len(hist["stages"]), 1520) and im.std() > 20
    grid = Image.open(out / "decoded.png")
    assert grid.size == (230 + 8 * 96, 3 * 96) and len(json.loads(grid.text["Legend"])) == 8
    assert all(c in sum(texts.values(), []) for c in json.loads(grid.text["Legend"]))


def test_a_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    common = ["mode=siamese", "steps=8", "ckpt_every=2", "pairs_n=4", "grid_n=0", "shuffle_buffer=4"]
    assert main(args(data, tmp_path / "whole", *common)) == 0
    assert main(args(data, tmp_path / "cut", *common, "stop_after=5")) == 0
    assert not (tmp_path / "cut" / "report.json").exists()
    assert main(args(data, tmp_path / "cut", *common)) == 0
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert [r["step"] for r in b if r.get("split") == "train"] == list(range(1, 9))
    assert [r.get("loss", r.get("mse")) for r in a] == [r.get("loss", r.get("mse")) for r in b]  # train losses, then the held-out mse
    assert load_regress(tmp_path / "whole" / "last.pt")[1]["fingerprint"] == load_regress(tmp_path / "cut" / "last.pt")[1]["fingerprint"]


def test_wrong_uses_stop_with_one_line(data, tmp_path, capsys):
    drop = ("eval_text_emb", "eval_image_tokens", "pair_images")  # no held-out pair, no caption texts
    assert main([a for a in args(data, tmp_path / "d", "steps=2", "pairs_n=5", "grid_n=0") if a.split("=")[0] not in drop]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    hist = report["histograms"]
    assert (hist["set"], hist["dissimilar_rule"], report["heldout"]) == ("train", "captions of two different images", None)
    assert len(hist["similar"]) == len(hist["dissimilar"]) == 5 and report["train_fit"]["samples"] == 16
    assert report["train_fit"]["mse"] > 0 and report["train_fit"]["mse_mean"] > 0
    other = tiny_vq(data / "img" / "train2017", tmp_path / "other.pt", seed=5)
    wrong = [
        ([f"text_emb={data / 'emb' / 'val2017'}"], "belongs to image set"),  # the val embeddings with the train tokens
        ([f"pair_images={data / 'img' / 'train2017'}"], "give the image set the histogram's tokens were encoded from"),
        ([f"autoencoder={other}"], "image tokens made by autoencoder"),  # a checkpoint that did not make the tokens
        ([f"image_tokens={data / 'dtok'}"], "one-hot codes"),  # dVAE tokens: no codebook vectors
        ([f"autoencoder={tmp_path / 'missing.pt'}"], "no such checkpoint"),
        ([f"text_emb={tmp_path / 'nowhere'}"], "no manifest here"),
        ([f"text_emb={data / 'img' / 'train2017'}"], "not a text-embedding set"),
        ([f"image_tokens={data / 'emb' / 'train2017'}"], "not an image-token set"),
        ([f"text_emb={data / 'emb32'}", f"out={tmp_path / 'd'}", "eval_text_emb=", "eval_image_tokens=", "pair_images="],
         "in_dim 128 -> 32"),  # resume with another D
        ([f"text_emb={data / 'emb32'}"], "holds 128-d embeddings, text_emb="),  # held-out embeddings of another D
        (["mode=siamese", f"out={tmp_path / 'd'}"], "head_dim 0 -> 768"),  # resume in the other mode
        (["mode=siamese", "batch_size=1"], "batch_size >= 2"),
        (["mode=siamese", "model.head_dim=0"], "head_dim=0 with mode=siamese"),
        (["mode=ridge"], "mode must be one of mlp, siamese"),
        (["eval_image_tokens="], "eval_text_emb and eval_image_tokens go together"),
        (["steps=0"], "steps=N or epochs=N needed"),
        (["model.depth=3"], "model.depth: not a setting"),
    ]
    for extra, message in wrong:
        names = {e.split("=")[0] for e in extra}
        base = [a for a in args(data, tmp_path / "w", "steps=2") if a.split("=")[0] not in names]
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)


def test_the_pipeline_carries_the_studys_settings():
    from t2i_models.run import load_stages

    stages = {s.name: s for s in load_stages(PIPELINE, [])}
    assert list(stages) == ["preprocess.ae", "preprocess.prior", "embed.bert", "embed.sbert", "train_autoencoder", "encode",
                            "train_regress.mlp", "train_regress.siamese"]
    mlp, siamese = stages["train_regress.mlp"].cfg, stages["train_regress.siamese"].cfg
    assert (mlp.mode, mlp.arch, siamese.mode, siamese.margin) == ("mlp", "regress_study", "siamese", 1.0)
    emb = {s.cfg.pool: s.cfg for s in stages.values() if s.kind == "embed"}
    assert emb["last4-concat"].layers in (None, (-4, -3, -2, -1)) and emb["last4-concat"].out in mlp.text_emb
    ae = stages["train_autoencoder"].cfg
    grid = 128 // 2 ** ae.model["downsamples"]
    assert ae.arch == "vqvae_mdmnist" and ae.model["dim"] * grid * grid == 131072  # seed: "the VQ-VAE latent vector of size 131072"
    assert siamese.text_emb != mlp.text_emb and mlp.image_tokens == siamese.image_tokens


def test_a_run_reads_its_sets_by_url_as_from_the_folders(data, tmp_path, monkeypatch):
    # the train pair, the held-out pair and pair_images over HTTP (the checkpoint stays a file): the run from the folders
    from fixtures_http import fetched_shards, http_server

    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "cache"))
    sets = ("text_emb", "image_tokens", "eval_text_emb", "eval_image_tokens", "pair_images")
    assert main(args(data, tmp_path / "local", "steps=4")) == 0
    with http_server(data) as (base, requests):
        by_url = [a.replace(str(data), base, 1) if a.split("=")[0] in sets else a for a in args(data, tmp_path / "http", "steps=4")]
        assert sum(base in a for a in by_url) == len(sets)
        assert main(by_url) == 0
    for prefix in ("/emb/train2017", "/tok/train2017", "/emb/val2017", "/tok/val2017", "/img/val2017"):
        assert fetched_shards(requests, prefix), prefix
    drop = lambda r: {k: v for k, v in r.items() if not k.endswith("_per_s")}  # noqa: E731
    assert [drop(r) for r in metrics(tmp_path / "http")] == [drop(r) for r in metrics(tmp_path / "local")]
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("local", "http")]
    assert reports[0]["heldout"] == reports[1]["heldout"] and reports[0]["histograms"] == reports[1]["histograms"]
