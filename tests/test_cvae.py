"""The CVAE study (seed 002): models at full settings, the loss against a float64 reference, the
Fashion-MNIST route end to end through ``t2i run pipelines/cvae-fashion-mnist.toml`` on real MNIST
IDX bytes (the format Fashion-MNIST shares), resume, the seeded fraction subset, the figures and
their PCA fallback, the conv CVAE on a COCO-like set with text embeddings, and wrong uses."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_data.manifest import load_manifest
from t2i_data.pngio import encoder_id
from t2i_data.preprocess import encode_jpeg
from t2i_data.rng import key_ids, keyed_u64, stream_id
from t2i_data.sources.mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from t2i_data.subset import SubsetShardStream, kept_mask
from t2i_data.tario import iter_samples
from t2i_models.checkpoint import load_cvae
from t2i_models.cli import main
from t2i_models.cvae import build_cvae, cvae_conv_coco64, cvae_mlp_fmnist
from t2i_models.train_autoencoder import to_float_images
from t2i_models.train_cvae import CVAETrainConfig, class_decode, train_cvae

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "cvae-fashion-mnist.toml"
MNIST = Path("/work/shared/realdata/mnist")
N_TRAIN, N_TEST = 96, 40
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def idx(arr: np.ndarray, magic: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def source():
    """(images, labels) per split: the first MNIST test images, written as Fashion-MNIST IDX files."""
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("no real MNIST IDX files under /work/shared/realdata/mnist")
    im = read_idx(MNIST / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC)
    lb = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)
    return {"train": (im[:N_TRAIN], lb[:N_TRAIN]), "test": (im[N_TRAIN:N_TRAIN + N_TEST], lb[N_TRAIN:N_TRAIN + N_TEST])}


def overrides(base: Path, **more) -> list[str]:
    values = {"preprocess.root": base / "src", "preprocess.out": base / "shards", "preprocess.shard_size": 32, "preprocess.workers": 0,
              "train_cvae.images": base / "shards" / "train", "train_cvae.eval_images": base / "shards" / "test",
              "train_cvae.out": base / "run", "train_cvae.epochs": 6, "train_cvae.batch_size": 16, "train_cvae.num_workers": 0,
              "train_cvae.log_every": 1, "train_cvae.latent_n": N_TEST, "train_cvae.model.hidden": 64, "train_cvae.model.latent": 8,
              **more}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory, source):
    """The pipeline file run end to end at tiny overrides: preprocess (center 28, lossless PNG) + train_cvae."""
    base = tmp_path_factory.mktemp("cvae")
    (base / "src").mkdir()
    for split, stems in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        (base / "src" / stems[0]).write_bytes(idx(source[split][0], 2051))
        (base / "src" / stems[1]).write_bytes(idx(source[split][1], 2049))
    assert main(["-q", "run", str(PIPELINE), *overrides(base)]) == 0
    return base


def test_parameter_counts_and_shapes_at_the_studys_settings():
    mlp = cvae_mlp_fmnist()
    # seed §3.2 / §4.1: W1 (784+10 -> 400), W21 / W22 (400 -> 20), W3 (20+10 -> 400), W4 (400 -> 784), with biases
    expected = (794 * 400 + 400) + 2 * (400 * 20 + 20) + (30 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.numel() for p in mlp.parameters()) == expected == 660_824
    x, c = torch.rand(3, 1, 28, 28), torch.tensor([0, 4, 9])
    mu, logvar = mlp.encode(x, c)
    assert mu.shape == logvar.shape == (3, 20) and mlp.decode(mu, c).shape == (3, 1, 28, 28)
    conv = cvae_conv_coco64()
    # seed §3.3 / §4.2: convs k4 3->64->128->256->512 (64 -> 4 px), [512·4·4 | 768] -> 128 twice, [128 | 768] -> 512·4·4, mirrored
    convs = sum(a * b * 16 + b for a, b in [(3, 64), (64, 128), (128, 256), (256, 512)])
    deconvs = sum(a * b * 16 + b for a, b in [(512, 256), (256, 128), (128, 64), (64, 3)])
    linear = 2 * ((8192 + 768) * 128 + 128) + (128 + 768) * 8192 + 8192
    assert sum(p.numel() for p in conv.parameters()) == convs + deconvs + linear == 15_154_819
    x, e = torch.rand(2, 3, 64, 64), torch.randn(2, 768)
    mu, logvar = conv.encode(x, e)
    assert mu.shape == (2, 128) and conv.decode(mu, e).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"text embedding: expected shape \('\*', 768\), got \(2, 32\)"):
        conv.encode(x, torch.randn(2, 32))


def test_loss_is_bce_plus_kl_of_a_float64_reference():
    torch.manual_seed(3)
    m = build_cvae("cvae_mlp_tiny")
    x = torch.rand(5, 1, 28, 28)
    c = torch.tensor([0, 3, 3, 7, 9])
    res = m(x, c, generator=torch.Generator().manual_seed(11))
    eps = torch.randn((5, 4), generator=torch.Generator().manual_seed(11)).double().numpy()
    W = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}
    onehot = np.eye(10)[c.numpy()]
    h = np.maximum(0, np.concatenate([x.double().numpy().reshape(5, -1), onehot], 1) @ W["fc1.weight"].T + W["fc1.bias"])
    mu, lv = h @ W["fc21.weight"].T + W["fc21.bias"], h @ W["fc22.weight"].T + W["fc22.bias"]
    z = mu + eps * np.exp(0.5 * lv)
    h3 = np.maximum(0, np.concatenate([z, onehot], 1) @ W["fc3.weight"].T + W["fc3.bias"])
    p = 1 / (1 + np.exp(-(h3 @ W["fc4.weight"].T + W["fc4.bias"])))
    t = x.double().numpy().reshape(5, -1)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(1)
    kl = 0.5 * (np.exp(lv) + mu**2 - 1 - lv).sum(1)
    assert float(res["rec"].detach()) == pytest.approx(bce.mean(), rel=1e-5)
    assert float(res["kl"].detach()) == pytest.approx(kl.mean(), rel=1e-4)
    assert float(res["loss"].detach()) == pytest.approx((bce + kl).mean(), rel=1e-5)


def test_fashion_mnist_pixels_reach_the_model_exactly(fmnist, source):
    """center-28 stores the source unresampled as a lossless 1-channel PNG; the model's input (the
    trainer's decode, then ``to_float_images``) is the IDX bytes / 255 exactly, every pixel."""
    m = load_manifest(fmnist / "shards" / "train" / "manifest.json")
    assert (m["regime"], m["size"]) == ("center", 28) and m["sources"]["fashion_mnist"]["classes"] == CLASSES
    assert "jpeg_quality" not in m["config"] and m["encoder"]["png"] == encoder_id(1)
    decode = class_decode(28, 1, 10)
    images, labels = source["train"]
    seen = []
    for shard in m["shards"]:
        for s in iter_samples(fmnist / "shards" / "train" / shard["name"]):
            i = int(s["__key__"].rsplit("-", 1)[1])
            assert "jpg" not in s and Image.open(__import__("io").BytesIO(s["png"])).mode == "L"
            got = decode(s, 0)
            assert got["image"].shape == (1, 28, 28) and got["image"].dtype == torch.uint8
            x = to_float_images(got["image"][None])
            assert torch.equal(x, torch.from_numpy(images[i].astype(np.float32) / np.float32(255))[None, None]), s["__key__"]
            assert int(got["label"]) == int(labels[i])
            seen.append(i)
    assert seen == list(range(N_TRAIN))
    # real MNIST strokes: JPEG at quality 100 (what this set stored before) does move some of these pixels
    jpeg = [np.asarray(Image.open(__import__("io").BytesIO(encode_jpeg(Image.fromarray(a).convert("RGB"), 100))).convert("L")) for a in images]
    assert not np.array_equal(np.stack(jpeg), images)


def test_training_reduces_the_loss_and_logs_bce_and_kl(fmnist):
    rows = [json.loads(line) for line in (fmnist / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert len(train) == 6 * (N_TRAIN // 16) and all({"loss", "bce", "kl", "lr"} <= set(r) for r in train)
    assert all(r["loss"] == pytest.approx(r["bce"] + r["kl"], abs=1e-3) for r in train)
    first, last = np.mean([r["loss"] for r in train[:3]]), np.mean([r["loss"] for r in train[-3:]])
    assert last < 0.7 * first, (first, last)
    test = [r for r in rows if r.get("split") == "test"]
    assert len(test) == 1 and test[0]["images"] == N_TEST and test[0]["loss"] == pytest.approx(test[0]["bce"] + test[0]["kl"], abs=1e-3)
    model, ck = load_cvae(fmnist / "run" / "last.pt")
    assert model.cfg.hidden == 64 and ck["subset"] == {"fraction": 1.0, "seed": 0, "kept": N_TRAIN, "total": N_TRAIN}


def test_figures_are_labelled_and_not_blank(fmnist):
    run = fmnist / "run"
    im = Image.open(run / "samples.png")
    assert json.loads(im.text["Legend"]) == [f"{i}: {c}" for i, c in enumerate(CLASSES)] and "one row per class" in im.text["Title"]
    arr = np.asarray(im.convert("L")).astype(float)
    assert im.width > 8 * 56 and im.height > 10 * 56 and arr.std() > 10
    lat = Image.open(run / "latent-tsne.png")
    assert lat.text["Method"] == "t-SNE" and json.loads(lat.text["Legend"]) == [f"{i}: {c}" for i, c in enumerate(CLASSES)]
    assert f"for {N_TEST} held-out images" in lat.text["Title"] and lat.size == (900, 640)
    colours = {tuple(p) for p in np.asarray(lat.convert("RGB")).reshape(-1, 3)}
    assert len(colours) > 30  # dots in the class colours, not an empty frame
    assert Image.open(run / "loss.png").text["Title"] == "CVAE training loss = BCE + KL"
    state = json.loads((run / "t2i-run.json").read_text())
    assert state["status"] == "done" and state["output"]["step"] == 6 * (N_TRAIN // 16)


def test_pca_fallback_without_scikit_learn_is_labelled(tmp_path, monkeypatch, caplog):
    from t2i_models.cvae_figures import latent_figure

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(30, 5)) * np.array([5, 1, 0.1, 0.1, 0.1])
    path = latent_figure(mu, np.arange(30) % 3, ["a", "b", "c"], tmp_path, 0, "held-out")
    assert path.name == "latent-pca.png"
    im = Image.open(path)
    assert im.text["Method"] == "PCA" and "scikit-learn not installed: PCA instead of t-SNE" in im.text["Title"]
    assert "scikit-learn is not installed" in caplog.text


def test_resume_gives_the_weights_of_an_uninterrupted_run(fmnist, tmp_path):
    common = dict(arch="cvae_mlp_tiny", images=str(fmnist / "shards" / "train"), batch_size=16, num_workers=0, latent_n=0,
                  ckpt_every=4, log_every=100, seed=5)
    whole = train_cvae(CVAETrainConfig(out=str(tmp_path / "a"), steps=10, **common))
    train_cvae(CVAETrainConfig(out=str(tmp_path / "b"), steps=7, **common))  # stops mid-epoch 1 (6 batches per epoch)
    resumed = train_cvae(CVAETrainConfig(out=str(tmp_path / "b"), steps=10, **common))
    assert resumed["step"] == 10 and resumed["fingerprint"] == whole["fingerprint"]
    other = train_cvae(CVAETrainConfig(out=str(tmp_path / "c"), steps=10, **{**common, "seed": 6}))
    assert other["fingerprint"] != whole["fingerprint"]


def test_fraction_subset_is_seeded_by_key_not_a_prefix(fmnist):
    train = fmnist / "shards" / "train"
    keys = [s["__key__"] for sh in load_manifest(train / "manifest.json")["shards"] for s in iter_samples(train / sh["name"])]
    decode = class_decode(28, 1, 10)
    a = SubsetShardStream(train, decode, 4, seed=0, fraction=0.5)
    b = SubsetShardStream(train, decode, 4, seed=0, fraction=0.5, world_size=2, rank=1)
    expected = [k for k in keys if int(keyed_u64(0, stream_id("fraction"), key_ids([k]), 0)[0]) / 2**64 < 0.5]
    assert a.kept_keys() == b.kept_keys() == expected and a.total == N_TRAIN and a.kept == len(expected)
    assert 0 < a.kept < N_TRAIN and expected != keys[: a.kept]  # not the first N
    assert SubsetShardStream(train, decode, 4, seed=1, fraction=0.5).kept_keys() != expected
    for workers in (0, 2):  # an epoch streams only kept keys, whatever the worker count
        a.set_epoch(0, 0, workers)
        seen = []
        for w in range(max(workers, 1)):
            share = a.share(w, max(workers, 1), "shuffle")
            seen += [s["__key__"] for _, s in a._samples(share.ranges, {})]
        assert len(seen) == len(set(seen)) == a.epoch_samples(workers) and set(seen) <= set(expected)
    full = SubsetShardStream(train, decode, 4, seed=0, fraction=1.0)
    assert full.kept_keys() == keys and kept_mask(keys, 9, 1.0).all()


def test_fraction_is_recorded_and_a_changed_subset_is_refused_mid_epoch(fmnist, tmp_path, capsys):
    args = ["-q", "train", "cvae", "arch=cvae_mlp_tiny", f"images={fmnist / 'shards' / 'train'}", f"out={tmp_path / 'r'}",
            "batch_size=8", "num_workers=0", "latent_n=0", "fraction=0.5"]
    assert main(args + ["steps=2"]) == 0
    out = capsys.readouterr().out
    kept = SubsetShardStream(fmnist / "shards" / "train", class_decode(28, 1, 10), 8, fraction=0.5).kept
    assert f"on {kept:,} of {N_TRAIN:,} train samples (fraction 0.5, seed 0)" in out
    assert main(args[:-1] + ["fraction=0.6", "steps=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "subset fraction=0.5" in err and "subset fraction=0.6" in err


@pytest.mark.parametrize("extra,message", [
    (["fraction=0"], "fraction must be a share of the samples in (0, 1]"),
    (["fraction=1.5"], "fraction must be a share of the samples in (0, 1]"),
    (["arch=cvae_conv_tiny"], "give text_emb=DIR"),
    (["text_emb=/nowhere"], "is conditioned on classes, not text"),
    (["model.num_classes=5"], "names 10 classes; model.num_classes=5"),
    (["model.depth=3"], "model.depth: not a setting of cvae_mlp_tiny"),
    (["arch=cvae_nope"], "arch must be one of"),
])
def test_wrong_uses_stop_with_one_line(fmnist, tmp_path, capsys, extra, message):
    args = ["-q", "train", "cvae", "arch=cvae_mlp_tiny", f"images={fmnist / 'shards' / 'train'}", f"out={tmp_path / 'r'}", "steps=1",
            "num_workers=0", "batch_size=8", "latent_n=0"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_set_stored_for_random_crops_or_without_classes_is_refused(fmnist, tmp_path, capsys):
    ae = tmp_path / "ae"
    assert main(["-q", "preprocess", "fashion_mnist", "--root", str(fmnist / "src"), "--config", str(ROOT / "pipelines" / "fashion-mnist-32.toml"),
                 "--out", str(ae), "--workers", "0", "--split", "test"]) == 0
    base = ["-q", "train", "cvae", "arch=cvae_mlp_tiny", f"out={tmp_path / 'r'}", "steps=1", "num_workers=0", "batch_size=8"]
    assert main(base + [f"images={ae / 'test'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds ae-32 images" in err and "--regime center --size N" in err
    assert main(["-q", "mdmnist", "build", "--out", str(tmp_path / "md"), "--train", "16", "--test", "0", "--workers", "0"]) == 0
    assert main(base + [f"images={tmp_path / 'md' / 'train'}", "model.image_size=64", "model.channels=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no classes" in err


def test_a_checkpoint_of_other_model_settings_is_not_resumed(fmnist, tmp_path, capsys):
    base = ["-q", "train", "cvae", "arch=cvae_mlp_tiny", f"images={fmnist / 'shards' / 'train'}", f"out={tmp_path / 'r'}", "steps=1",
            "num_workers=0", "batch_size=8", "latent_n=0"]
    assert main(base) == 0
    assert main(base[:-4] + ["steps=2", "num_workers=0", "batch_size=8", "latent_n=0", "model.hidden=16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a cvae_mlp_tiny with other settings (hidden 32 -> 16)" in err


def test_conv_cvae_learns_a_fixed_batch():
    torch.manual_seed(0)
    m = build_cvae("cvae_conv_tiny")
    x = torch.zeros(4, 3, 16, 16)
    for i in range(4):  # binary pixels (the BCE can go to 0): image i bright in its top 4(i+1) rows
        x[i, :, : 4 * (i + 1)] = 1
    e = torch.randn(4, 32)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        res = m(x, e, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        losses.append(float(res["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert m.sample(e, torch.Generator().manual_seed(0)).shape == (4, 3, 16, 16)


def test_coco_pipeline_carries_the_studys_settings(capsys):
    from t2i_models.run import load_stages

    stages = {s.name: s for s in load_stages(ROOT / "pipelines" / "cvae-coco64.toml", [])}
    cfg = stages["train_cvae"].cfg
    assert (cfg.arch, cfg.lr, cfg.epochs, cfg.fraction, cfg.optimizer) == ("cvae_conv_coco64", 1e-4, 20, 0.3, "adam")
    assert cfg.model == {"latent": 128, "base": 64, "levels": 4, "recon": "bce"}
    pre = stages["preprocess"].cfg
    assert (pre.dataset, pre.regime, pre.size) == ("coco", "center", 64)
    emb = stages["embed"].cfg  # the embeddings between the two, on both splits, where train_cvae reads them
    assert (emb.pool, emb.images, emb.out) == ("mean", "data/cvae-coco64/shards", "data/cvae-coco64/emb") and cfg.text_emb == f"{emb.out}/train2017"
    fm = {s.name: s for s in load_stages(PIPELINE, [])}["train_cvae"].cfg
    assert (fm.arch, fm.lr, fm.epochs, fm.batch_size, fm.model) == ("cvae_mlp_fmnist", 1e-3, 50, 128,
                                                                    {"hidden": 400, "latent": 20, "recon": "bce"})


def coco_like(root: Path, n_train: int = 24, n_val: int = 6) -> Path:
    """A COCO layout with n_train + n_val 24x20 JPEGs of flat colours and two captions each."""
    import io

    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, ids in {"train2017": range(1, n_train + 1), "val2017": range(1000, 1000 + n_val)}.items():
        (root / split).mkdir()
        images, anns = [], []
        for image_id in ids:
            name = f"{image_id:012d}.jpg"
            arr = np.zeros((20, 24, 3), np.uint8) + rng.integers(0, 256, 3).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=95)
            (root / split / name).write_bytes(buf.getvalue())
            images.append({"id": image_id, "file_name": name, "width": 24, "height": 20, "license": 1})
            for j in range(2):
                anns.append({"image_id": image_id, "id": len(anns) + 1 + 10_000 * (split == "val2017"),
                             "caption": f"a flat picture number {image_id}, caption {j}"})
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"info": {}, "licenses": [], "images": images,
                                                                                 "annotations": anns}))
    return root


def _split_dir(folder: Path, split: str) -> Path:
    return next(p.parent for p in folder.rglob("manifest.json") if load_manifest(p)["split"] == split)


def test_conv_cvae_trains_on_coco_like_images_with_text_embeddings(tmp_path, capsys):
    embed_mod = pytest.importorskip("t2i_models.embed")
    fixtures = pytest.importorskip("fixtures_text_encoders")
    from t2i_data.runner import InProcessRunner

    src = coco_like(tmp_path / "coco")
    assert main(["-q", "preprocess", "coco", "--root", str(src), "--out", str(tmp_path / "shards"), "--regime", "center",
                 "--size", "16", "--workers", "0"]) == 0
    enc = fixtures.tiny_bert(tmp_path / "bert")
    # the build folder of both splits -> emb/<split>/, as t2i tokenize and t2i encode lay derived sets out
    embed_mod.embed(enc, tmp_path / "shards", tmp_path / "emb", embed_mod.EmbedConfig(), InProcessRunner())
    train_emb, val_emb = _split_dir(tmp_path / "emb", "train2017"), _split_dir(tmp_path / "emb", "val2017")
    dim = load_manifest(train_emb / "manifest.json")["text_encoder"]["dim"]
    args = ["-q", "train", "cvae", "arch=cvae_conv_tiny", f"images={tmp_path / 'shards' / 'train2017'}", f"text_emb={train_emb}",
            f"eval_images={tmp_path / 'shards' / 'val2017'}", f"eval_text_emb={val_emb}", f"out={tmp_path / 'run'}", "steps=12",
            "batch_size=4", "num_workers=0", "log_every=1", "grid_rows=3", "grid_cols=4", "fraction=0.75"]
    assert main(args) == 0
    model, ck = load_cvae(tmp_path / "run" / "last.pt")
    assert model.cfg.text_dim == dim and ck["subset"]["total"] == 24 and 0 < ck["subset"]["kept"] < 24
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert len(train) == 12 and np.mean([r["loss"] for r in train[-3:]]) < np.mean([r["loss"] for r in train[:3]])
    grid = Image.open(tmp_path / "run" / "samples.png")
    caps = json.loads(grid.text["Legend"])
    assert len(caps) == 3 and all(c.startswith("a flat picture number 10") for c in caps)  # held-out (val) captions
    assert np.asarray(grid.convert("L")).std() > 10
    capsys.readouterr()
    wrong = [(f"text_emb={val_emb}", "re-derive it from this image set"), ("model.text_dim=7", f"holds {dim}-d embeddings"),
             (f"text_emb={tmp_path / 'shards' / 'val2017'}", "not a text-embedding set")]
    for arg, message in wrong:
        keep = [a for a in args if a.split("=")[0] not in (arg.split("=")[0], "out")]
        assert main(keep + [arg, f"out={tmp_path / 'w'}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (arg, err)


def test_a_diverging_run_stops_at_its_non_finite_loss_without_saving_it(fmnist, tmp_path, capsys):
    """A NaN / inf loss row is written and stops the run (train_common.append_metrics) before a
    checkpoint would save non-finite weights: one line, exit 2, no figures from NaN latents."""
    out = tmp_path / "div"
    argv = ["-q", "train", "cvae", "arch=cvae_mlp_tiny", f"images={fmnist / 'shards' / 'train'}", f"out={out}", "steps=12",
            "batch_size=16", "num_workers=0", "latent_n=0", "log_every=1", "ckpt_every=1", "lr=1e6"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    rows_ = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    bad = rows_[-1]
    assert not math.isfinite(bad["loss"]) and all(math.isfinite(r["loss"]) for r in rows_[:-1])
    assert f"step {bad['step']}: the train loss is {bad['loss']}" in err and "training diverged" in err
    ck = torch.load(out / "last.pt", weights_only=True)  # the last checkpoint is the step before, all finite
    assert ck["step"] == bad["step"] - 1 and all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert not (out / "samples.png").exists()


def test_a_run_reads_its_sets_by_url_as_from_the_folders(fmnist, tmp_path, monkeypatch):
    # train_cvae over HTTP (the subset's keys, the stream, the held-out row and figures) equals the run from the folders
    from fixtures_http import fetched_shards, http_server

    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(arch="cvae_mlp_tiny", batch_size=16, num_workers=0, latent_n=8, log_every=1, steps=4, fraction=0.5, seed=3)
    shards = fmnist / "shards"
    local = train_cvae(CVAETrainConfig(out=str(tmp_path / "local"), images=str(shards / "train"), eval_images=str(shards / "test"), **common))
    with http_server(fmnist) as (base, requests):
        remote = train_cvae(CVAETrainConfig(out=str(tmp_path / "http"), images=f"{base}/shards/train", eval_images=f"{base}/shards/test",
                                            **common))
    names = {s["name"] for s in load_manifest(shards / "train" / "manifest.json")["shards"]}
    assert fetched_shards(requests, "/shards/train") == names and fetched_shards(requests, "/shards/test")
    assert {k: v for k, v in remote.items() if k not in ("checkpoint", "figures")} == {
        k: v for k, v in local.items() if k not in ("checkpoint", "figures")}  # step, fingerprint, kept of total
    rows = [[{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("local", "http")]
    assert rows[0] == rows[1] and {r.get("split") for r in rows[0]} == {"train", "test"}
    assert (tmp_path / "http" / "samples.png").read_bytes() == (tmp_path / "local" / "samples.png").read_bytes()
