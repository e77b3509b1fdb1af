"""t2i eval images: FID, KID and IS on random-init Inception weights saved in the published layout.

The network costs ~5.7 GFLOP an image whatever its size (every image is resized to 299x299), so
the sets are tiny: an MD-MNIST shard set of 6 built by the project (2 shards) and a folder of 4 PNGs
and 2 JPEGs of two other sizes; with ``--n 4 --seed 1`` both give positions 1, 2, 3, 5. The oracles
(scipy's sqrtm, torchmetrics' FID) run on the first 256 of the 2048 pool3 channels: the formula does
not depend on the width, and on all 2048 they took 48 s and 30 s per pair on this CPU.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_data.figures import SERIES_COLORS
from t2i_data.manifest import load_manifest
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_models import image_metrics as im
from t2i_models.cli import main

N_SEED, CHOSEN = 1, [1, 2, 3, 5]  # np.random.default_rng(1).choice(6, 4, replace=False), sorted


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    im.save_random_inception(path, seed=0)
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    build(MDMNISTConfig(seed=0, train=6, test=0, shard_size=4), root / "md", InProcessRunner())
    folder = root / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"a{i}.png")
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(folder / f"b{i}.jpg", quality=90)
    return {"shards": root / "md" / "train", "folder": folder}


@pytest.fixture(scope="module")
def features(weights, sets):
    """Pool3 features and logits of the 4 chosen images of each set, by the library's own pass."""
    model, _ = im.load_inception(weights)
    pos = np.array(CHOSEN)
    return {k: im.run_pass(im.open_image_set(p), pos, model, None, 8, "cpu") for k, p in sets.items()}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["eval", "images", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_random_weights_have_the_published_layout(weights):
    sd = torch.load(weights, weights_only=True)
    ref = im.build_inception().state_dict()  # torch-fidelity's FeatureExtractorInceptionV3
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert len(sd) == 566 and sum(v.numel() for v in sd.values()) == 23_885_486
    assert tuple(sd["fc.weight"].shape) == (1008, 2048) and sd["fc.weight"].dtype == torch.float32
    model, rec = im.load_inception(weights)
    assert rec["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and rec["published_weights"] is False
    assert rec["published_sha256"] == "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
    assert "torchvision" not in sys.modules  # the Inception extractor came without it


def test_torchvision_failures_are_told_apart(tmp_path, monkeypatch):
    assert im._caused_by_torchvision(ModuleNotFoundError("No module named 'torchvision'", name="torchvision"))
    assert not im._caused_by_torchvision(ModuleNotFoundError("No module named 'scipy'", name="scipy"))
    (tmp_path / "torchvision").mkdir()  # installed but broken, as torchvision 0.29 beside torch 2.13
    (tmp_path / "torchvision" / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(RuntimeError) as e:
        import torchvision  # noqa: F401
    assert im._caused_by_torchvision(e.value)
    sys.modules.pop("torchvision", None)


def test_fid_of_a_mean_shift_is_its_squared_length(features):
    rng = np.random.default_rng(0)
    real = features["shards"].pool  # (4, 2048) Inception features: N <= D, the singular case
    d = rng.normal(0, 0.05, real.shape[1])
    assert im.fid_from_features(real, real + d) == pytest.approx(float(d @ d), rel=1e-6)
    assert abs(im.fid_from_features(real, real)) < 1e-9
    big = rng.normal(0.3, 0.2, (300, 64))  # N > D: the QR branch
    d = rng.normal(0, 0.1, 64)
    assert im.fid_from_features(big, big + d) == pytest.approx(float(d @ d), rel=1e-6)
    assert abs(im.fid_from_features(big, big)) < 1e-9


def test_fid_matches_scipy_sqrtm_and_torchmetrics_on_inception_features(features):
    import scipy.linalg

    a, b = features["shards"].pool[:, :256], features["folder"].pool[:, :256]
    ours = im.fid_from_features(a, b)
    with warnings.catch_warnings():  # singular product (4 images): sqrtm warns, as pytorch-fid's users see
        warnings.simplefilter("ignore")
        c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = scipy.linalg.sqrtm(c1 @ c2).real
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root))
    FID, _, _ = im.metric_classes()
    tm = FID(feature=im._Given(256))
    tm.update(torch.from_numpy(a), real=True)
    tm.update(torch.from_numpy(b), real=False)
    assert ours > 1.0
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours == pytest.approx(float(tm.compute()), rel=1e-6)


def kid_of_identical(f: np.ndarray) -> float:
    """torchmetrics' unbiased MMD^2 of a set with itself, whole set as the subset: 2[(S - T)/(m(m-1)) - S/m^2]."""
    k = (f @ f.T / f.shape[1] + 1) ** 3
    m = len(f)
    return 2 * ((k.sum() - np.trace(k)) / (m * (m - 1)) - k.sum() / m**2)


def test_is_of_uniform_predictions_is_one(weights, sets, tmp_path):
    sd = torch.load(weights, weights_only=True)
    sd["fc.weight"].zero_()
    sd["fc.bias"].zero_()
    torch.save(sd, tmp_path / "uniform.pth")
    model, _ = im.load_inception(tmp_path / "uniform.pth")
    p = im.run_pass(im.open_image_set(sets["folder"]), np.array([0, 4]), model, None, 8, "cpu")
    assert p.logits.shape == (2, 1008) and not p.logits.any()
    r = im.is_from_logits(p.logits, 2, seed=0)
    assert r["mean"] == 1.0 and r["std"] == 0.0 and r["images_per_split"] == [1, 1]


def test_cli_end_to_end(weights, sets, features, tmp_path, capsys, caplog):
    out = tmp_path / "eval"
    rc, stdout, err = run_cli(capsys, "--real", sets["shards"], "--fake", f"same={sets['shards']}", "--fake", sets["folder"],
                              "--inception", weights, "--n", 4, "--seed", N_SEED, "--splits", 2, "--kid-subsets", 3, "--out", out,
                              "--device", "cpu", "--batch-size", 3)  # batches of 3 and 1; the folder's also end at the size change
    assert rc == 0, err
    r = json.loads((out / "report.json").read_text())
    assert list(r["models"]) == ["pngs", "same"]  # sorted keys; "pngs" is the folder's name
    same, pngs = r["models"]["same"], r["models"]["pngs"]
    assert abs(same["fid"]["value"]) < 1e-6
    assert same["kid"]["mean"] == pytest.approx(kid_of_identical(features["shards"].pool), rel=1e-9)
    assert pngs["fid"]["value"] == pytest.approx(im.fid_from_features(features["shards"].pool, features["folder"].pool), rel=1e-9)
    assert pngs["fid"]["value"] > 1.0 and pngs["kid"]["mean"] > 10 * abs(same["kid"]["mean"])
    for rec in (same, pngs):
        assert rec["images"] == 4 and rec["images_in_set"] == 6
        assert rec["kid"] | {"mean": 0, "std": 0} == {
            "mean": 0, "std": 0, "subsets": 3, "subset_size": 4, "subset_size_requested": 1000, "capped_at_set_size": True,
            "std_definition": "population std over subsets (torchmetrics)", "kernel": "polynomial (x.y / 2048 + 1)^3"}
        assert rec["is"]["splits"] == 2 and rec["is"]["images_per_split"] == [2, 2] and rec["is"]["mean"] >= 1.0
    keys = [f"mdmnist-train-{i:08d}" for i in CHOSEN]
    assert r["real"]["first_keys"] == keys and same["first_keys"] == keys
    assert r["real"]["image_sizes"] == {"128x128": 4} and r["real"]["formats"] == {"png": 4}
    assert pngs["first_keys"] == ["a1.png", "a2.png", "a3.png", "b1.jpg"]
    assert pngs["image_sizes"] == {"64x80": 1, "96x96": 3} and pngs["formats"] == {"jpg": 1, "png": 3}
    digest = load_manifest(sets["shards"] / "manifest.json")["digest"]
    assert same["fingerprint"] == {"manifest_digest": digest, "dataset": "mdmnist", "split": "train"}
    h = hashlib.sha256()
    for f in sorted(sets["folder"].iterdir()):
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode() + f.read_bytes())
    assert pngs["fingerprint"] == {"sha256_names_and_bytes": h.hexdigest()}
    assert "interpolate_bilinear_2d_like_tensorflow1x" in r["resize_policy"] and "no JPEG re-encoding" in r["resize_policy"]
    assert r["inception"]["published_weights"] is False and "not comparable with papers" in r["warnings"][0]
    assert (r["seed"], r["n"], r["device"], r["batch_size"]) == (N_SEED, 4, "cpu", 3)
    assert "WARNING: random-inception.pth is not the published FID Inception file" in caplog.text  # logged before the passes
    lines = stdout.splitlines()
    assert lines[0].startswith(f"real: {sets['shards']} (4 images), IS ")
    assert lines[1].startswith("same: 4 images, FID ") and lines[2].startswith("pngs: 4 images, FID ")
    assert lines[-1] == f"wrote {out / 'report.json'} and {out / 'metrics.png'}"
    png = np.asarray(Image.open(out / "metrics.png").convert("RGB"))
    fid_panel = png[24:324, 60:420]  # the first panel: FID, its bars
    assert (fid_panel == SERIES_COLORS[1]).all(axis=2).sum() > 1000  # the folder's bar ("pngs", the second --fake)
    strip = png[340:]
    assert (strip != 255).any(axis=2).sum() > 3 * 4 * 64 * 64 // 2  # real, same, pngs: 4 thumbnails each


@pytest.mark.parametrize("case", ["no-inception", "not-a-pickle", "wrong-tensors", "empty-folder", "non-image", "bad-image",
                                  "n-too-large", "unknown-metric", "damaged-shard", "splits", "clip-without-dir",
                                  "clip-on-a-folder", "out-in-input", "build-folder", "token-set"])
def test_wrong_use_stops_with_one_message(case, weights, sets, tmp_path, capsys):
    real, fake, extra, inception, out_dir = sets["shards"], sets["folder"], [], weights, tmp_path / "out"
    if case == "no-inception":
        inception, expect = None, ["--inception PATH needed", "pt_inception-2015-12-05-6726825d.pth", "sha256 6726825d",
                                   "nothing is downloaded"]
    elif case == "not-a-pickle":
        inception = tmp_path / "weights.pth"
        inception.write_text("not weights\n")
        expect = [f"--inception {inception}: not a torch weights file (it starts with b'not '); it must be the FID Inception weights"]
    elif case == "wrong-tensors":
        inception = tmp_path / "small.pth"
        torch.save({"fc.weight": torch.zeros(3, 2048), "extra": torch.zeros(1)}, inception)
        expect = [f"{inception}: not the FID Inception network's weights: 471 of 566 tensors missing (e.g. Conv2d_1a_3x3.conv.weight, "
                  "Conv2d_1a_3x3.bn.weight); 1 unexpected (e.g. extra); fc.weight (3, 2048) (expected (1008, 2048))"]
    elif case == "empty-folder":
        fake = tmp_path / "empty"
        fake.mkdir()
        expect = [f"{fake}: no .png/.jpg/.jpeg files in it"]
    elif case == "non-image":
        fake = tmp_path / "mixed"
        shutil.copytree(sets["folder"], fake)
        (fake / "notes.txt").write_text("x")
        (fake / "sub").mkdir()
        (fake / "link.png").symlink_to(sets["folder"] / "a0.png")  # a PNG, but outside the folder
        (fake / "inside.png").symlink_to(fake / "a0.png")  # read through: it stays inside
        expect = [f"{fake}: 3 entries are not image files: link.png (entry 'link.png' resolves to {(sets['folder'] / 'a0.png').resolve()}, "
                  f"outside {fake.resolve()}); notes.txt (not a .png, .jpg or .jpeg file); sub (a folder: subfolders are not read); move them out"]
    elif case == "bad-image":  # as the real set, so that it is the first image decoded
        real, fake = tmp_path / "bad", sets["shards"]
        shutil.copytree(sets["folder"], real)
        (real / "a0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        expect = [f"{real / 'a0.png'}: not an image Pillow can decode"]
    elif case == "n-too-large":
        extra, expect = ["--n", 7], [f"{real}: 6 images, fewer than --n 7"]
    elif case == "unknown-metric":
        extra, expect = ["--metrics", "fid,fod"], ["--metrics fid,fod: unknown fod; choose from fid, kid, is, clipscore"]
    elif case == "damaged-shard":
        fake = tmp_path / "damaged"
        shutil.copytree(sets["shards"], fake)
        shard = sorted(fake.glob("*.tar"))[1]
        data = bytearray(shard.read_bytes())
        data[700] ^= 0xFF
        shard.write_bytes(bytes(data))
        expect = [f"{shard}: sha256 ", "so the checksum does not match the manifest"]
    elif case == "splits":
        extra, expect = ["--splits", 4], [f"{real}: --splits 4 over 6 images: torchmetrics' torch.chunk makes 3 groups, not 4"]
    elif case == "build-folder":  # a build of two splits: which one is meant is not guessed
        fake = tmp_path / "two"
        shutil.copytree(sets["shards"], fake / "train")
        shutil.copytree(sets["shards"], fake / "test")
        expect = [f"{fake}: 2 splits (train, train); give one split's folder, e.g. {fake / 'test'}"]
    elif case == "token-set":
        from t2i_data.text import load_pretrained
        from t2i_data.tokenize import TokenizeConfig, tokenize

        load_pretrained("mdmnist", None).save(tmp_path / "tk")
        tokenize(tmp_path / "tk", sets["shards"], tmp_path / "text", TokenizeConfig(length=12), InProcessRunner())
        fake = tmp_path / "text"
        expect = [f"{fake}: a text_tokens shard set; eval images reads image shard sets (kind images) or image folders"]
    elif case == "out-in-input":
        out_dir = fake / "report"
        expect = [f"--out {out_dir}: inside the input set {fake}; write the report to a folder of its own"]
    elif case == "clip-without-dir":
        fake, extra, expect = real, ["--metrics", "clipscore"], ["--metrics clipscore needs --clip DIR, a local CLIP folder; nothing is downloaded"]
    else:
        extra, expect = ["--metrics", "fid,clipscore"], [f"{fake}: a folder of images has no captions; clipscore needs an image shard set"]
    argv = ["--real", real, "--fake", fake, "--out", out_dir, "--splits", 2, *extra] + (["--inception", inception] if inception else [])
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("t2i: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for text in expect:
        assert text in err
    assert not (out_dir / "report.json").exists() and not (out_dir / "metrics.png").exists()


@pytest.mark.slow  # transformers and a 49,408-token CLIP tokenizer: ~15 s
def test_clipscore_scores_each_fake_image_with_its_first_caption(realdata, sets, tmp_path, capsys):
    from test_clip_score import _bpe, build_clip_folder  # the tiny CLIP folder of tests/test_clip_score.py

    from t2i_data.tario import iter_samples
    from t2i_models.clip_score import load_clip, set_score

    clip = tmp_path / "clip"
    build_clip_folder(clip, _bpe(realdata))
    # no --inception: clipscore alone does not run the Inception network
    rc, stdout, err = run_cli(capsys, "--real", sets["folder"], "--fake", f"md={sets['shards']}", "--metrics", "clipscore", "--clip", clip,
                              "--out", tmp_path / "out", "--device", "cpu")
    assert rc == 0, err
    samples = [s for shard in sorted(sets["shards"].glob("*.tar")) for s in iter_samples(shard)]
    pixels = np.stack([np.asarray(Image.open(__import__("io").BytesIO(s["png"])).convert("RGB")) for s in samples])
    captions = [json.loads(s["json"])["captions"][0] for s in samples]
    scorer = load_clip(clip)
    sim = scorer.similarity(pixels, captions)
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    c = r["models"]["md"]["clipscore"]
    assert c["images"] == 6 and r["models"]["md"]["images"] == 6
    assert c["mean"] == pytest.approx(float(np.maximum(sim, 0).mean()), rel=1e-6, abs=1e-9)
    assert c["std"] == pytest.approx(float(np.maximum(sim, 0).std()), rel=1e-6, abs=1e-9)
    assert c["set_score"] == pytest.approx(set_score(sim), rel=1e-6, abs=1e-9)
    assert r["clip"]["fingerprint"] == scorer.fingerprint and r["inception"] is None
    assert "images" not in r["real"] and "fid" not in r["models"]["md"]
    assert stdout.splitlines()[1].startswith("md: 6 images, CLIP score ")


@pytest.mark.parametrize("missing", ["torch_fidelity", "torchmetrics.image.kid"])
def test_a_missing_package_is_named_with_its_install_line(missing, sets, weights, tmp_path, capsys, monkeypatch):
    im.metric_classes()  # imported once; then made to fail as if not installed
    monkeypatch.setitem(sys.modules, missing, None)
    rc, out, err = run_cli(capsys, "--real", sets["shards"], "--fake", sets["folder"], "--inception", weights, "--splits", 2,
                           "--out", tmp_path / "out")
    assert rc == 2 and "Traceback" not in err
    if missing == "torch_fidelity":
        assert "fid, kid and is need torch-fidelity, which is not installed: pip install --no-deps torch-fidelity==0.4.0" in err
    else:
        assert "fid, kid and is need torchmetrics, a dependency of t2i-data: pip install 'torchmetrics>=1.9.0'" in err
