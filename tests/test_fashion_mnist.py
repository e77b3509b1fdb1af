"""Fashion-MNIST through `t2i preprocess`: tiny IDX files written here (train gzipped, test plain),
the pipeline files shipped in pipelines/, and what comes out: lossless PNG shards holding the
source pixels exactly (center-28) or Pillow's resize of them (ae-32), manifests, card, export,
verify / inspect / preview, the training stream, and the refusal of --jpeg-quality."""
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

from t2i_data.digest import ContentHasher, canonical_field
from t2i_data.export import export
from t2i_data.manifest import load_manifest
from t2i_data.pngio import encoder_id
from t2i_data.regimes import Regime
from t2i_data.stream import ShardStream, decode_and_augment, loader
from t2i_data.tario import WRITER_ID, iter_samples
from t2i_models.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "fashion-mnist-32.toml"
CVAE = ROOT / "pipelines" / "cvae-fashion-mnist.toml"  # its [preprocess]: --regime center --size 28
LABELS = {"train": [0, 1, 9, 3, 8], "test": [5, 9, 2]}
STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx(arr: np.ndarray, magic: int) -> bytes:
    """An IDX file: magic, one big-endian uint32 per dimension, then the bytes."""
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


def image(split: str, i: int) -> np.ndarray:
    """Top half ``v``, bottom half ``255 - v`` (distinct for every image of both splits), plus
    seeded noise in -6..6 on every pixel, which no lossy codec keeps exactly."""
    v = 20 + 30 * i + (15 if split == "test" else 0)
    arr = np.full((28, 28), v, np.int16)
    arr[14:] = 255 - v
    noise = np.random.default_rng([i, split == "test"]).integers(-6, 7, (28, 28))
    return (arr + noise).astype(np.uint8)


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


@pytest.fixture(scope="module")
def center(tmp_path_factory) -> Path:
    """The CVAE pipeline's [preprocess] table (center-28) on the same source."""
    base = tmp_path_factory.mktemp("fmnist-center")
    src, out = write_source(base / "src"), base / "out"
    assert main(["-q", "preprocess", "fashion_mnist", "--root", str(src), "--config", str(CVAE), "--out", str(out), "--workers", "0"]) == 0
    return out


def decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert (im.format, im.mode) == ("PNG", "L")  # a grayscale source is stored as a 1-channel PNG
        return np.asarray(im)


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
            assert sorted(k for k in s if not k.startswith("__")) == ["json", "png"]  # no jpg member
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


def test_center_28_stores_the_idx_bytes_exactly(center):
    for split in LABELS:
        m = load_manifest(center / split / "manifest.json")
        assert (m["regime"], m["size"]) == ("center", 28)
        got = samples(center / split)
        assert len(got) == len(LABELS[split])
        for i, s in enumerate(got):
            assert np.array_equal(decoded(s["png"]), image(split, i)), (split, i)
            assert json.loads(s["json"])["size"] == [28, 28]


def test_ae_32_stores_pillows_lanczos_resize_of_the_source(built):
    for split in LABELS:
        for i, s in enumerate(samples(built / split)):
            # ae-32: the shorter side resized to 32 + 10 by LANCZOS (regimes.Regime.prepare), here on the L image itself
            want = np.asarray(Image.fromarray(image(split, i)).resize((42, 42), Image.Resampling.LANCZOS))
            assert np.array_equal(decoded(s["png"]), want), (split, i)


def test_manifest_names_the_png_encoder_and_no_jpeg_quality(built, center, capsys):
    for out in (built, center):
        for split in LABELS:
            m = load_manifest(out / split / "manifest.json")
            assert m["encoder"] == {"png": encoder_id(1), "tar": WRITER_ID}
            assert "jpeg_quality" not in m["config"]
            for shard in m["shards"]:  # the content digest written from the known pixels = the one a reader computes by decoding
                h = ContentHasher()
                for s in iter_samples(out / split / shard["name"]):
                    for ext in ("png", "json"):
                        h.update(f"{s['__key__']}.{ext}", canonical_field(ext, s[ext]))
                assert h.hexdigest() == shard["content_digest"]
        assert main(["verify", str(out / "train")]) == 0
        assert "summary: 1 ok" in capsys.readouterr().out


def test_readers_work_on_png_sets(built, center, tmp_path, capsys):
    assert main(["inspect", str(built / "train")]) == 0
    assert main(["preview", str(center / "test"), "--out", str(tmp_path / "p.png")]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "RGB" and im.getextrema()[0][1] > 0
    # the training stream: the stored image as RGB, each channel the IDX bytes (center-28, no augmentation)
    ds = ShardStream(center / "train", decode_and_augment(None, 0), batch_size=5, shuffle_buffer=1)
    batch = next(iter(loader(ds, 0)))
    assert batch["image"].shape == (5, 3, 28, 28)
    for key, img in zip(batch["key"], batch["image"]):
        i = int(key.rsplit("-", 1)[1])
        assert all(np.array_equal(img[c].numpy(), image("train", i)) for c in range(3)), key
    # with the ae regime's random part: 3 equal channels at N x N
    ds = ShardStream(built / "train", decode_and_augment(Regime("ae", 32), 0), batch_size=5, shuffle_buffer=1)
    img = next(iter(loader(ds, 0)))["image"]
    assert img.shape == (5, 3, 32, 32) and bool((img[:, 0] == img[:, 1]).all() and (img[:, 0] == img[:, 2]).all())


def test_a_duplicate_idx_image_is_quarantined_and_the_set_verifies(tmp_path, capsys):
    src = write_source(tmp_path / "src")
    path = src / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[16 + 2 * 784 : 16 + 3 * 784] = data[16 : 16 + 784]  # test image 2 := test image 0
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["-q", "preprocess", "fashion_mnist", "--root", str(src), "--config", str(CVAE), "--out", str(out), "--split", "test",
                 "--workers", "0"]) == 0
    m = load_manifest(out / "test" / "manifest.json")
    assert [q["key"] for q in m["quarantined"]] == ["fashion_mnist-test-00002"]
    assert m["quarantined"][0]["reason"].startswith("duplicate-image: same source bytes as fashion_mnist-test-00000")
    assert [s["__key__"] for s in samples(out / "test")] == ["fashion_mnist-test-00000", "fashion_mnist-test-00001"]
    assert main(["verify", str(out / "test")]) == 0
    assert "summary: 1 ok" in capsys.readouterr().out


def test_card_licence_and_rebuild_command(built):
    card = (built / "train" / "README.md").read_text(encoding="utf-8")
    assert "# Fashion-MNIST train, ae-32: image shards" in card
    assert ("Each sample is `<key>.png` (lossless PNG, 1-channel grayscale where the source is grayscale, else RGB) and `<key>.json`"
            in card and "the class id (the label, 0-9) and name" in card)
    assert f"Encoders: png `{encoder_id(1)}`, tar `{WRITER_ID}`." in card
    assert '"png", "json"' in card and '"jpg"' not in card  # the loading snippet names the PNG member
    assert ("t2i preprocess fashion_mnist --root FASHION_MNIST_ROOT --out OUT --regime ae --size 32 --shard-size 5000 "
            "--seed 0 --max-aspect 10.0 --max-decoded-pixels 33554432 --max-target-pixels 16777216\n") in card  # no --jpeg-quality
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
    stored = samples(built / "test")
    for i, (cell, s) in enumerate(zip(table.column("image").to_pylist(), stored)):  # the PNG bytes, unchanged
        assert cell == {"bytes": s["png"], "path": f"fashion_mnist-test-{i:05d}.png"}


def refusing_config(tmp_path: Path) -> Path:
    """The shipped 32 pipeline with a jpeg_quality line added back."""
    path = tmp_path / "q.toml"
    path.write_text(CONFIG.read_text(encoding="utf-8").replace("[preprocess]\n", "[preprocess]\njpeg_quality = 95\n"), encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["flag 95", "flag 100", "flag 0", "config", "run override"])
def test_jpeg_quality_is_refused_for_fashion_mnist_with_one_line(tmp_path, capsys, how):
    src, out = write_source(tmp_path / "src"), tmp_path / "out"
    base = ["preprocess", "fashion_mnist", "--root", str(src), "--out", str(out), "--workers", "0"]
    if how.startswith("flag"):  # 95 too: the JPEG default, given explicitly, is still a setting that would change nothing
        argv = base + ["--config", str(CONFIG), "--jpeg-quality", how.split()[1]]
    elif how == "config":
        argv = base + ["--config", str(refusing_config(tmp_path))]
    else:
        argv = ["run", str(CVAE), f"preprocess.root={src}", f"preprocess.out={out}", "preprocess.jpeg_quality=100"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "--jpeg-quality / jpeg_quality does not apply to fashion_mnist: its images are stored as lossless PNG; drop it" in err, err
    assert not out.exists()


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
