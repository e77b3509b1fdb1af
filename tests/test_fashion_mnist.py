"""Fashion-MNIST through `t2i preprocess`: tiny IDX files written here (train gzipped, test plain),
the pipeline file shipped in pipelines/, and what comes out: shards, manifests, card, export."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from t2i_data.export import export
from t2i_data.manifest import load_manifest
from t2i_data.tario import iter_samples
from t2i_models.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "fashion-mnist-32.toml"
LABELS = {"train": [0, 1, 9, 3, 8], "test": [5, 9, 2]}
STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx(arr: np.ndarray, magic: int) -> bytes:
    """An IDX file: magic, one big-endian uint32 per dimension, then the bytes."""
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


def image(split: str, i: int) -> np.ndarray:
    """Top half ``v``, bottom half ``255 - v``: distinct for every image of both splits."""
    v = 20 + 30 * i + (15 if split == "test" else 0)
    arr = np.full((28, 28), v, np.uint8)
    arr[14:] = 255 - v
    return arr


def write_source(root: Path) -> Path:
    root.mkdir()
    for split, (img_stem, lab_stem) in STEMS.items():
        images = np.stack([image(split, i) for i in range(len(LABELS[split]))])
        files = {img_stem: idx(images, 2051), lab_stem: idx(np.array(LABELS[split]), 2049)}
        for stem, data in files.items():
            if split == "train":  # as Zalando distributes them
                (root / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / stem).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fmnist")
    src, out = write_source(base / "src"), base / "out"
    assert main(["-q", "preprocess", "fashion_mnist", "--root", str(src), "--config", str(CONFIG), "--out", str(out), "--workers", "0"]) == 0
    return out


def samples(split_dir: Path) -> list[dict]:
    m = load_manifest(split_dir / "manifest.json")
    return [s for shard in m["shards"] for s in iter_samples(split_dir / shard["name"])]


def test_counts_keys_captions_and_source_fields(built):
    for split, labels in LABELS.items():
        m = load_manifest(built / split / "manifest.json")
        assert (m["dataset"], m["split"], m["regime"], m["size"]) == ("fashion_mnist", split, "ae", 32)
        assert (m["totals"]["samples"], m["totals"]["quarantined"]) == (len(labels), 0)
        got = samples(built / split)
        assert [s["__key__"] for s in got] == [f"fashion_mnist-{split}-{i:05d}" for i in range(len(labels))]
        file = "train-images-idx3-ubyte.gz" if split == "train" else "t10k-images-idx3-ubyte"
        # one fingerprint of the build: every IDX file read
        assert sorted(m["sources"]["fashion_mnist"]["files"]) == sorted([f"{s}.gz" for s in STEMS["train"]] + list(STEMS["test"]))
        # the class names, in label order as the Fashion-MNIST README lists them, travel in the manifest
        assert m["sources"]["fashion_mnist"]["classes"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                                            "Sneaker", "Bag", "Ankle boot"]
        for i, (s, label) in enumerate(zip(got, labels)):
            meta = json.loads(s["json"])
            assert (meta["image_id"], meta["class_id"], meta["file"], meta["split"]) == (i, label, file, split)
            assert (meta["source_size"], meta["source_mode"], meta["source_format"], meta["size"]) == ([28, 28], "L", "PPM", [42, 42])
            # the source bytes: a binary PGM of the 784 IDX bytes, so the sha256 depends on the IDX file alone
            assert meta["source_sha256"] == hashlib.sha256(b"P5\n28 28\n255\n" + image(split, i).tobytes()).hexdigest()
    caps = [json.loads(s["json"])["captions"] for s in samples(built / "train")]
    assert caps[0] == ["a photo of a t-shirt/top", "T-shirt/top"]
    assert caps[1] == ["a photo of a trouser", "Trouser"]
    assert caps[2] == ["a photo of an ankle boot", "Ankle boot"]
    assert [json.loads(s["json"])["class_name"] for s in samples(built / "test")] == ["Sandal", "Ankle boot", "Pullover"]


def test_a_decoded_sample_holds_the_source_pixels_upscaled(built):
    for split in LABELS:
        for i, s in enumerate(samples(built / split)):
            arr = np.asarray(Image.open(io.BytesIO(s["jpg"])))
            assert arr.shape == (42, 42, 3)  # ae-32: the shorter side resized to 32 + 10
            assert np.abs(arr.astype(int) - arr[..., :1]).max() <= 2  # grey stays grey
            v = int(image(split, i)[0, 0])
            top, bottom = arr[2:17, 2:40].astype(float), arr[25:40, 2:40].astype(float)
            assert abs(top.mean() - v) < 2 and abs(bottom.mean() - (255 - v)) < 2, (split, i, top.mean(), bottom.mean(), v)


def test_card_licence_and_rebuild_command(built):
    card = (built / "train" / "README.md").read_text(encoding="utf-8")
    assert "# Fashion-MNIST train, ae-32: image shards" in card
    assert "Each sample is `<key>.jpg` (RGB) and `<key>.json`" in card and "the class id (the label, 0-9) and name" in card
    assert ("t2i preprocess fashion_mnist --root FASHION_MNIST_ROOT --out OUT --regime ae --size 32 --shard-size 5000 "
            "--jpeg-quality 95 --seed 0 --max-aspect 10.0 --max-decoded-pixels 33554432 --max-target-pixels 16777216\n") in card
    assert "| `json`: `class_name` | str |" in card
    for text in (card, (built / "train" / "LICENSE.md").read_text(encoding="utf-8"), (built / "LICENSE.md").read_text(encoding="utf-8")):
        assert "| Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf; Zalando Research), images and labels | MIT (Copyright (c) 2017 Zalando SE) |" in text
    assert 'license_name: "fashion-mnist-source-licences"' in card
    assert "# Fashion-MNIST train, test, ae-32: image shards" in (built / "README.md").read_text(encoding="utf-8")


def test_export_has_the_declared_columns(built, tmp_path):
    export([built / "test"], tmp_path / "exp", "arrow")
    with pa.OSFile(str(tmp_path / "exp" / "test" / "data-00000-of-00001.arrow"), "rb") as f:
        table = pa.ipc.open_stream(f).read_all()
    assert table.column_names == ["key", "split", "captions", "image", "image_id", "class_id", "class_name", "json"]
    assert table.schema.field("class_id").type == pa.int64() and table.schema.field("class_name").type == pa.string()
    assert table.column("image_id").to_pylist() == [0, 1, 2]
    assert table.column("class_id").to_pylist() == LABELS["test"]
    assert table.column("class_name").to_pylist() == ["Sandal", "Ankle boot", "Pullover"]
    assert table.column("captions").to_pylist()[1] == ["a photo of an ankle boot", "Ankle boot"]


@pytest.mark.parametrize("stem,gz,message", [
    ("t10k-images-idx3-ubyte", False, "short data: header says [3, 28, 28] = 2352 bytes of data, file has 2000"),
    ("train-labels-idx1-ubyte", True, "not a readable gzip file"),
])
def test_a_truncated_idx_file_stops_with_one_message(tmp_path, capsys, stem, gz, message):
    src = write_source(tmp_path / "src")
    path = src / (stem + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[: 16 + 2000 if not gz else 20])
    argv = ["preprocess", "fashion_mnist", "--root", str(src), "--config", str(CONFIG), "--out", str(tmp_path / "out"), "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err, err
    assert not (tmp_path / "out").exists()
