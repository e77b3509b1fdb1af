"""One folder holds one shard set: a derived build into a folder that holds another set (another
split, dataset or kind) stops before writing, instead of replacing that set's manifest and
orphaning its shards (``build.refuse_other_set``); the same set is rebuilt in place as before."""
from __future__ import annotations

import pytest

from t2i_data.manifest import load_manifest
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.text import load_pretrained
from t2i_data.verify import verify_path
from t2i_models.cli import main


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    root = tmp_path_factory.mktemp("outsets")
    build(MDMNISTConfig(seed=0, train=6, test=4, shard_size=4), root / "md", InProcessRunner())
    load_pretrained("mdmnist", None).save(root / "tk")
    return root


def _tokenize(md, split, out) -> int:
    return main(["-q", "tokenize", "--tokenizer", str(md / "tk"), "--images", str(md / "md" / split), "--out", str(out),
                 "--length", "12", "--workers", "0"])


def _untouched(out, split):
    m = load_manifest(out / "manifest.json")
    assert (m["kind"], m["split"]) == ("text_tokens", split)
    assert all(c.status == "ok" for _, _, checks in verify_path(out) for c in checks) and sorted(p.name for p in out.glob("*.tar")) == [s["name"] for s in m["shards"]]


def test_another_split_into_the_same_folder_is_refused_and_the_set_there_kept(md, tmp_path, capsys):
    out = tmp_path / "text"
    assert _tokenize(md, "train", out) == 0
    capsys.readouterr()
    assert _tokenize(md, "test", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {out}: holds the text_tokens set of mdmnist train; writing the text_tokens set of mdmnist test there" in err
    _untouched(out, "train")
    assert not list(out.glob("mdmnist-test-*"))


def test_another_kind_into_the_same_folder_is_refused(md, tmp_path, capsys):
    fixtures = pytest.importorskip("fixtures_text_encoders")
    out = tmp_path / "text"
    assert _tokenize(md, "train", out) == 0
    enc = fixtures.tiny_bert(tmp_path / "bert")
    capsys.readouterr()
    assert main(["-q", "embed", "--encoder", str(enc), "--images", str(md / "md" / "train"), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: holds the text_tokens set of mdmnist train; writing the text_emb set of mdmnist train there" in err
    _untouched(out, "train")


def test_the_same_set_is_rebuilt_in_place(md, tmp_path, capsys):
    out = tmp_path / "text"
    assert _tokenize(md, "train", out) == 0
    first = load_manifest(out / "manifest.json")["digest"]
    assert _tokenize(md, "train", out) == 0  # a rerun: the shards are reused
    assert load_manifest(out / "manifest.json")["digest"] == first
    assert main(["-q", "tokenize", "--tokenizer", str(md / "tk"), "--images", str(md / "md" / "train"), "--out", str(out),
                 "--length", "14", "--workers", "0"]) == 0  # another config of the same set: rebuilt there
    assert load_manifest(out / "manifest.json")["tokenizer"]["length"] == 14

