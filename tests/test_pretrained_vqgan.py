"""taming-transformers' VQGAN from its published files (``t2i_models.pretrained.taming_vqgan``).

Oracle: the ``taming-transformers`` 0.0.1 wheel's own modules (``pip install --no-deps
taming-transformers==0.0.1``): ``taming.modules.diffusionmodules.model.Encoder`` / ``Decoder``
and ``taming.modules.vqvae.quantize.VectorQuantizer``, assembled as ``VQModel.__init__`` does
(less its LPIPS/discriminator ``loss``, which needs pytorch-lightning and VGG weights), at f16
(five ch_mult levels) with small widths: resolution 64 → a 4×4 grid, attention at resolution 4,
codebooks of 1024 and 16384. Files are written as the published ones are: a Lightning 1.0 dict
(``state_dict`` with fake ``loss.*`` tensors, ``callbacks`` keyed by a class named
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``, optimizer states) as
``ckpts/last.ckpt`` with ``configs/model.yaml``.

- ``test_latents_tokens_and_pixels_equal_taming`` uses the oracle for the file and the expected
  latents, tokens and pixels (skipped where the wheel is not installed).
- Every other test needs no oracle: its file holds the state dict of this module's own
  random-init ``TamingVQGAN``, whose names and shapes the oracle test holds equal to taming's
  (the loader loads the oracle's file strictly).
"""
import os
import sys
import types
from collections import OrderedDict

import pytest
import torch
import yaml
from safetensors.torch import save_file

from t2i_data.errors import T2IError
from t2i_models.pretrained import taming_vqgan as tv
from t2i_models.weights import weights_fingerprint

DD = {"double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
      "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}
EMBED = 8


def model_yaml(n_embed: int, target: str = tv.TARGET, **params) -> dict:
    """A config shaped as the published ``configs/model.yaml``."""
    return {"model": {"base_learning_rate": 4.5e-06, "target": target,
                      "params": {"embed_dim": EMBED, "n_embed": n_embed, "monitor": "val/rec_loss", "ddconfig": dict(DD),
                                 "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                                "params": {"disc_start": 0, "disc_weight": 0.75, "codebook_weight": 1.0}},
                                 **params}}}


def lightning_ckpt(sd: dict, extra_state: dict | None = None) -> dict:
    """A PyTorch Lightning 1.0.8 checkpoint around ``sd``, with the LPIPS / discriminator tensors a
    published VQGAN's ``state_dict`` also holds."""
    sd = OrderedDict(sd)
    g = torch.Generator().manual_seed(7)
    for name, shape in (("loss.logvar", ()), ("loss.perceptual_loss.scaling_layer.shift", (1, 3, 1, 1)),
                        ("loss.perceptual_loss.net.slice1.0.weight", (64, 3, 3, 3)), ("loss.discriminator.main.0.weight", (64, 3, 4, 4))):
        sd[name] = torch.randn(shape, generator=g)
    fake = sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
    p0 = next(iter(sd.values()))
    return {"epoch": 4, "global_step": 1000, "pytorch-lightning_version": "1.0.8",
            "callbacks": {fake: {"best_model_score": torch.tensor(0.25), "best_model_path": "logs/x/checkpoints/last.ckpt",
                                 **(extra_state or {})}},
            "optimizer_states": [{"state": {0: {"step": 1000, "exp_avg": torch.zeros_like(p0), "exp_avg_sq": torch.zeros_like(p0)}},
                                  "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "eps": 1e-08, "weight_decay": 0,
                                                    "amsgrad": False, "params": [0]}]}],
            "lr_schedulers": [], "state_dict": sd}


def save_ckpt(path, sd: dict, extra_state: dict | None = None) -> None:
    """``torch.save`` of ``lightning_ckpt`` with fake ``pytorch_lightning`` modules present only
    while pickling, so the file names the class and nothing of it is importable when loading."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
        for name in names:
            mp.setitem(sys.modules, name, types.ModuleType(name))
        cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
        sys.modules[names[-1]].ModelCheckpoint = cls
        torch.save(lightning_ckpt(sd, extra_state), path)


def write_yaml(path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def published(root, sd: dict, n_embed: int, **ckpt):
    """The downloads' layout: ``ckpts/last.ckpt`` + ``configs/model.yaml``; returns the ckpt path."""
    save_ckpt(root / "ckpts" / "last.ckpt", sd, **ckpt)
    write_yaml(root / "configs" / "model.yaml", model_yaml(n_embed))
    return root / "ckpts" / "last.ckpt"


def own_state(n_embed: int = 1024, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = tv.config_from_yaml(model_yaml(n_embed), "test")
    return tv.TamingVQGAN(cfg).state_dict()


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, DD["resolution"], DD["resolution"], generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the oracle


def taming_vqmodel(n_embed: int, seed: int = 0):
    """VQModel's modules from the taming wheel, random-init, with every GroupNorm and bias moved off
    its init (so a swapped scale or shift shows) and a codebook at the latents' scale (so argmin
    picks many codes, not the few a ±1/n_embed init leaves nearest)."""
    model_mod = pytest.importorskip("taming.modules.diffusionmodules.model", reason="the oracle: pip install --no-deps taming-transformers==0.0.1")
    quant_mod = pytest.importorskip("taming.modules.vqvae.quantize")
    torch.manual_seed(seed)
    m = torch.nn.Module()
    m.encoder, m.decoder = model_mod.Encoder(**DD), model_mod.Decoder(**DD)
    m.quantize = quant_mod.VectorQuantizer(n_embed, EMBED, beta=0.25)
    m.quant_conv = torch.nn.Conv2d(DD["z_channels"], EMBED, 1)
    m.post_quant_conv = torch.nn.Conv2d(EMBED, DD["z_channels"], 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        z = m.quant_conv(m.encoder(2.0 * images(2, seed=9) - 1.0))
        m.quantize.embedding.weight.copy_(torch.randn(n_embed, EMBED) * z.std() + z.mean())
    return m.eval()


@pytest.mark.parametrize("n_embed", [1024, 16384])
def test_latents_tokens_and_pixels_equal_taming(tmp_path, n_embed):
    oracle = taming_vqmodel(n_embed)
    sd = oracle.state_dict()
    assert {k.split(".")[0] for k in sd} == {"encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"}
    path = published(tmp_path, sd, n_embed)
    had_pl = "pytorch_lightning" in sys.modules
    assert tv.claims(path)
    model, record = tv.load(path, "cpu")
    assert had_pl or "pytorch_lightning" not in sys.modules  # nothing of the pickled class was imported

    x = images()
    with torch.no_grad():
        z = oracle.quant_conv(oracle.encoder(2.0 * x - 1.0))
        _, _, (_, _, idx) = oracle.quantize(z)
    want_tokens = idx.view(x.shape[0], 4, 4)
    got_tokens = model.encode(x)
    assert torch.equal(model.latents(x), z)
    assert got_tokens.dtype == torch.int64 and torch.equal(got_tokens, want_tokens)
    assert len(torch.unique(got_tokens)) > 8  # the comparison covers many codewords, not one

    # decoding: these tokens, and any ids, the codebook's first and last included
    other = torch.randint(0, n_embed, (1, 4, 4), generator=torch.Generator().manual_seed(3))
    other[0, 0, 0], other[0, 3, 3] = 0, n_embed - 1
    tokens = torch.cat([got_tokens, other])
    with torch.no_grad():
        zq = oracle.quantize.get_codebook_entry(tokens.reshape(-1), shape=(len(tokens), 4, 4, EMBED))
        want = (torch.clamp(oracle.decoder(oracle.post_quant_conv(zq)), -1.0, 1.0) + 1.0) / 2.0
    got = model.decode(tokens)
    assert torch.equal(got, want) and got.shape == (3, 3, 64, 64) and 0 <= got.min() and got.max() <= 1

    assert model.cfg.vocab_size == n_embed and model.cfg.grid == 4 and model.cfg.image_size == 64
    assert record["format"] == "taming-vqgan" and record["kind"] == model.kind == "taming_vqgan"
    assert record["config"] == model.config_dict() and record["config"]["vocab_size"] == n_embed
    assert record["fingerprint"] == weights_fingerprint(model) == weights_fingerprint(oracle)
    assert set(record["source"]["files"]) == {"last.ckpt", "model.yaml"} and record["source"]["loss_keys_dropped"] == 4


# ------------------------------------------------------------------ layouts


def test_every_yaml_place_and_a_state_dict_give_the_same_model(tmp_path):
    sd = own_state(1024)
    ckpt = published(tmp_path / "zip", sd, 1024)
    ref, ref_record = tv.load(ckpt, "cpu")
    x = images(1)
    want_tokens = ref.encode(x)
    for name, yaml_name in (("beside", "model.yaml"), ("stem", "vqgan.yaml")):
        save_ckpt(tmp_path / name / "vqgan.ckpt", sd)
        write_yaml(tmp_path / name / yaml_name, model_yaml(1024))
        model, record = tv.load(tmp_path / name / "vqgan.ckpt", "cpu")
        assert record["fingerprint"] == ref_record["fingerprint"] and record["config"] == ref_record["config"]
    # a state dict, as safetensors (the loss tensors dropped here as on loading) and as .pt
    (tmp_path / "st").mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "st" / "vqgan.safetensors"))
    torch.save(dict(sd), tmp_path / "st" / "vqgan.pt")
    write_yaml(tmp_path / "st" / "model.yaml", model_yaml(1024))
    for f in ("vqgan.safetensors", "vqgan.pt"):
        assert tv.claims(tmp_path / "st" / f)
        model, record = tv.load(tmp_path / "st" / f, "cpu")
        assert record["fingerprint"] == ref_record["fingerprint"] and torch.equal(model.encode(x), want_tokens)
        assert set(record["source"]["files"]) == {f, "model.yaml"}


def test_claims(tmp_path):
    assert tv.claims(tmp_path / "anything.ckpt")  # by suffix, without reading it
    save_file({"w": torch.zeros(1)}, str(tmp_path / "a.safetensors"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "a.pt")
    assert not tv.claims(tmp_path / "a.safetensors") and not tv.claims(tmp_path / "a.pt")  # no YAML
    write_yaml(tmp_path / "model.yaml", {"model": {"target": "ldm.models.autoencoder.VQModel"}})
    assert not tv.claims(tmp_path / "a.safetensors")
    write_yaml(tmp_path / "model.yaml", model_yaml(1024, target="taming.models.vqgan.GumbelVQ"))
    assert tv.claims(tmp_path / "a.safetensors")  # claimed, so that load names the unsupported target
    write_yaml(tmp_path / "model.yaml", model_yaml(1024))
    assert tv.claims(tmp_path / "a.pt") and not tv.claims(tmp_path / "model.yaml")


# ------------------------------------------------------------------ refusals


class _Runs:
    """Pickles as a call of ``os.system``: loading it with a plain unpickler would run the command."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_an_extra_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = published(tmp_path, own_state(), 1024, extra_state={"hook": _Runs(f"touch {marker}")})
    with pytest.raises(T2IError) as e:
        tv.load(path, "cpu")
    assert f"{os.system.__module__}.system" in str(e.value) and "refusing" in str(e.value)
    assert not marker.exists()


def test_wrong_target_is_refused(tmp_path):
    path = published(tmp_path, own_state(), 1024)
    write_yaml(tmp_path / "configs" / "model.yaml", model_yaml(1024, target="taming.models.vqgan.GumbelVQ"))
    with pytest.raises(T2IError, match=r"taming\.models\.vqgan\.GumbelVQ'; only taming\.models\.vqgan\.VQModel"):
        tv.load(path, "cpu")


def test_missing_yaml_names_where_it_looked(tmp_path):
    save_ckpt(tmp_path / "ckpts" / "last.ckpt", own_state())
    with pytest.raises(T2IError) as e:
        tv.load(tmp_path / "ckpts" / "last.ckpt", "cpu")
    for p in (tmp_path / "ckpts" / "last.yaml", tmp_path / "ckpts" / "model.yaml", tmp_path / "configs" / "model.yaml"):
        assert str(p) in str(e.value)


def test_shapes_that_do_not_fit_the_yaml_are_refused(tmp_path):
    path = published(tmp_path, own_state(512), 1024)  # the file's codebook has 512 codes, the YAML says 1024
    with pytest.raises(T2IError, match=r"quantize\.embedding\.weight has shape \(512, 8\) but model\.yaml gives \(1024, 8\)"):
        tv.load(path, "cpu")


@pytest.mark.parametrize("change", ["remap buffer", "missing key", "unexpected key"])
def test_keys_that_do_not_fit_are_refused(tmp_path, change):
    sd = own_state()
    if change == "remap buffer":
        sd["quantize.used"] = torch.arange(100)
    elif change == "missing key":
        del sd["decoder.up.0.block.1.conv2.bias"]
    else:
        sd["encoder.extra.weight"] = torch.zeros(1)
    path = published(tmp_path, sd, 1024)
    name = {"remap buffer": "quantize.used", "missing key": "decoder.up.0.block.1.conv2.bias", "unexpected key": "encoder.extra.weight"}[change]
    with pytest.raises(T2IError, match=name.replace(".", r"\.")):
        tv.load(path, "cpu")


@pytest.mark.parametrize("params, message", [
    ({"remap": "data/used.npy"}, "remap is set"),
    ({"extra": 1}, "model.params has extra, which VQModel does not take"),
    ({"ddconfig": {**DD, "attn_type": "linear"}}, "ddconfig has attn_type"),
    ({"ddconfig": {**DD, "double_z": True}}, "double_z must be false"),
    ({"ddconfig": {**DD, "resolution": 72}}, "resolution 72 must be divisible by"),
])
def test_yaml_params_that_change_the_model_are_refused(tmp_path, params, message):
    path = published(tmp_path, own_state(), 1024)
    write_yaml(tmp_path / "configs" / "model.yaml", model_yaml(1024, **params))
    with pytest.raises(T2IError, match=message):
        tv.load(path, "cpu")


def test_decode_refuses_ids_outside_the_codebook():
    model = tv.TamingVQGAN(tv.config_from_yaml(model_yaml(1024), "test")).eval()
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        model.decode(torch.full((1, 4, 4), 1024))


def test_t2i_encode_preview_and_eval_take_last_ckpt(tmp_path):
    """The published layout through the commands: ``t2i encode`` (manifest names the kind, format,
    fingerprint and both source files; tokens are the model's on each stored image), ``t2i preview
    --autoencoder`` and ``t2i eval autoencoder``. No oracle: this module's own random-init weights."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from fixtures_sources import make_coco
    from t2i_data.preprocess import PreprocessConfig, preprocess
    from t2i_data.runner import InProcessRunner
    from t2i_data.tario import iter_samples
    from t2i_models.checkpoint import load_autoencoder
    from t2i_models.cli import main
    from t2i_models.encode import EncodeConfig, encode

    ckpt = published(tmp_path / "vqgan", own_state(1024), 1024)
    root = make_coco(tmp_path / "coco")
    preprocess(PreprocessConfig("coco", str(root), regime="center", size=DD["resolution"], shard_size=2), tmp_path / "img", InProcessRunner())
    split = tmp_path / "img" / "val2017"
    m = encode(ckpt, split, tmp_path / "tok", EncodeConfig(views=2, seed=3, batch_size=3), InProcessRunner())["val2017"]
    model, rec = load_autoencoder(ckpt)
    ae = m["autoencoder"]
    assert (ae["kind"], ae["format"], ae["fingerprint"], ae["grid"], ae["vocab_size"]) == ("taming_vqgan", "taming-vqgan", rec["fingerprint"], 4, 1024)
    assert sorted(ae["source"]["files"]) == ["last.ckpt", "model.yaml"]
    n = 0
    for shard in sorted(split.glob("*.tar")):
        for image, tok in zip(iter_samples(shard), iter_samples(m["_out"] / shard.name)):
            tokens = np.load(io.BytesIO(tok["image_tokens.npy"]))
            assert tokens.shape == (2, 4, 4) and tokens.dtype == np.uint16
            x = torch.from_numpy(np.asarray(Image.open(io.BytesIO(image["jpg"])).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
            assert np.array_equal(tokens[0], model.encode(x)[0].numpy())  # view 0 of a center set: the stored image
            n += 1
    assert n >= 3
    assert main(["preview", str(sorted(m["_out"].glob("*.tar"))[0]), "--autoencoder", str(ckpt), "--out", str(tmp_path / "p.png")]) == 0
    assert main(["eval", "autoencoder", "--autoencoder", str(ckpt), "--images", str(split), "--out", str(tmp_path / "ev"), "--grid", "2"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["kind"] == "taming_vqgan" and report["fingerprint"] == rec["fingerprint"] and report["images"] == n


@pytest.mark.parametrize("change, message", [
    ({"n_embed": 10**12}, r"n_embed must be an integer in \[1, 1,048,576\], got 1000000000000"),
    ({"ddconfig": dict(DD, ch=33554432)}, r"ch must be an integer in \[1, 4,096\], got 33554432"),
    ({"ddconfig": dict(DD, dropout="x")}, r"dropout must be a number in \[0, 1\), got 'x'"),
    ({"ddconfig": dict(DD, attn_resolutions=16)}, r"attn_resolutions must be a list of integers, got 16"),
    ({"ddconfig": dict(DD, ch_mult="abc")}, r"ch_mult must be a list of integers, got 'abc'"),
    ({"ddconfig": dict(DD, num_res_blocks=True)}, r"num_res_blocks must be an integer in \[0, 16\], got True"),
    ({"ddconfig": dict(DD, resamp_with_conv="yes")}, r"resamp_with_conv must be true or false, got 'yes'"),
])
def test_yaml_sizes_and_types_are_checked_before_a_model_is_built(tmp_path, change, message):
    """A YAML of absurd sizes or wrong types stops with one message naming the field; nothing of its
    size is allocated (the model is built on the meta device only after the checks)."""
    ckpt = published(tmp_path, own_state(1024), 1024)
    doc = model_yaml(1024)
    doc["model"]["params"].update(change)
    write_yaml(tmp_path / "configs" / "model.yaml", doc)
    with pytest.raises(T2IError, match=message):
        tv.load(ckpt)


def test_a_folder_given_as_the_checkpoint_is_named_as_one(tmp_path):
    (tmp_path / "last.ckpt").mkdir()
    with pytest.raises(T2IError, match=r"last.ckpt: a folder, not a file \(taming VQGAN\)"):
        tv.load(tmp_path / "last.ckpt")
