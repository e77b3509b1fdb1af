import io
import json

import numpy as np
import pytest
import torch

from t2i_data.align import zip_aligned
from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import AutoRunner, DaskRunner, InProcessRunner
from t2i_data.tario import iter_samples
from t2i_models.builders import build_autoencoder
from t2i_models.checkpoint import load_autoencoder, save_autoencoder, weights_fingerprint
from t2i_models.encode import EncodeConfig, check_reencode, decode_tokens, encode

from fixtures_sources import make_coco


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ae") / "tiny.pt"
    save_autoencoder(path, build_autoencoder("dvae_tiny"), step=7)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = make_coco(tmp_path_factory.mktemp("coco") / "coco")
    out = tmp_path_factory.mktemp("img")
    preprocess(PreprocessConfig("coco", str(root), regime="prior", size=32, shard_size=2), out, InProcessRunner())
    return out / "val2017"


def test_checkpoint_round_trip_and_refusals(ckpt, tmp_path):
    model, ck = load_autoencoder(ckpt)
    assert ck["step"] == 7 and ck["kind"] == "dvae" and not model.training
    assert ck["fingerprint"] == weights_fingerprint(model)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(T2IError, match="not a loadable t2i checkpoint"):
        load_autoencoder(tmp_path / "x.pt")
    torch.save({"format": "something-else"}, tmp_path / "y.pt")
    with pytest.raises(T2IError, match="not a t2i autoencoder checkpoint"):
        load_autoencoder(tmp_path / "y.pt")
    damaged = torch.load(ckpt, weights_only=True)
    damaged["state_dict"]["decoder.0.0.weight"] += 1
    torch.save(damaged, tmp_path / "z.pt")
    with pytest.raises(T2IError, match="do not match the fingerprint"):
        load_autoencoder(tmp_path / "z.pt")


def test_image_token_shards_are_aligned_with_views_and_identical_across_workers(ckpt, images, tmp_path):
    cfg = EncodeConfig(views=3, seed=1, batch_size=5)
    m = encode(ckpt, images, tmp_path / "a", cfg, InProcessRunner())["val2017"]
    with DaskRunner(workers=2) as runner:
        encode(ckpt, images, tmp_path / "b", EncodeConfig(views=3, seed=1, batch_size=2), runner)
    with AutoRunner(workers=2, start_cost_s=0.0) as runner:  # a pool forked after this process ran the model
        encode(ckpt, images, tmp_path / "c", EncodeConfig(views=3, seed=1, batch_size=2), runner)
        assert runner.started
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b") == files(tmp_path / "c")  # other worker count and batch size: same bytes
    base = json.loads((images / "manifest.json").read_text())
    assert m["aligned_to"] == base["digest"] and m["autoencoder"]["fingerprint"] == load_autoencoder(ckpt)[1]["fingerprint"]
    assert m["autoencoder"]["grid"] == 8 and m["stats"]["views"] == 3 * 4
    assert sum(m["stats"]["code_usage"].values()) == 3 * 4 * 64
    keys = []
    for s in zip_aligned(images, tmp_path / "a"):
        tokens = np.load(io.BytesIO(s["image_tokens.npy"]))
        assert tokens.shape == (3, 8, 8) and tokens.dtype == np.uint16 and tokens.max() < 32
        views = json.loads(s["json"])["views"]
        assert len(views) == 3 and views[0] == {"angle": 0.0, "x": 10, "y": 10, "flip": False} and views[1] != views[2]
        keys.append(s["__key__"])
    assert keys == ["coco-000000000139", "coco-000000000285", "coco-000000000632", "coco-000000000724"]
    assert check_reencode(ckpt, images, tmp_path / "a", n=4) == 3  # one per shard; the fourth shard holds only quarantined inputs


def test_encode_refuses_a_size_mismatch_and_a_misaligned_set(ckpt, images, tmp_path):
    torch.manual_seed(1)
    save_autoencoder(tmp_path / "big.pt", build_autoencoder("dvae_tiny", image_size=64))
    with pytest.raises(T2IError, match="views are 32x32 .* autoencoder takes 64x64; preprocess with --size 64"):
        encode(tmp_path / "big.pt", images, tmp_path / "o", EncodeConfig(), InProcessRunner())
    encode(ckpt, images, tmp_path / "t", EncodeConfig(), InProcessRunner())
    other = tmp_path / "other"
    preprocess(PreprocessConfig("coco", str(make_coco(tmp_path / "c2")), regime="ae", size=32), other, InProcessRunner())
    with pytest.raises(T2IError, match="is aligned to"):
        check_reencode(ckpt, other / "val2017", tmp_path / "t")


def test_cli_encode_with_check_and_preview_of_decoded_tokens(ckpt, images, tmp_path, capsys):
    assert main(["-q", "encode", "--autoencoder", str(ckpt), "--images", str(images), "--out", str(tmp_path / "t"),
                 "--views", "2", "--check", "4", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "val2017: 4 images x 2 views -> 8x8 tokens" in out and "identical tokens" in out
    shard = str(tmp_path / "t" / "coco-val2017-000000.tar")
    assert main(["preview", shard, "--out", str(tmp_path / "p.png")]) == 2
    assert "need --autoencoder" in capsys.readouterr().err
    assert main(["preview", shard, "--autoencoder", str(ckpt), "--out", str(tmp_path / "p.png")]) == 0
    model, _ = load_autoencoder(ckpt)
    tokens = np.load(io.BytesIO(next(iter_samples(shard))["image_tokens.npy"]))
    pix = decode_tokens(model, tokens)
    assert pix.shape == (2, 32, 32, 3) and pix.dtype == np.uint8


def test_encode_arrays_overlaps_decoding_and_keeps_order_and_errors(ckpt):
    """The decoding thread feeds batches in input order; an error while decoding is raised in the
    caller; an error in the model stops the decoding thread (no hang, no leftover thread)."""
    import threading

    from t2i_models.encode import encode_arrays

    model, _ = load_autoencoder(ckpt)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(11)]
    want = np.concatenate([model.encode(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255).numpy() for a in arrays])
    assert np.array_equal(encode_arrays(model, arrays, batch_size=4), want)
    assert np.array_equal(encode_arrays(model, iter(arrays), batch_size=3, prefetch=1), want)
    assert encode_arrays(model, [], batch_size=4).shape == (0, 8, 8)

    def failing():
        yield from arrays[:5]
        raise T2IError("shard-000001.tar: sample 5 does not decode")

    with pytest.raises(T2IError, match="sample 5 does not decode"):
        encode_arrays(model, failing(), batch_size=2)

    class Broken:
        cfg = model.cfg

        def encode(self, x):
            raise RuntimeError("out of memory")

    endless = (arrays[0] for _ in iter(int, 1))  # a decoder that never runs out: only the stop ends it
    with pytest.raises(RuntimeError, match="out of memory"):
        encode_arrays(Broken(), endless, batch_size=2)
    assert not [t for t in threading.enumerate() if t.name == "t2i-encode-decode"]
