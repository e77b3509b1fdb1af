"""OpenAI's DALL·E dVAE from its published files (``t2i_models.pretrained.openai_dvae``).

Oracle: the ``dall-e`` package's own classes (``dall_e.Encoder``, ``dall_e.Decoder``,
``map_pixels``, ``unmap_pixels``; installed with ``pip install --no-deps DALL-E==0.1`` by
``.ci/run``), random-init at small widths and saved with ``torch.save(model)`` exactly as the
published ``encoder.pkl`` / ``decoder.pkl`` were made. Every test here uses that oracle for its
files; the comparison tests also use it for the expected logits, tokens and pixels.
"""
import io
import json
import os

import numpy as np
import pytest
import torch

from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import InProcessRunner
from t2i_data.tario import iter_samples
from t2i_models.builders import build_autoencoder
from t2i_models.checkpoint import load_autoencoder, save_autoencoder
from t2i_models.cli import main
from t2i_models.encode import EncodeConfig, check_reencode, encode

from fixtures_sources import make_coco

dall_e = pytest.importorskip("dall_e", reason="the oracle: pip install --no-deps DALL-E==0.1 (and attrs, requests)")

V = 512  # the package's validators: vocab_size >= 512, n_hid >= 64


def _oracle(seed: int = 0, n_hid: int = 64, n_init: int = 32, vocab: int = V):
    torch.manual_seed(seed)
    enc = dall_e.Encoder(n_hid=n_hid, vocab_size=vocab)
    dec = dall_e.Decoder(n_hid=n_hid, n_init=n_init, vocab_size=vocab)
    for m in (enc, dec):  # the published init leaves every bias at zero: give them values so a swapped bias shows
        for name, p in m.named_parameters():
            if name.endswith(".b"):
                p.data.normal_(std=0.05)
    with torch.no_grad():  # centre the logits on random pixels, so argmax picks many codes (not the few a raw init favours)
        x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        r = torch.relu(enc.blocks[:-1](dall_e.map_pixels(x))).mean(dim=(0, 2, 3))
        conv = enc.blocks.output.conv
        conv.b.copy_(-(conv.w[:, :, 0, 0] @ r))
    return enc, dec


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """encoder.pkl / decoder.pkl as the published files are made, with their oracle modules."""
    d = tmp_path_factory.mktemp("dalle")
    enc, dec = _oracle()
    torch.save(enc, d / "encoder.pkl")
    torch.save(dec, d / "decoder.pkl")
    return d, enc, dec


def test_logits_tokens_and_pixels_equal_the_dall_e_package(published):
    d, enc, dec = published
    model, rec = load_autoencoder(d / "encoder.pkl")
    assert rec["kind"] == "openai_dvae" and rec["format"] == "openai-dvae" and not model.training
    assert rec["config"] == {"vocab_size": V, "enc_hid": 64, "dec_hid": 64, "dec_init": 32, "n_blk_per_group": 2,
                             "input_channels": 3, "output_channels": 3, "image_size": 256}
    assert model.cfg.grid == 32 and model.cfg.vocab_size == V
    assert sorted(rec["source"]["files"]) == ["decoder.pkl", "encoder.pkl"]
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits = enc(dall_e.map_pixels(x))
        want_tokens = want_logits.argmax(1)
        one_hot = torch.nn.functional.one_hot(want_tokens, V).permute(0, 3, 1, 2).float()
        want_pixels = dall_e.unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3]))
        assert torch.equal(model.logits(x), want_logits)
        tokens = model.encode(x)
        assert torch.equal(tokens, want_tokens) and tokens.shape == (3, 8, 8) and tokens.dtype == torch.int64
        assert len(tokens.unique()) > 20  # the comparison is not of a constant map
        pixels = model.decode(tokens)
        assert torch.equal(pixels, want_pixels) and pixels.shape == (3, 3, 64, 64)
        assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1
    # the parameter names are the package's: its state dict loads into our halves unchanged
    assert list(model.encoder.state_dict()) == list(enc.state_dict())
    assert list(model.decoder.state_dict()) == list(dec.state_dict())


def test_every_file_layout_loads_to_the_same_tokens_and_fingerprint(published, tmp_path):
    from safetensors.torch import save_file

    d, enc, dec = published
    model, rec = load_autoencoder(d / "encoder.pkl")
    sd = model.state_dict()
    torch.save(sd, tmp_path / "dalle.pt")  # one state dict, encoder.* and decoder.*
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "dalle.safetensors"))
    halves = tmp_path / "halves"
    halves.mkdir()
    torch.save(enc.state_dict(), halves / "encoder.pt")  # each module's own state dict, as users save them
    torch.save(dec.state_dict(), halves / "decoder.pt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want = model.encode(x)
    for path in (d / "decoder.pkl", tmp_path / "dalle.pt", tmp_path / "dalle.safetensors", halves / "encoder.pt", halves / "decoder.pt"):
        m, r = load_autoencoder(path)
        assert r["fingerprint"] == rec["fingerprint"], path
        assert torch.equal(m.encode(x), want), path


class _Shell:
    """A side effect the refused pickle would have had."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_pickle_naming_any_other_global_is_refused_and_nothing_of_it_runs(tmp_path):
    enc, dec = _oracle()
    marker = tmp_path / "ran"
    enc.payload = _Shell(marker)
    torch.save(enc, tmp_path / "encoder.pkl")
    torch.save(dec, tmp_path / "decoder.pkl")
    with pytest.raises(T2IError, match=r"encoder.pkl: the pickle names the global (posix|os|nt)\.system, which OpenAI dVAE files "
                                       r"do not hold; refusing to load it"):
        load_autoencoder(tmp_path / "encoder.pkl")
    assert not marker.exists()
    enc2, _ = _oracle()
    enc2.blocks.add_module("extra", torch.nn.GELU())  # a torch class outside what the published files hold
    torch.save(enc2, tmp_path / "encoder.pkl")
    with pytest.raises(T2IError, match=r"names the global torch\.nn\.modules\.activation\.GELU"):
        load_autoencoder(tmp_path / "encoder.pkl")


def test_wrong_files_stop_with_one_message(published, tmp_path):
    d, enc, dec = published
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "encoder.pkl").write_bytes((d / "encoder.pkl").read_bytes())
    with pytest.raises(T2IError, match=r"other half decoder.pkl is not beside it"):
        load_autoencoder(lone / "encoder.pkl")
    other = tmp_path / "mixed"
    other.mkdir()
    torch.save(enc, other / "encoder.pkl")
    torch.save(dall_e.Decoder(n_hid=64, n_init=32, vocab_size=1024), other / "decoder.pkl")
    with pytest.raises(T2IError, match=r"encoder has 512 codes but decoder.pkl decodes 1024; they are not one dVAE"):
        load_autoencoder(other / "encoder.pkl")
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    torch.save(dec, swapped / "encoder.pkl")
    torch.save(enc, swapped / "decoder.pkl")
    with pytest.raises(T2IError, match=r"encoder.pkl: holds a dall_e.decoder.Decoder, not a dall_e.encoder.Encoder"):
        load_autoencoder(swapped / "encoder.pkl")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pkl")
    with pytest.raises(T2IError, match=r"weights.pkl: an OpenAI dVAE half is named encoder.\* or decoder.\*"):
        load_autoencoder(tmp_path / "weights.pkl")
    model, _ = load_autoencoder(d / "encoder.pkl")
    sd = model.state_dict()
    sd["decoder.blocks.output.conv.w"] = sd["decoder.blocks.output.conv.w"][:4]  # 2 output channels, not 6
    sd["encoder.blocks.group_1.block_1.res_path.conv_2.w"] = torch.zeros(16, 16, 5, 5)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(T2IError, match=r"bad.pt: its weights do not fit the OpenAI dVAE architecture .*conv_2.w"):
        load_autoencoder(tmp_path / "bad.pt")
    torch.save({"blocks.input.w": torch.zeros(1)}, tmp_path / "model.pt")  # a state dict of something else
    with pytest.raises(T2IError, match=r"model.pt: not a t2i checkpoint; .*published tokenizer \(openai_dvae: encoder.pkl"):
        load_autoencoder(tmp_path / "model.pt")


def test_this_projects_checkpoints_still_load_beside_the_published_files(tmp_path):
    torch.manual_seed(0)
    save_autoencoder(tmp_path / "tiny.pt", build_autoencoder("dvae_tiny"), step=3)
    model, ck = load_autoencoder(tmp_path / "tiny.pt")
    assert ck["kind"] == "dvae" and ck["step"] == 3 and "source" not in ck


@pytest.fixture(scope="module")
def images256(tmp_path_factory):
    root = make_coco(tmp_path_factory.mktemp("coco") / "coco")
    out = tmp_path_factory.mktemp("img256")
    preprocess(PreprocessConfig("coco", str(root), regime="prior", size=256, shard_size=2), out, InProcessRunner())
    return out / "val2017"


def test_t2i_encode_preview_and_eval_take_encoder_pkl(published, images256, tmp_path, capsys):
    d, enc, _ = published
    m = encode(d / "encoder.pkl", images256, tmp_path / "tok", EncodeConfig(views=1, batch_size=3), InProcessRunner())["val2017"]
    model, rec = load_autoencoder(d / "encoder.pkl")
    ae = m["autoencoder"]
    assert ae["kind"] == "openai_dvae" and ae["fingerprint"] == rec["fingerprint"] and ae["grid"] == 32 and ae["vocab_size"] == V
    assert ae["format"] == "openai-dvae" and ae["source"] == rec["source"] and ae["dtype"] == "uint16"
    from t2i_data.augment import regime_of
    from t2i_data.manifest import load_manifest
    from t2i_models.encode import sample_views

    regime = regime_of(load_manifest(images256 / "manifest.json"))
    n = 0
    first = sorted(images256.glob("*.tar"))[0].name
    toks = m["_out"]
    for img, tok in zip(iter_samples(images256 / first), iter_samples(toks / first)):
        tokens = np.load(io.BytesIO(tok["image_tokens.npy"]))
        assert tokens.shape == (1, 32, 32) and tokens.dtype == np.uint16
        [(_, view)] = sample_views(img, regime, 0, 1)  # view 0: the regime's identity view, as encode takes it
        x = torch.from_numpy(np.array(view)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            assert np.array_equal(tokens[0], enc(dall_e.map_pixels(x)).argmax(1)[0].numpy())  # the package's tokens
        n += 1
    assert n >= 1
    assert check_reencode(d / "encoder.pkl", images256, toks, n=3) >= 1
    shard = toks / first
    assert main(["preview", str(shard), "--autoencoder", str(d / "encoder.pkl"), "--out", str(tmp_path / "p.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size[0] > 0
    assert main(["eval", "autoencoder", "--autoencoder", str(d / "encoder.pkl"), "--images", str(images256),
                 "--out", str(tmp_path / "ev"), "--grid", "2"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["kind"] == "openai_dvae" and report["fingerprint"] == rec["fingerprint"] and report["images"] >= 1
    assert 0 < report["codes_used"] <= 1 and report["psnr"] > 0


def _no_blocks(enc):
    del enc.blocks


def _text_width(enc):
    enc.n_hid = "32"


def _huge_width(enc):
    enc.n_hid = 10**9


@pytest.mark.parametrize("damage, message", [
    (_no_blocks, r"the pickled dall_e.encoder.Encoder has no blocks Sequential; not a file of the dall_e package"),
    (_text_width, r"the pickled dall_e.encoder.Encoder has n_hid = '32', not an integer in \[1, 16,384\]"),
    (_huge_width, r"the pickled dall_e.encoder.Encoder has n_hid = 1000000000, not an integer in \[1, 16,384\]"),
])
def test_a_pickle_with_a_damaged_module_tree_or_sizes_stops_with_one_message(tmp_path, damage, message):
    """The sizes a pickle states are checked before a model of that size is built (no 10^9-wide
    convolution is attempted), and a module tree without the dall_e layout is named as such."""
    enc, dec = _oracle()
    damage(enc)
    torch.save(enc, tmp_path / "encoder.pkl")
    torch.save(dec, tmp_path / "decoder.pkl")
    with pytest.raises(T2IError, match=message):
        load_autoencoder(tmp_path / "encoder.pkl")


def test_a_legacy_format_pickle_and_a_folder_are_refused_naming_why(tmp_path):
    enc, dec = _oracle()
    torch.save(enc, tmp_path / "encoder.pkl", _use_new_zipfile_serialization=False)  # stores module source code
    torch.save(dec, tmp_path / "decoder.pkl")
    with pytest.raises(T2IError, match=r"encoder.pkl: torch's weights_only unpickler refused it \(Only persistent_load of storage "
                                       r"is allowed.*save the module again with a current torch"):
        load_autoencoder(tmp_path / "encoder.pkl")
    (tmp_path / "model.pkl").mkdir()
    with pytest.raises(T2IError, match=r"model.pkl: a folder, not a file \(OpenAI dVAE: "):
        load_autoencoder(tmp_path / "model.pkl")
    with pytest.raises(T2IError, match=r"gone/encoder.pkl: no such file \(OpenAI dVAE: nothing is downloaded; put the published "
                                       r"encoder.pkl and decoder.pkl there\)"):
        load_autoencoder(tmp_path / "gone" / "encoder.pkl")
