"""Held-out autoencoder figures against an independent numpy computation, and the report / grid
that ``evaluate_autoencoder`` writes."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_data.augment import stored_image
from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import InProcessRunner
from t2i_data.tario import iter_samples
from t2i_models.builders import build_autoencoder
from t2i_models.checkpoint import save_autoencoder
from t2i_models.eval_autoencoder import GRID_COLUMNS, LABEL_W, TITLE_H, evaluate_autoencoder, heldout_metrics

from fixtures_sources import make_coco


@pytest.fixture(scope="module")
def ae_images(tmp_path_factory):
    """A regime ae-32 image set (4 images in shards of 2) and a 40-px one."""
    root = make_coco(tmp_path_factory.mktemp("coco") / "coco")
    out = tmp_path_factory.mktemp("img")
    preprocess(PreprocessConfig("coco", str(root), regime="ae", size=32, shard_size=2), out / "32", InProcessRunner())
    preprocess(PreprocessConfig("coco", str(root), regime="ae", size=40, shard_size=2), out / "40", InProcessRunner())
    return out / "32" / "val2017", out / "40" / "val2017"


def stored_views(folder) -> np.ndarray:
    """The set's images, read independently: tar members in manifest order, the centred 32×32 crop."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        for sample in iter_samples(folder / shard["name"]):
            a = np.asarray(stored_image(sample))
            h, w = a.shape[:2]
            y, x = (h - 32) // 2, (w - 32) // 2
            out.append(a[y : y + 32, x : x + 32])
    return np.stack(out)


def reference(model, arrays: np.ndarray) -> dict:
    """The figures by numpy from the model's encode / decode, one image at a time."""
    x = arrays.astype(np.float64) / 255  # (N, S, S, 3)
    with torch.no_grad():
        tokens = model.encode(torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255)
        y = model.decode(tokens).float().clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float64)
    err = ((y - x) ** 2).reshape(len(x), -1).mean(1)
    p = np.clip(y, 1e-6, 1 - 1e-6)
    counts = np.bincount(tokens.numpy().ravel(), minlength=model.cfg.vocab_size)
    q = counts[counts > 0] / counts.sum()
    return {"mse": err.mean(), "psnr": np.mean(10 * np.log10(1 / err)), "bce": np.mean(-(x * np.log(p) + (1 - x) * np.log(1 - p))),
            "codes_used": (counts > 0).mean(), "perplexity": np.exp(-(q * np.log(q)).sum()), "images": len(x)}


@pytest.mark.parametrize("arch", ["dvae_tiny", "vqvae_tiny"])
def test_figures_equal_an_independent_numpy_computation(ae_images, arch):
    torch.manual_seed(0)
    model = build_autoencoder(arch)
    model.train()
    arrays = stored_views(ae_images[0])
    assert len(arrays) == 4
    for n, batch_size in [(0, 2), (3, 64), (50, 4)]:  # n = 0: all; n beyond the set: all of it
        got = heldout_metrics(model, ae_images[0], n=n, batch_size=batch_size)
        assert model.training  # given back in its training mode
        model.eval()
        want = reference(model, arrays[: n or None])
        model.train()
        assert got["images"] == want["images"] == min(n or 4, 4)
        for k in ("mse", "psnr", "bce", "codes_used", "perplexity"):
            assert got[k] == pytest.approx(want[k], rel=1e-5), k
    assert 0 < got["codes_used"] <= 1 and 1 <= got["perplexity"] <= model.cfg.vocab_size


def test_a_perfect_reconstruction_is_100_db_and_wrong_sizes_and_settings_are_refused(ae_images, tmp_path):
    class Echo(torch.nn.Module):  # tokens are the pixels: decode(encode(x)) == x
        cfg = type("C", (), {"vocab_size": 256, "image_size": 32})()

        def encode(self, x):
            return (x * 255).round().long()

        def decode(self, t):
            return t.float() / 255

    got = heldout_metrics(Echo(), ae_images[0])
    assert got["mse"] == 0 and got["psnr"] == pytest.approx(100) and got["images"] == 4
    model = build_autoencoder("dvae_tiny")
    with pytest.raises(T2IError, match="holds ae-40 images but the autoencoder takes 32x32"):
        heldout_metrics(model, ae_images[1])
    with pytest.raises(T2IError, match="n must be >= 0"):
        heldout_metrics(model, ae_images[0], n=-1)
    for split in ("a", "b"):  # a build folder of two splits: which one is meant?
        shutil.copytree(ae_images[0], tmp_path / "two" / split)
    with pytest.raises(T2IError, match="holds 2 splits"):
        heldout_metrics(model, tmp_path / "two")


def test_report_and_grid(ae_images, tmp_path):
    torch.manual_seed(1)
    model = build_autoencoder("vqvae_tiny")
    fp = save_autoencoder(tmp_path / "ae.pt", model, step=1234, train_config={"arch": "vqvae_tiny"})
    report = evaluate_autoencoder(str(tmp_path / "ae.pt"), str(ae_images[0]), str(tmp_path / "ev"), n=4, batch_size=3, grid=3)
    manifest = json.loads((ae_images[0] / "manifest.json").read_text())
    assert json.loads((tmp_path / "ev" / "report.json").read_text()) == report
    assert (report["fingerprint"], report["step"], report["arch"], report["kind"]) == (fp, 1234, "vqvae_tiny", "vqvae")
    assert (report["images_digest"], report["split"], report["images"], report["image_set"]) == (manifest["digest"], "val2017", 4, str(ae_images[0]))
    assert set(report) >= {"mse", "psnr", "bce", "codes_used", "perplexity", "autoencoder", "reconstructions"}
    model.eval()
    assert report["mse"] == pytest.approx(reference(model, stored_views(ae_images[0])[:4])["mse"], rel=1e-5)
    arrays = stored_views(ae_images[0])[:3]
    with torch.no_grad():
        y = model.decode(model.encode(torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255))
    recon = (y.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with Image.open(tmp_path / "ev" / "reconstructions.png") as im:
        png = np.asarray(im.convert("RGB"))
    assert 3 <= GRID_COLUMNS and png.shape[0] == TITLE_H + 2 * 33 + 1 and png.shape[1] >= LABEL_W + 3 * 33 + 1
    for i in range(3):
        x0 = LABEL_W + 1 + i * 33
        assert np.array_equal(png[TITLE_H + 1 : TITLE_H + 33, x0 : x0 + 32], arrays[i])  # originals on top
        assert np.array_equal(png[TITLE_H + 34 : TITLE_H + 66, x0 : x0 + 32], recon[i])  # reconstructions below
        assert (png[TITLE_H + 33, x0 : x0 + 32] == 160).all()  # the 1-px border between them
    assert not np.array_equal(recon, arrays)


def test_md_mnist_images_are_taken_as_stored(tmp_path):
    from t2i_data.mdmnist import MDMNISTConfig, build

    build(MDMNISTConfig(seed=0, train=0, test=3, shard_size=2), tmp_path / "md", InProcessRunner())
    folder = tmp_path / "md" / "test"
    model = build_autoencoder("dvae_tiny", image_size=128).eval()
    arrays = np.stack([np.asarray(stored_image(s)) for sh in json.loads((folder / "manifest.json").read_text())["shards"]
                       for s in iter_samples(folder / sh["name"])])
    got, want = heldout_metrics(model, folder), reference(model, arrays)
    assert got["images"] == 3 and got["bce"] == pytest.approx(want["bce"], rel=1e-5) and got["mse"] == pytest.approx(want["mse"], rel=1e-5)


@pytest.mark.parametrize("shift, span", [(-0.5, r"\[-0.5, 0.5\]"), (0.75, r"\[0.75, 1.75\]"), (1e-3, r"\[0.001, 1.001\]")])
def test_a_decoder_outside_0_1_is_refused_not_clipped(ae_images, shift, span):
    """The figures assume [0, 1] pixels: a decoder whose output leaves that range (below 0, above 1,
    or barely) stops with one message giving the range, rather than scoring clipped values."""
    class Shifted(torch.nn.Module):
        cfg = type("C", (), {"vocab_size": 256, "image_size": 32})()

        def encode(self, x):
            return (x * 255).round().long()

        def decode(self, t):
            out = t.float() / 255 + shift
            out[0, 0, 0, 0], out[0, 0, 0, 1] = shift, 1 + shift  # the range's two ends
            return out

    with pytest.raises(T2IError, match=r"Shifted: decoded pixels span " + span + r", outside \[0, 1\]"):
        heldout_metrics(Shifted(), ae_images[0])
