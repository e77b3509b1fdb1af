"""Wrong use ends in one message and exit 2, never a traceback or a misleading success (issue 15,
kind 6): a table of wrong arguments for every subcommand, one output layout for derived sets,
a lock against two builds into one folder, a full disk, unknown model settings, and warnings
for prompts the tokenizer cannot read and for a CLIP at chance."""
import errno
import json
import os
import socket

import pytest
import torch

from t2i_data import build as shardset_build
from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import InProcessRunner
from t2i_data.tario import TarWriter

from fixtures_sources import make_coco


@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    d = tmp_path_factory.mktemp("junk")
    (d / "bad.pt").write_bytes(b"not a checkpoint")
    (d / "notes.txt").write_text("x = [\n")
    (d / "empty").mkdir()
    return d


def WRONG(d):  # (argv, a fragment of the one-line message)
    return [
        (["mdmnist", "build", "--out", f"{d}/o", "--train", "-5"], "--train: needs a number of at least 0"),
        (["mdmnist", "build", "--out", f"{d}/o", "--png-level", "12"], "--png-level must be in 0..9"),
        (["mdmnist", "build", "--out", f"{d}/o", "--mnist", f"{d}/empty"], "point --mnist at the folder"),
        (["mdmnist", "build", "--out", f"{d}/o", "--config", f"{d}/notes.txt"], "not valid TOML"),
        (["mdmnist", "build", "--out", f"{d}/notes.txt", "--train", "4", "--test", "0"], "a file, not a folder"),
        (["preprocess", "cub", "--out", f"{d}/o"], "--root needed"),
        (["preprocess", "coco", "--root", f"{d}/missing", "--out", f"{d}/o"], "not a folder"),
        (["preprocess", "coco", "--root", f"{d}/empty", "--out", f"{d}/o", "--max-aspect", "0.5"], "max_aspect must be >= 1"),
        (["preprocess", "coco", "--config", "pipelines/cub-128.toml", "--root", f"{d}/empty", "--out", f"{d}/o"], "is a cub pipeline"),
        (["tokenizer", "train", "--kind", "bpe", "--images", f"{d}/empty", "--out", f"{d}/t"], "is this a shard set"),
        (["tokenizer", "load", "--kind", "bpe", "--out", f"{d}/t"], "--from PATH is needed"),
        (["tokenizer", "load", "--kind", "wordpiece", "--from", f"{d}/bert-base-uncased", "--out", f"{d}/t"],
         "bert-base-uncased: no such file or folder; nothing is downloaded: put the published tokenizer's files there (vocab.txt"),
        (["tokenize", "--tokenizer", f"{d}/empty", "--images", f"{d}/empty", "--out", f"{d}/tt", "--length", "8"], "no t2i_tokenizer.json"),
        (["train", "autoencoder"], "are needed"),
        (["train", "autoencoder", "noequals"], "is not key=value"),
        (["train", "autoencoder", "arch=nope", f"images={d}", f"out={d}/r"], "arch must be one of"),
        (["train", "prior", "--config", f"{d}/missing.toml"], "no such file"),
        (["train", "clip"], "are needed"),
        (["eval", "mdmnist"], "--priors takes exactly two"),
        (["sample", "--prior", f"{d}/bad.pt", "--autoencoder", f"{d}/bad.pt", "--tokenizer", f"{d}/empty", "--out", f"{d}/s.png",
          "--prompt", "x"], "not a loadable t2i checkpoint"),
        (["encode", "--autoencoder", f"{d}/bad.pt", "--images", f"{d}/empty", "--out", f"{d}/e"], "not a loadable t2i checkpoint"),
        (["encode", "--autoencoder", f"{d}/bad.pt", "--images", f"{d}/empty", "--out", f"{d}/e", "--views", "0"], "--views must be >= 1"),
        (["verify", f"{d}/notes.txt"], "not valid JSON"),
        (["verify", f"{d}/empty"], "is this a shard set"),
        (["preview", f"{d}/empty", "--out", f"{d}/p.png"], "is this a shard set"),
        (["preview", f"{d}/missing.tar", "--out", f"{d}/p.png"], "no such shard file"),
        (["export", f"{d}/notes.txt", "--out", f"{d}/x"], "a file, not a shard set"),
        (["inspect", f"{d}/missing"], "no such folder"),
        (["train", "prior", "arch=g1_tiny", f"image_tokens={d}", f"text_tokens={d}", f"out={d}/r", "batch_size=abc"], "batch_size: needs a whole number"),
        (["train", "prior", "arch=g1_tiny", f"image_tokens={d}", f"text_tokens={d}", f"out={d}/r", "num_workers=-1"], "num_workers: needs a number of at least 0"),
        (["train", "autoencoder", f"images={d}", f"out={d}/r", "lr=inf"], "lr: needs a finite number"),
        (["train", "prior", f"out={d}/notes.txt"], "a file, not a folder for checkpoints"),
        (["tokenizer", "load", "--kind", "mdmnist", "--out", f"{d}/notes.txt"], "a file, not a folder for the tokenizer"),
        (["tokenize", "--tokenizer", f"{d}/notes.txt", "--images", f"{d}/empty", "--out", f"{d}/tt", "--length", "8"], "not a folder"),
        (["tokenize", "--tokenizer", f"{d}/empty", "--images", f"{d}/empty", "--out", f"{d}/tt", "--length", "99999999999"], "at most 65536"),
        (["sample", "--prior", f"{d}/bad.pt", "--autoencoder", f"{d}/bad.pt", "--tokenizer", f"{d}/empty", "--out", f"{d}/s.png",
          "--prompt", "x", "-n", "0"], "-n must be at least 1"),
        (["sample", "--prior", f"{d}/bad.pt", "--autoencoder", f"{d}/bad.pt", "--tokenizer", f"{d}/empty", "--out", f"{d}/s.png",
          "--prompt", "x", "--top-p", "2"], "--top-p must be in (0, 1]"),
        (["sample", "--prior", f"{d}/bad.pt", "--autoencoder", f"{d}/bad.pt", "--tokenizer", f"{d}/empty", "--out", f"{d}/s.png",
          "--prompt", "x", "--temperature", "-1"], "--temperature must be 0 (greedy) or more"),
        (["tokenize", "--tokenizer", f"{d}/empty", "--images", f"{d}/empty", "--out", f"{d}/tt"], "--length needed"),
        (["encode", "--images", f"{d}/empty", "--out", f"{d}/e"], "--autoencoder needed"),
        (["tokenizer", "train", "--kind", "bpe", "--out", f"{d}/t"], "training a tokenizer needs images="),
        (["eval", "autoencoder", "--images", f"{d}/empty", "--out", f"{d}/ev"], "--autoencoder needed"),
        (["eval", "autoencoder", "--autoencoder", f"{d}/bad.pt", "--images", f"{d}/empty", "--out", f"{d}/ev", "--n", "-1"],
         "--n: needs a number of at least 0"),
        (["plot", f"{d}/empty", "--out", f"{d}/pl"], "no metrics.jsonl in it"),
        (["run", f"{d}/missing.toml"], "missing.toml: no such file"),
        (["run", f"{d}/notes.txt"], "not valid TOML"),
        (["run", "pipelines/mdmnist-cpu.toml", "--dry-run", "train_autoencodr.lr=1"], "no stage 'train_autoencodr' in this pipeline"),
        (["run", "pipelines/mdmnist-cpu.toml", "--dry-run", "train_autoencoder.lr=abc"], "train_autoencoder.lr: needs a finite number"),
        (["run", "pipelines/mdmnist-cpu.toml", "--dry-run", "--until", "train_vae"], "--until train_vae: no such stage"),
        (["train", "prior", "--config", "pipelines/mdmnist-cpu.toml"], "pick one with --table NAME"),
        (["train", "prior", "--config", "pipelines/mdmnist-cpu.toml", "--table", "g3"], "no [train_prior.g3] table (sub-tables: g1, g2)"),
    ]


@pytest.mark.parametrize("case", range(51))
def test_every_subcommand_refuses_wrong_use_with_one_line_and_exit_2(junk, case, capsys):
    table = WRONG(junk)
    assert len(table) == 51
    argv, fragment = table[case]
    assert main(["-q", *argv, *(["--workers", "0"] if argv[0] in ("mdmnist", "preprocess", "tokenize", "encode") else [])]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("t2i: error: ") and fragment in err[0], err


def test_unknown_model_settings_name_the_known_ones():
    from t2i_models.builders import build_autoencoder
    from t2i_models.clip import CLIPS
    from t2i_models.prior_builders import PRIORS

    for make in (lambda: build_autoencoder("dvae_tiny", foo=1), lambda: PRIORS["g2_tiny"](foo=1), lambda: CLIPS["clip_tiny"](foo=1)):
        with pytest.raises(T2IError, match=r"model\.foo: not a setting of \w+; known: .*width|model\.foo: not a setting of \w+; known: .*hidden"):
            make()
    with pytest.raises(T2IError, match=r"model\.hidden: needs a whole number, got 'abc'"):
        build_autoencoder("dvae_tiny", hidden="abc")
    with pytest.raises(T2IError, match=r"model\.layers: needs a whole number"):
        PRIORS["g1_tiny"](layers=2.5)
    assert PRIORS["g1_tiny"](layers=3).cfg.layers == 3  # an override of an architecture field the builder also sets


@pytest.fixture(scope="module")
def coco_build(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    preprocess(PreprocessConfig("coco", str(make_coco(d / "src")), regime="ae", size=32), d / "images", InProcessRunner())
    assert sorted(p.name for p in (d / "images").iterdir() if p.is_dir()) == ["val2017"]  # a build folder with one split
    return d


def test_derived_sets_mirror_the_input_layout_and_encode_check_finds_them(coco_build, tmp_path, capsys):
    """A build folder gives <out>/<split>/ even with one split (encode's --check used to look for
    it flat and fail after writing); a split folder gives <out>/ itself."""
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder

    torch.manual_seed(0)
    save_autoencoder(tmp_path / "ae.pt", build_autoencoder("dvae_tiny"))
    images = coco_build / "images"
    for src, out, where in ((images, tmp_path / "a", tmp_path / "a" / "val2017"), (images / "val2017", tmp_path / "b", tmp_path / "b")):
        assert main(["-q", "encode", "--autoencoder", str(tmp_path / "ae.pt"), "--images", str(src), "--out", str(out), "--check", "2",
                     "--workers", "0"]) == 0
        assert (where / "manifest.json").is_file() and "identical tokens" in capsys.readouterr().out
    a = json.loads((tmp_path / "a" / "val2017" / "manifest.json").read_text())
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert a["digest"] == b["digest"]


def test_a_second_build_into_the_same_folder_stops_at_once(tmp_path, capsys):
    out = tmp_path / "md"
    with shardset_build.build_lock(out):
        assert main(["-q", "mdmnist", "build", "--out", str(out), "--train", "8", "--test", "0", "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()} on {socket.gethostname()}" in err and "another build is writing here" in err
        assert not list(out.rglob("*.tar"))
    assert not (out / shardset_build.LOCK_NAME).exists()
    # a lock left by a process that is gone is taken over
    (out / shardset_build.LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "then"}))
    assert main(["-q", "mdmnist", "build", "--out", str(out), "--train", "8", "--test", "0", "--workers", "0"]) == 0
    assert not (out / shardset_build.LOCK_NAME).exists()


@pytest.mark.parametrize("err, why, advice", [
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system", "on a writable file system"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied", "you can write to"),
])
def test_an_existing_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch, err, why, advice):
    """The folder exists (mkdir succeeds), but its lock file cannot be made: a read-only mount, or a
    folder of another user (as root the permission bits do not stop a write, so the error is injected)."""
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def refusing(path, *a, **kw):
        if str(path).endswith(shardset_build.LOCK_NAME):
            raise err
        return real_open(path, *a, **kw)

    monkeypatch.setattr(shardset_build.os, "open", refusing)
    assert main(["-q", "mdmnist", "build", "--out", str(out), "--train", "8", "--test", "0", "--workers", "0"]) == 2
    assert capsys.readouterr().err == f"t2i: error: {out}: cannot write here ({why}); give an --out folder {advice}\n"


def test_a_full_disk_gives_one_message_naming_the_file_and_the_rerun_completes(tmp_path, capsys, monkeypatch):
    args = ["-q", "mdmnist", "build", "--train", "40", "--test", "0", "--shard-size", "10", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    real_put, written = TarWriter._put, {"n": 0}

    def put(self, data):
        written["n"] += len(data)
        if written["n"] > 150_000:  # fills up during the second or third shard
            raise OSError(errno.ENOSPC, "No space left on device")
        real_put(self, data)

    monkeypatch.setattr(TarWriter, "_put", put)
    out = tmp_path / "full"
    assert main([*args, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "No space left on device" in err[0] and str(out / "train") in err[0] and ".tar" in err[0]
    assert not list(out.rglob("*.partial")) and not (out / shardset_build.LOCK_NAME).exists()
    monkeypatch.setattr(TarWriter, "_put", real_put)
    assert main([*args, "--out", str(out)]) == 0
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(out) == files(tmp_path / "clean")


def test_prompt_warnings_name_unknown_words_cut_tokens_and_empty_prompts():
    from t2i_data.text import load_pretrained
    from t2i_data.tokenize import TokenizeConfig, encode_rows
    from t2i_models.sample import prompt_warnings

    tok = load_pretrained("mdmnist", None)
    prompts = ["a red cat", "4 30 g down 8 40 b up 6 40 b middle", "4 30 g down 8 40 b up 6 40 b middle 1 20 r up", ""]
    rows, st = encode_rows(tok, prompts, TokenizeConfig(length=12), "int64")
    got = prompt_warnings(tok, prompts, rows, st["lengths"], 12)
    assert got[0] == f"prompt 'a red cat': 3 of its 3 tokens are unknown to the mdmnist tokenizer (id {tok.unk_id}); the prior sees no word there"
    assert got[1] == "prompt '4 30 g down 8 40 b up 6 40 b middle 1 20 r up': 16 tokens, cut to the 12 the prior was trained with"
    assert got[2] == "prompt '': no tokens at all; the prior samples unconditionally"
    assert len(got) == 3  # the well-formed description draws none


def test_preview_takes_folders_and_refuses_another_autoencoders_tokens(md_tokens, tmp_path, capsys):
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder

    assert main(["-q", "preview", str(md_tokens / "md"), "--out", str(tmp_path / "a.png"), "-n", "4"]) == 0
    assert main(["-q", "preview", str(md_tokens / "img"), "--autoencoder", str(md_tokens / "ae.pt"), "--out", str(tmp_path / "b.png"),
                 "-n", "4"]) == 0
    torch.manual_seed(5)
    save_autoencoder(tmp_path / "other.pt", build_autoencoder("dvae_tiny", image_size=128, hidden=8, vocab_size=16))
    shard = sorted((md_tokens / "img").glob("*.tar"))[0]
    for target in (md_tokens / "img", shard):
        assert main(["-q", "preview", str(target), "--autoencoder", str(tmp_path / "other.pt"), "--out", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert "were made by the autoencoder with fingerprint" in err and "not by --autoencoder" in err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("command", ["tokenize", "encode"])
def test_a_derived_set_is_never_written_into_its_source_folder(md_tokens, tmp_path, capsys, command):
    import shutil

    shutil.copytree(md_tokens / "md" / "train", tmp_path / "train")
    before = {p.name: p.read_bytes() for p in (tmp_path / "train").glob("*.tar")}
    argv = (["tokenize", "--tokenizer", str(md_tokens / "tk"), "--length", "12"] if command == "tokenize"
            else ["encode", "--autoencoder", str(md_tokens / "ae.pt")])
    assert main(["-q", *argv, "--images", str(tmp_path / "train"), "--out", str(tmp_path / "train"), "--workers", "0"]) == 2
    assert "the input set's own folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "train").glob("*.tar")} == before
