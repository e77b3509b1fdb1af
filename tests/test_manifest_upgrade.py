"""Shard sets written before manifest format 2 ("rejected", autoencoder "vocab") stay usable:
read as format 2 in memory with their recorded digest, their shards reused by a rebuild."""
import json
import shutil

import pytest

from t2i_data.errors import T2IError
from t2i_data.manifest import FORMAT_VERSION, load_manifest, manifest_digest
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.token_stream import TokenStream
from t2i_models.cli import main


def _as_v1(path, aligned_to=None) -> str:
    """Rewrite a format-2 manifest as format 1 wrote it (old field names, its own digest)."""
    m = json.loads(path.read_text())
    m["format_version"] = 1
    m["rejected"] = m.pop("quarantined")
    m["totals"]["rejected"] = m["totals"].pop("quarantined")
    if "autoencoder" in m:
        m["autoencoder"]["vocab"] = m["autoencoder"].pop("vocab_size")
    if aligned_to is not None:
        m["aligned_to"] = aligned_to
    m.pop("digest")
    m["digest"] = manifest_digest(m)
    path.write_text(json.dumps(m, sort_keys=True, indent=1) + "\n")
    return m["digest"]


@pytest.fixture
def old_sets(md_tokens, tmp_path):
    root = tmp_path / "old"
    for name in ("md", "text", "img"):
        shutil.copytree(md_tokens / name, root / name)
    base = _as_v1(root / "md" / "train" / "manifest.json")
    _as_v1(root / "text" / "manifest.json", aligned_to=base)
    _as_v1(root / "img" / "manifest.json", aligned_to=base)
    return root, base


def test_a_format_1_manifest_reads_as_format_2_with_its_recorded_digest(old_sets):
    root, base = old_sets
    m = load_manifest(root / "md" / "train" / "manifest.json")
    assert m["format_version"] == 1 and m["digest"] == base
    assert m["quarantined"] == [] and m["totals"]["quarantined"] == 0 and "rejected" not in m
    img = load_manifest(root / "img" / "manifest.json")
    assert img["autoencoder"]["vocab_size"] == 16 and "vocab" not in img["autoencoder"] and img["aligned_to"] == base
    assert FORMAT_VERSION == 2


def test_old_derived_sets_still_stream_and_verify(old_sets, capsys):
    root, _ = old_sets
    ds = TokenStream(root / "img", root / "text", batch_size=8, seed=0)
    assert sum(int(b["valid"].sum()) for b in ds) == 103
    assert main(["verify", str(root / "img")]) == 0
    assert "summary: 7 ok" in capsys.readouterr().out


def test_an_edited_format_1_manifest_is_still_refused(old_sets):
    root, _ = old_sets
    path = root / "md" / "train" / "manifest.json"
    m = json.loads(path.read_text())
    m["rejected"] = [{"key": "x", "reason": "made-up: edited"}]
    m["totals"]["rejected"] = 1
    path.write_text(json.dumps(m))
    with pytest.raises(T2IError, match="digest does not match its content"):
        load_manifest(path)


def test_an_unknown_format_version_names_the_readable_ones(old_sets):
    path = old_sets[0] / "md" / "train" / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps(dict(m, format_version=3)))
    with pytest.raises(T2IError, match=r"format_version 3, this t2i reads 1, 2; rebuild the shard set"):
        load_manifest(path)


def test_rebuilding_a_format_1_set_reuses_every_shard(tmp_path):
    cfg = MDMNISTConfig(seed=0, train=30, test=10, shard_size=10)
    first = build(cfg, tmp_path, InProcessRunner())
    for split in ("train", "test"):
        _as_v1(tmp_path / split / "manifest.json")
    again = build(cfg, tmp_path, InProcessRunner())
    assert again["train"]["_skipped"] == 3 and again["test"]["_skipped"] == 1  # no shard written again
    assert [s["sha256"] for s in again["train"]["shards"]] == [s["sha256"] for s in first["train"]["shards"]]
    assert load_manifest(tmp_path / "train" / "manifest.json")["format_version"] == 2  # rewritten in the new format
    assert again["train"]["digest"] == first["train"]["digest"]


def test_the_shard_reuse_digest_is_the_one_format_1_builds_wrote():
    """Format-1 builds keyed their .stats records by sha256(identity + format_version 1); format 2
    keeps that key, so their shards are reused rather than written again."""
    import hashlib

    from t2i_data.build import config_digest
    from t2i_data.digest import canonical_json

    identity = {"kind": "images", "dataset": "mdmnist", "split": "train", "config": {"seed": 0}}
    assert config_digest(identity) == hashlib.sha256(canonical_json(dict(identity, format_version=1))).hexdigest()
