"""The canonical builds committed in manifests/ are reproduced byte for byte."""

import pytest

from t2i_models.cli import main
from t2i_data.manifest import load_manifest
from t2i_data.mdmnist import MDMNISTConfig, build, produce_shard
from t2i_data.pngio import encoder_id
from t2i_data.runner import make_runner
from t2i_data.tario import WRITER_ID, TarWriter

from pathlib import Path

COMMITTED = Path(__file__).resolve().parents[1] / "manifests"


def _same_encoder(manifest: dict) -> bool:
    return manifest["encoder"] == {"png": encoder_id(1), "tar": WRITER_ID}


@pytest.mark.slow
def test_rebuild_of_the_embedded_default_matches_the_committed_manifest(tmp_path, capsys):
    committed = {s: load_manifest(COMMITTED / "mdmnist-embedded-seed0" / s / "manifest.json") for s in ("train", "test")}
    assert committed["train"]["config"] == MDMNISTConfig().identity()  # it really is the default
    with make_runner(workers=2) as runner:
        built = build(MDMNISTConfig(), tmp_path, runner)
    for split in ("train", "test"):
        assert built[split]["digest"] == committed[split]["digest"]  # same data, whatever the encoder
        assert [s["content_digest"] for s in built[split]["shards"]] == [s["content_digest"] for s in committed[split]["shards"]]
    flags = [] if _same_encoder(committed["train"]) else ["--accept-content"]
    assert main(["verify", str(COMMITTED / "mdmnist-embedded-seed0"), "--data", str(tmp_path), *flags]) == 0
    assert "summary: 22 ok" in capsys.readouterr().out or flags


@pytest.mark.parametrize("split,index", [("train", 0), ("train", 19), ("test", 1)])
def test_full_mnist_build_shards_match_the_committed_manifest(mnist_idx, tmp_path, split, index):
    committed = load_manifest(COMMITTED / "mdmnist-idx-seed0" / split / "manifest.json")
    assert committed["config"] == {"mnist": "idx", "png_level": 1, "seed": 0, "shard_size": 5000, "test": 10000, "train": 100000}
    files = committed["sources"]["mnist"]["files"]
    assert files["train-images-idx3-ubyte.gz"] == "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971"
    cfg = MDMNISTConfig(seed=0, mnist=str(mnist_idx))
    expected = committed["shards"][index]
    with TarWriter(tmp_path / expected["name"]) as w:
        for sample in produce_shard(cfg, split, index):
            w.write(sample)
        rec = w.close()
    assert rec["content_digest"] == expected["content_digest"]
    assert (rec["samples"], rec["first_key"], rec["last_key"]) == (expected["samples"], expected["first_key"], expected["last_key"])
    if _same_encoder(committed):
        assert rec["sha256"] == expected["sha256"] and rec["bytes"] == expected["bytes"]
