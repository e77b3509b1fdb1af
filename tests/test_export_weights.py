"""``t2i export-weights``: every model kind's checkpoint as model.safetensors + config.json
(``t2i_models/weights_folder.py``), read back by every loader, refused with one line where wrong."""
import json
import shutil

import pytest
import safetensors.numpy
import torch
from safetensors.torch import load_file

import t2i_data
from t2i_data.digest import file_sha256
from t2i_data.errors import T2IError
from t2i_models import checkpoint as C
from t2i_models.builders import build_autoencoder
from t2i_models.cli import main
from t2i_models.clip import clip_tiny
from t2i_models.cvae import build_cvae
from t2i_models.prior_builders import g1_tiny, g2_tiny, g3_tiny
from t2i_models.regress import build_regressor

FP = {"autoencoder": "a" * 64, "tokenizer": "b" * 64}
TOKENS = dict(text_vocab=24, text_len=12, pad_id=20, image_vocab=32, grid=4)  # g*_tiny's token spaces
TEXT = {"length": 12, "add_bos": False, "add_eos": True}
AE = dict(images_digest="c" * 64, rec_loss={"loss": "mse"})
PRIOR = dict(fingerprints=FP, tokens=TOKENS, text_config=TEXT)


def _ae(x):
    return lambda m: {"codes": m.encode(x), "pixels": m.decode(m.encode(x))}


def _levels(x):
    return lambda m: {"codes": m.encode_levels(x), "pixels": m.decode_levels(m.encode_levels(x))}


def _prior(m):
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, 20, (2, 12), generator=g)
    return m(text, torch.randint(0, 32, (2, 16), generator=g))


def _cvae(x, cond, latent):
    return lambda m: {"enc": m.encode(x, cond), "dec": m.decode_logits(torch.ones(len(x), latent), cond)}


torch.manual_seed(0)
X32, X28, X16, E32 = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 28, 28), torch.rand(2, 3, 16, 16), torch.rand(3, 32)
# kind: (builder, save, load, forward on a fixed input, what the trainer records beside the weights)
KINDS = {
    "dvae": (lambda: build_autoencoder("dvae_tiny"), C.save_autoencoder, C.load_autoencoder, _ae(X32), AE),
    "vqvae": (lambda: build_autoencoder("vqvae_tiny"), C.save_autoencoder, C.load_autoencoder, _ae(X32), AE),
    "vqvae2": (lambda: build_autoencoder("vqvae2_tiny"), C.save_autoencoder, C.load_autoencoder, _levels(X32), AE),
    "vqvae_study": (lambda: build_autoencoder("vqvae_study_tiny"), C.save_autoencoder, C.load_autoencoder, _ae(X32), AE),
    "g1": (g1_tiny, C.save_prior, C.load_prior, _prior, PRIOR),
    "g2": (g2_tiny, C.save_prior, C.load_prior, _prior, PRIOR),
    "g3": (g3_tiny, C.save_prior, C.load_prior, _prior, dict(PRIOR, level="top")),
    "clip": (clip_tiny, C.save_clip, C.load_clip, lambda m: m(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)),
                                                              torch.randint(0, 10, (2, 12), generator=torch.Generator().manual_seed(3))),
             dict(fingerprints=FP, images_digest="d" * 64, tokens=TOKENS, text_config=TEXT, text_input="symbols")),
    "cvae_mlp": (lambda: build_cvae("cvae_mlp_tiny"), C.save_cvae, C.load_cvae, _cvae(X28, torch.tensor([3, 7]), 4),
                 dict(images_digest="e" * 64, subset={"fraction": 1.0, "seed": 0, "kept": 10, "total": 10})),
    "cvae_conv": (lambda: build_cvae("cvae_conv_tiny"), C.save_cvae, C.load_cvae, _cvae(X16, torch.rand(2, 32), 8),
                  dict(images_digest="e" * 64, subset={"fraction": 0.5, "seed": 1, "kept": 5, "total": 10})),
    "regress": (lambda: build_regressor("regress_tiny", "mlp", 32, 64), C.save_regress, C.load_regress, lambda m: m(E32),
                dict(autoencoder={"fingerprint": "a" * 64, "kind": "vqvae", "codes": 32, "dim": 4, "grid": 4, "path": "ae/last.pt"},
                     text_encoder={"fingerprint": "f" * 64, "dim": 32}, image_set="9" * 64, margin=1.0, mode="mlp")),
}
TRAINING = ("optimizer", "stream", "epoch", "batch_in_epoch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (last.pt, its export folder): each a random-init tiny model saved with a trainer's
    records and training state (an Adam state after one step), then exported by the command line."""
    root, out = tmp_path_factory.mktemp("export"), {}
    for kind, (build, save, _, _, records) in KINDS.items():
        torch.manual_seed(len(kind))
        model = build()
        opt = torch.optim.Adam(model.parameters())
        sum(p.sum() for p in model.parameters()).backward()
        opt.step()
        opt.zero_grad()
        last = root / kind / "last.pt"
        save(last, model, optimizer=opt.state_dict(), step=7, epoch=1, batch_in_epoch=3, stream={"epoch": 1, "batches_done": 3},
             train_config={"arch": kind, "lr": 0.001, "milestones": [2, 4]}, **records)
        assert main(["-q", "export-weights", str(last), "--out", str(root / f"{kind}-weights")]) == 0
        out[kind] = last, root / f"{kind}-weights"
    return out


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_bit_for_bit_through_its_loader(exported, kind):
    last, folder = exported[kind]
    load, forward, records = KINDS[kind][2], KINDS[kind][3], KINDS[kind][4]
    m_pt, ck_pt = load(last)
    m_dir, ck_dir = load(folder)
    m_file, _ = load(folder / "model.safetensors")  # the weights file of a folder is the folder
    state = ck_pt["state_dict"]
    stored = load_file(folder / "model.safetensors")
    tied = json.loads((folder / "config.json").read_text())["tied"]
    assert set(stored) | set(tied) == set(state) and not set(stored) & set(tied)
    plain = safetensors.numpy.load_file(folder / "model.safetensors")  # without torch: numpy arrays
    for name, t in state.items():  # bytes, dtype and shape of every tensor, aliases included
        got, arr = stored[tied.get(name, name)], plain[tied.get(name, name)]
        assert got.dtype == t.dtype and got.shape == t.shape and got.numpy().tobytes() == t.numpy().tobytes(), name
        assert arr.dtype == t.numpy().dtype and arr.shape == tuple(t.shape) and arr.tobytes() == t.numpy().tobytes(), name
    with torch.no_grad():
        assert _equal(forward(m_pt), forward(m_dir)) and _equal(forward(m_pt), forward(m_file))
    assert C.weights_fingerprint(m_dir) == ck_pt["fingerprint"] == ck_dir["fingerprint"]
    for key in ("format", "kind", "config", "step", "train_config", *records):
        assert ck_dir[key] == ck_pt[key], key
    assert not set(TRAINING) & set(ck_dir) and set(TRAINING) <= set(ck_pt)
    assert ck_dir["weights_folder"]["source"]["sha256"] == file_sha256(last)
    assert (folder / "model.safetensors").stat().st_mode == (folder / "config.json").stat().st_mode  # readable as any file written here


@pytest.mark.parametrize("kind", KINDS)
def test_config_json_names_architecture_token_spaces_and_fingerprints(exported, kind):
    last, folder = exported[kind]
    doc = json.loads((folder / "config.json").read_text())
    ck = C.load_checkpoint_dict(last)
    assert (folder / "config.json").read_text() == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert doc["model_type"] == f"t2i_{kind}" and doc["export_format"] == "t2i-weights/1" and doc["t2i_version"] == t2i_data.__version__
    assert (doc["format"], doc["kind"], doc["config"], doc["fingerprint"]) == (ck["format"], ck["kind"], ck["config"], ck["fingerprint"])
    assert doc["dtype"] == "float32" and doc["source"] == {"name": "last.pt", "bytes": last.stat().st_size, "sha256": file_sha256(last)}
    assert doc["checkpoint"]["step"] == 7 and doc["checkpoint"]["train_config"] == {"arch": kind, "lr": 0.001, "milestones": [2, 4]}
    assert not set(TRAINING) & set(doc["checkpoint"]) and "state_dict" not in doc["checkpoint"]
    records = KINDS[kind][4]
    on = {k: v for k, v in records.items() if k in ("fingerprints", "images_digest", "image_set", "autoencoder", "text_encoder",
                                                     "rec_loss", "subset")}
    assert doc["trained_on"] == on and on
    expected = {
        "dvae": {"image": {"vocab_size": 32, "grid": 8, "image_size": 32}},
        "vqvae": {"image": {"vocab_size": 32, "grid": 8, "image_size": 32}},
        "vqvae2": {"image": {"levels": {"top": {"grid": 4, "vocab_size": 32}, "bottom": {"grid": 8, "vocab_size": 32}}, "image_size": 32}},
        "vqvae_study": {"image": {"vocab_size": 32, "grid": 8, "image_size": 32}},
        "g1": {"image": {"vocab_size": 32, "grid": 4}, "text": {"vocab_size": 24, "length": 12, "pad_id": 20, "add_bos": False, "add_eos": True}},
        "clip": {"image": {"vocab_size": 32, "grid": 4},
                 "text": {"vocab_size": 24, "length": 12, "pad_id": 20, "add_bos": False, "add_eos": True, "input": "symbols"}},
        "cvae_mlp": {"condition": {"classes": 10}},
        "cvae_conv": {"condition": {"text_embedding_dim": 32}},
        "regress": {"text": {"embedding_dim": 32}, "image": {"latent_dim": 64}},
    }
    expected["g2"] = expected["g1"]
    expected["g3"] = {"image": dict(expected["g1"]["image"], level="top"), "text": expected["g1"]["text"]}
    assert doc["token_spaces"] == expected[kind]
    assert doc["tied"] == ({"model.decoder.transformer.wte.weight": "model.decoder.lm_head.weight"} if kind == "g3" else {})


def test_g3s_tied_head_is_stored_once_and_tied_again_on_load(exported):
    _, folder = exported["g3"]
    stored = load_file(folder / "model.safetensors")
    assert "model.decoder.lm_head.weight" in stored and "model.decoder.transformer.wte.weight" not in stored
    model, _ = C.load_prior(folder)
    dec = model.model.decoder
    assert dec.lm_head.weight is dec.transformer.wte.weight  # one Parameter, as a freshly built G3


def test_other_commands_take_the_folder_encode_gives_the_same_bytes(exported, tmp_path, capsys):
    from fixtures_sources import make_coco

    from t2i_data.preprocess import PreprocessConfig, preprocess
    from t2i_data.runner import InProcessRunner

    root = make_coco(tmp_path / "coco")
    preprocess(PreprocessConfig("coco", str(root), regime="prior", size=32, shard_size=2), tmp_path / "img", InProcessRunner())
    last, folder = exported["dvae"]
    for name, ae in (("pt", last), ("dir", folder)):
        assert main(["-q", "encode", "--autoencoder", str(ae), "--images", str(tmp_path / "img" / "val2017"), "--out", str(tmp_path / name),
                     "--check", "2", "--workers", "0"]) == 0
    files = sorted(p.name for p in (tmp_path / "pt").iterdir())
    assert files and files == sorted(p.name for p in (tmp_path / "dir").iterdir())
    assert all((tmp_path / "pt" / f).read_bytes() == (tmp_path / "dir" / f).read_bytes() for f in files if f.endswith((".tar", ".json")))
    shard = str(next((tmp_path / "dir").glob("*.tar")))
    assert main(["-q", "preview", shard, "--autoencoder", str(folder), "--out", str(tmp_path / "p.png")]) == 0


def test_a_weights_folder_never_resumes_a_run(exported, tmp_path):
    _, folder = exported["g1"]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(folder, run / "last.pt")
    with pytest.raises(T2IError) as e:
        C.resume_checkpoint(run / "last.pt", "g1")
    assert str(e.value) == f"{run / 'last.pt'}: a weights folder from 't2i export-weights', which holds weights only, no optimizer state: resume from last.pt"
    with pytest.raises(T2IError) as e:
        C.restore_training(C.load_checkpoint_dict(folder), folder, None, None, None, None, ())
    assert str(e.value) == f"{folder} holds weights only, no optimizer state: resume from last.pt"


def _err(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("t2i: error: ")
    return err[len("t2i: error: "):-1]


def test_export_refusals_are_one_line(exported, tmp_path, capsys):
    last, folder = exported["dvae"]
    run = last.parent
    missing = tmp_path / "nope.pt"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    pkl, ckpt = tmp_path / "encoder.pkl", tmp_path / "vqgan" / "last.ckpt"
    pkl.write_bytes(b"\x80\x02}q\x00.")
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    out = tmp_path / "w"
    cases = [
        (missing, f"{missing}: no such checkpoint"),
        (garbage, f"{garbage}: not a loadable t2i checkpoint (UnpicklingError: Weights only load failed. In PyTorch 2.6, we changed the "
                  f"default value of the `weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` with "
                  f"`weights_only` set to `False` will likely succeed, but it can result in arbitrary code execution. Do it only if you "
                  f"got the file from a trusted source.)"),
        (run, f"{run} is a run folder: pass its checkpoint file {last}"),
        (folder, f"{folder} is already an export of 't2i export-weights'; pass the last.pt it was exported from"),
        (folder / "model.safetensors", f"{folder / 'model.safetensors'} is already an export of 't2i export-weights'; pass the last.pt it "
                                       f"was exported from"),
        (tmp_path, f"{tmp_path}: a folder without model.safetensors + config.json (what 't2i export-weights' writes) or last.pt "
                   f"(a run folder); give a t2i checkpoint file or a weights folder"),
        (pkl, f"{pkl}: a published openai_dvae tokenizer, not a t2i checkpoint; its record has no state dict of this project to export "
              f"(its published files are what others open): pass a t2i checkpoint (a run's last.pt)"),
        (ckpt, f"{ckpt}: a published taming_vqgan tokenizer, not a t2i checkpoint; its record has no state dict of this project to export "
               f"(its published files are what others open): pass a t2i checkpoint (a run's last.pt)"),
    ]
    for src, message in cases:
        assert _err(["export-weights", str(src), "--out", str(out)], capsys) == message, src
        assert not out.exists() and not out.with_name("w.partial").exists()
    hint = "; --autoencoder takes a t2i autoencoder checkpoint (last.pt, or a folder from 't2i export-weights') or a published tokenizer"
    assert _err(["preview", "x.tar", "--autoencoder", str(run), "--out", str(tmp_path / "p.png")], capsys) == (
        f"{run} is a run folder: pass its checkpoint file {last}, or a folder from 't2i export-weights'{hint} ({C.known_layouts()})")
    with pytest.raises(T2IError) as e:
        C.load_prior_checked(str(run))
    assert str(e.value) == f"--priors {run} is a run folder: pass its checkpoint file {last}, or a folder from 't2i export-weights'"
    other = tmp_path / "other.pt"
    torch.save({"format": "t2i-something/1", "kind": "x"}, other)
    assert _err(["export-weights", str(other), "--out", str(out)], capsys) == (
        f"{other}: a 't2i-something/1' checkpoint; export-weights takes t2i-autoencoder/1, t2i-prior/1, t2i-clip/1, t2i-cvae/1, t2i-regress/1")


def test_out_is_refused_when_it_holds_the_checkpoint_or_is_not_empty(exported, tmp_path, capsys):
    last, _ = exported["regress"]
    run = tmp_path / "run"
    shutil.copytree(last.parent, run)
    for flags in ([], ["--overwrite"]):
        for out in (run, tmp_path):
            assert _err(["export-weights", str(run / "last.pt"), "--out", str(out), *flags], capsys) == (
                f"--out {out} holds the checkpoint {run / 'last.pt'}; choose an --out outside the run folder (replacing it would delete the checkpoint)")
    assert (run / "last.pt").is_file()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert _err(["export-weights", str(run / "last.pt"), "--out", str(busy)], capsys) == (
        f"--out {busy} already exists and is not empty; choose another --out, or pass --overwrite to replace it")
    assert (busy / "keep.txt").read_text() == "mine"
    assert main(["export-weights", str(run / "last.pt"), "--out", str(busy), "--overwrite"]) == 0
    assert sorted(p.name for p in busy.iterdir()) == ["config.json", "model.safetensors"]
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {busy / 'model.safetensors'} (") and "regress at step 7, fingerprint " in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-q", "export-weights", str(run / "last.pt"), "--out", str(empty)]) == 0 and (empty / "config.json").is_file()
    (tmp_path / "a-file").write_text("x")
    for flags in ([], ["--overwrite"]):  # a file is never replaced by the folder
        assert _err(["export-weights", str(run / "last.pt"), "--out", str(tmp_path / "a-file"), *flags], capsys) == (
            f"--out {tmp_path / 'a-file'} is a file, not a folder; choose another --out")
    assert (tmp_path / "a-file").read_text() == "x"
    for bad in (tmp_path / "a-file" / "w", run / "last.pt" / "w"):  # under a file: the folder cannot be made
        msg = _err(["export-weights", str(run / "last.pt"), "--out", str(bad)], capsys)
        assert msg.startswith(f"--out {bad}: cannot make the folder (") and "\n" not in msg


def _damage(folder, how):
    doc = json.loads((folder / "config.json").read_text())
    if how == "no config":
        (folder / "config.json").unlink()
    elif how == "no weights":
        (folder / "model.safetensors").unlink()
    elif how == "cut weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "garbled header":
        (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    elif how == "flipped byte":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-1] ^= 0x40
        (folder / "model.safetensors").write_bytes(bytes(data))
    elif how == "config not json":
        (folder / "config.json").write_text("{")
    else:
        doc.update({"format v9": {"export_format": "t2i-weights/9"}, "no format": {"export_format": None},
                    "transformers clip": {"model_type": "clip"}, "bert": {"model_type": "bert"}, "no fingerprint": {},
                    "kind mismatch": {"model_type": "t2i_vqvae"}, "tied a list": {"tied": ["a"]},
                    "tied to nothing": {"tied": {"decoder.x": "decoder.y"}}, "config a string": {"config": "dvae_tiny"},
                    "dtype edited": {"dtype": "float16"}, "no dtype": {}}[how])
        if how in ("transformers clip", "bert"):
            del doc["export_format"]
        if how == "no fingerprint":
            del doc["fingerprint"]
        if how == "no dtype":
            del doc["dtype"]
        (folder / "config.json").write_text(json.dumps(doc))


DAMAGE = {
    "no config": "{d}: model.safetensors without config.json beside it; a t2i weights folder holds both ('t2i export-weights' writes them): export it again",
    "no weights": "{d}: no model.safetensors beside config.json; a t2i weights folder holds both: export it again",
    "cut weights": "{d}: model.safetensors cannot be read (SafetensorError: Error while deserializing header: incomplete metadata, file not fully covered); "
                   "the folder is damaged: export it again",
    "garbled header": "{d}: model.safetensors cannot be read (SafetensorError: Error while deserializing header: header too large); "
                      "the folder is damaged: export it again",
    "flipped byte": "{d}: weights do not match the fingerprint recorded in the checkpoint; the file is damaged",
    "config not json": "{d}: config.json is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); "
                       "the folder is damaged: export it again",
    "format v9": "{d}: config.json has export_format 't2i-weights/9'; this t2i ({v}) reads t2i-weights/1: it was written by another version",
    "no format": "{d}: config.json has export_format None; this t2i ({v}) reads t2i-weights/1: it was written by another version",
    "transformers clip": "{d}: a transformers CLIP folder (config.json model_type 'clip'), not a t2i weights folder; a transformers CLIP folder "
                         "goes to 't2i sample --clip' and 't2i eval images --clip'; here give a t2i checkpoint (last.pt) or a folder from 't2i export-weights'",
    "bert": "{d}: config.json has no export_format (model_type 'bert'): not a folder from 't2i export-weights'; give a t2i checkpoint (last.pt) "
            "or a folder 't2i export-weights' wrote",
    "no fingerprint": "{d}: config.json lacks fingerprint; the folder is damaged: export it again",
    "kind mismatch": "{d}: config.json has model_type 't2i_vqvae' but kind 'dvae' (model_type t2i_dvae); the folder is damaged: export it again",
    "tied a list": "{d}: config.json has tied of the wrong type (list); the folder is damaged: export it again",
    "tied to nothing": "{d}: config.json ties decoder.x to decoder.y, which model.safetensors does not hold; the folder is damaged",
    "config a string": "{d}: config.json has config of the wrong type (str); the folder is damaged: export it again",
    "dtype edited": "{d}: config.json says dtype 'float16' but model.safetensors holds 'float32'; the folder is damaged: export it again",
    "no dtype": "{d}: config.json lacks dtype; the folder is damaged: export it again",
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_or_foreign_folder_stops_every_loader_with_one_line(exported, tmp_path, capsys, how):
    _, folder = exported["dvae"]
    d = tmp_path / "w"
    shutil.copytree(folder, d)
    _damage(d, how)
    message = DAMAGE[how].format(d=d, v=t2i_data.__version__)
    got = _err(["preview", "x.tar", "--autoencoder", str(d), "--out", str(tmp_path / "p.png")], capsys)
    assert got == message + ("; --autoencoder takes a t2i autoencoder checkpoint (last.pt, or a folder from 't2i export-weights') or a "
                             "published tokenizer (" + C.known_layouts() + ")" if how != "flipped byte" else "")
    if how != "flipped byte":  # the other loaders: the same line, prefixed with their flag where they name it
        with pytest.raises(T2IError) as e:
            C.load_prior(d)
        assert str(e.value) == message
        with pytest.raises(T2IError) as e:
            C.load_clip(d)
        assert str(e.value) == message.replace(f"{d}", f"--clip {d}", 1)


def test_the_folder_and_a_transformers_clip_folder_are_told_apart(exported, tmp_path):
    from t2i_models.clip_score import HOLDS, load_clip

    _, folder = exported["clip"]
    with pytest.raises(T2IError) as e:
        load_clip(folder)
    assert str(e.value) == (f"--clip {folder}: a t2i weights folder ('t2i export-weights' of a clip), not a transformers CLIP; this --clip "
                            f"takes a transformers CLIP folder ({HOLDS}); a t2i CLIP goes to 't2i eval priors|mdmnist --clip'")
    _, ae_folder = exported["vqvae"]
    with pytest.raises(T2IError, match=r"'t2i export-weights' of a vqvae\), not a transformers CLIP"):
        load_clip(ae_folder)


def test_a_family_loader_refuses_another_familys_folder(exported):
    _, g1 = exported["g1"]
    _, ae = exported["dvae"]
    with pytest.raises(T2IError) as e:
        C.load_clip(g1)
    assert str(e.value) == f"--clip {g1}: a t2i-prior/1 checkpoint (g1), not a CLIP; train one with 't2i train clip'"
    with pytest.raises(T2IError) as e:
        C.load_prior(ae)
    assert str(e.value) == f"{ae}: not a t2i prior checkpoint (format 't2i-autoencoder/1')"
    with pytest.raises(T2IError) as e:
        C.load_autoencoder(g1)
    assert str(e.value).startswith(f"{g1}: not a t2i autoencoder checkpoint (format 't2i-prior/1')")


def test_a_published_tokenizers_safetensors_beside_another_config_json_stays_theirs(tmp_path):
    """Only a config.json with export_format makes a model.safetensors a t2i weights file: an
    OpenAI dVAE state dict in a folder with its own config.json still goes to that family's reader
    (whose message names what the file lacks), and the folder itself is not a t2i weights folder."""
    from safetensors.torch import save_file

    save_file({"encoder.blocks.input.w": torch.zeros(4, 3, 7, 7)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dall_e"}))
    with pytest.raises(T2IError) as e:
        C.load_autoencoder(tmp_path / "model.safetensors")
    assert str(e.value) == (f"{tmp_path / 'model.safetensors'}: no decoder.blocks.input.w in the state dict; not an OpenAI dVAE "
                            f"(it holds encoder.blocks.input.w, ...)")
    with pytest.raises(T2IError) as e:
        C.load_autoencoder(tmp_path)
    assert str(e.value).startswith(f"{tmp_path}: config.json has no export_format (model_type 'dall_e'): not a folder from 't2i export-weights'")


def test_a_failed_export_leaves_the_previous_folder_and_no_partial(exported, tmp_path, monkeypatch):
    import safetensors.torch

    last, folder = exported["cvae_mlp"]
    out = tmp_path / "w"
    shutil.copytree(folder, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").write(b"\0" * 100)  # part of the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError):
        C.export_weights(last, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not (tmp_path / "w.partial").exists()


@pytest.mark.parametrize("field, value", [("hidden", 8.0), ("hidden", "8"), ("tau_start", -1)])
def test_a_config_field_of_the_wrong_type_or_value_is_one_line(exported, tmp_path, field, value):
    _, folder = exported["dvae"]
    d = tmp_path / "w"
    shutil.copytree(folder, d)
    doc = json.loads((d / "config.json").read_text())
    assert field in doc["config"]
    doc["config"][field] = value
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(T2IError) as e:
        C.load_autoencoder(d)
    assert str(e.value).startswith(f"{d}: its dvae config does not make a model (") and "\n" not in str(e.value)


def test_a_checkpoint_without_a_config_record_is_one_line(exported, tmp_path):
    last, _ = exported["dvae"]
    ck = torch.load(last, weights_only=True)
    ck["config"] = None
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(T2IError, match=r"bad.pt: its dvae checkpoint has no config record \(got NoneType\)"):
        C.load_autoencoder(tmp_path / "bad.pt")


@pytest.mark.parametrize("step", ["7", -1, 7.0, None, True])
def test_a_checkpoint_whose_step_is_not_a_count_is_refused_in_one_line(exported, tmp_path, capsys, step):
    last, _ = exported["dvae"]
    ck = torch.load(last, weights_only=True)
    ck["step"] = step
    torch.save(ck, tmp_path / "bad.pt")
    assert _err(["export-weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "w")], capsys) == (
        f"{tmp_path / 'bad.pt'}: its step record is {step!r}, not a count of steps; the checkpoint was changed by hand")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("fingerprint", ["absent", None])
def test_a_checkpoint_without_a_fingerprint_is_said_to_lack_one(exported, tmp_path, fingerprint):
    last, _ = exported["dvae"]
    ck = torch.load(last, weights_only=True)
    if fingerprint == "absent":
        del ck["fingerprint"]
    else:
        ck["fingerprint"] = None
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(T2IError) as e:
        C.load_autoencoder(tmp_path / "bad.pt")
    assert str(e.value) == (f"{tmp_path / 'bad.pt'}: records no weights fingerprint, which every t2i checkpoint carries; "
                            "it was changed by hand or written by another program")


@pytest.mark.parametrize("step", ["3", -1, 3.0])
def test_every_loader_and_a_resume_refuse_a_step_that_is_not_a_count_in_one_line(exported, tmp_path, step):
    # eval, encode and preview load through load_checkpoint_dict; a resume through resume_checkpoint: one check for all
    last, folder = exported["dvae"]
    ck = torch.load(last, weights_only=True)
    ck["step"] = step
    torch.save(ck, tmp_path / "last.pt")
    message = f"{tmp_path / 'last.pt'}: its step record is {step!r}, not a count of steps; the checkpoint was changed by hand"
    with pytest.raises(T2IError) as e:
        C.load_autoencoder(tmp_path / "last.pt")
    assert str(e.value).startswith(message + "; --autoencoder takes")  # and what it takes, as for any unloadable file
    with pytest.raises(T2IError) as e:
        C.resume_checkpoint(tmp_path / "last.pt", "dvae_tiny")
    assert str(e.value) == message
    d = tmp_path / "w"
    shutil.copytree(folder, d)
    doc = json.loads((d / "config.json").read_text())
    doc["checkpoint"]["step"] = step
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(T2IError) as e:
        C.load_prior(d.parent / "w")  # the folder's own loaders say it the same way; the family checks come after
    assert str(e.value) == f"{d}: its step record is {step!r}, not a count of steps; the checkpoint was changed by hand"
