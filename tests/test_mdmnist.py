import json

import numpy as np
import pytest
from PIL import Image

from t2i_data.mdmnist import SYMBOL_ID, VOCAB, MDMNISTConfig, produce_shard, render_sample
from t2i_data.pngio import decode_image
from t2i_data.sources.mnist import load_mnist
from t2i_data.tario import iter_samples

CELLS = (2, 44, 86)
CHANNEL = {"w": (0, 1, 2), "r": (0,), "g": (1,), "b": (2,)}
ROW = {"up": 0, "middle": 1, "down": 2}


def check_sample(png: bytes, meta: dict, pool) -> None:
    """Everything the thesis says about one image, checked from its decoded pixels."""
    px = decode_image(png)
    assert px.shape == (128, 128, 3)
    symbols = meta["description"].split(" ")
    assert len(symbols) == 12 and meta["symbols"] == symbols and meta["captions"] == [meta["description"]]
    assert meta["symbol_ids"] == [VOCAB.index(s) for s in symbols]
    covered = np.zeros((128, 128), bool)
    for i, d in enumerate(meta["digits"]):
        assert symbols[4 * i : 4 * i + 4] == [str(d["value"]), str(d["size"]), d["color"], d["position"]]
        s = d["size"]
        assert s in (20, 30, 40)
        y, x = CELLS[ROW[d["position"]]] + (40 - s) // 2, CELLS[i] + (40 - s) // 2
        # the box lies inside its cell: x-cell by digit index, y-cell by position
        assert CELLS[i] <= x and x + s <= CELLS[i] + 40 and CELLS[ROW[d["position"]]] <= y and y + s <= CELLS[ROW[d["position"]]] + 40
        row = np.flatnonzero(pool.ids == d["mnist_index"])[0]
        assert pool.labels[row] == d["value"]
        glyph = np.asarray(Image.fromarray(pool.images[row]).resize((s, s), Image.BILINEAR))
        box = px[y : y + s, x : x + s]
        for c in range(3):
            expected = glyph if c in CHANNEL[d["color"]] else np.zeros_like(glyph)
            assert np.array_equal(box[:, :, c], expected), (meta["description"], i, c)
        assert glyph.any()
        covered[y : y + s, x : x + s] = True
    assert not px[~covered].any(), "pixels outside the three digit boxes must be black"


@pytest.mark.parametrize("seed", range(12))
def test_pixels_layout_colour_and_description_over_seeds(seed):
    cfg = MDMNISTConfig(seed=seed, train=40, test=40, shard_size=40)
    src = load_mnist("embedded")
    for split in ("train", "test"):
        for sample in produce_shard(cfg, split, 0):
            meta = json.loads(sample["json"])
            assert meta["split"] == split and sample["__key__"] == f"mdmnist-{split}-{meta['index']:08d}"
            check_sample(sample["png"], meta, src.pools[split])


def test_symbol_ids_follow_the_thesis():
    assert [SYMBOL_ID[s] for s in ("0", "9", "20", "30", "40", "w", "r", "g", "b", "up", "middle", "down")] == [0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


def test_png_level_changes_bytes_not_pixels():
    a = render_sample(MDMNISTConfig(png_level=1), "test", 7)
    b = render_sample(MDMNISTConfig(png_level=0), "test", 7)  # stored, not compressed
    assert len(a["png"]) < len(b["png"]) and a["json"] == b["json"]
    assert np.array_equal(decode_image(a["png"]), decode_image(b["png"]))


def test_sample_is_a_pure_function_of_seed_split_index():
    a = MDMNISTConfig(seed=5, train=3000, shard_size=1000)
    b = MDMNISTConfig(seed=5, train=5000, shard_size=333)  # other shard layout and size
    s1 = list(produce_shard(a, "train", 2))[123]  # index 2123
    s2 = render_sample(b, "train", 2123)
    assert s1["__key__"] == s2["__key__"] == "mdmnist-train-00002123"
    assert s1["png"] == s2["png"] and s1["json"] == s2["json"]
    assert render_sample(MDMNISTConfig(seed=6), "train", 2123)["png"] != s1["png"]


def test_attribute_frequencies_are_uniform_over_20000_samples(built20k):
    """Tolerance: 1 percentage point for each marginal over 60,000 digit slots (about 5 sigma),
    1.5 points per digit slot (20,000 draws) and for each of the 12 size×colour pairs."""
    cfg, out, _ = built20k
    metas = [json.loads(s["json"]) for p in sorted((out / "train").glob("*.tar")) for s in iter_samples(p)]
    assert len(metas) == 20_000
    digits = [(i, d) for m in metas for i, d in enumerate(m["digits"])]
    for attr, values in (("size", (20, 30, 40)), ("color", "wrgb"), ("position", ("up", "middle", "down")), ("value", range(10))):
        freq = np.array([sum(d[attr] == v for _, d in digits) for v in values]) / len(digits)
        assert np.abs(freq - 1 / len(values)).max() < 0.01, (attr, freq)
        for slot in range(3):
            f = np.array([sum(d[attr] == v for i, d in digits if i == slot) for v in values]) / len(metas)
            assert np.abs(f - 1 / len(values)).max() < 0.015, (attr, slot, f)
    pairs = np.array([sum(d["size"] == s and d["color"] == c for _, d in digits) for s in (20, 30, 40) for c in "wrgb"]) / len(digits)
    assert np.abs(pairs - 1 / 12).max() < 0.015


def test_no_test_pool_digit_in_train_split(built20k):
    _, out, _ = built20k
    used = {}
    for split in ("train", "test"):
        used[split] = {d["mnist_index"] for p in sorted((out / split).glob("*.tar")) for s in iter_samples(p) for d in json.loads(s["json"])["digits"]}
    assert not used["train"] & used["test"]
    assert all(i % 5 != 4 for i in used["train"]) and all(i % 5 == 4 for i in used["test"])
    assert len(used["train"]) > 3900  # 60,000 draws from 4,000 digits reach nearly all


def test_idx_source_train_images_use_only_mnist_train_digits(mnist_idx):
    cfg = MDMNISTConfig(seed=0, train=30, test=30, shard_size=30, mnist=str(mnist_idx))
    src = load_mnist(str(mnist_idx))
    for split in ("train", "test"):
        for sample in produce_shard(cfg, split, 0):
            check_sample(sample["png"], json.loads(sample["json"]), src.pools[split])
    test_imgs = src.pools["test"].images
    for sample in produce_shard(cfg, "train", 0):
        for d in json.loads(sample["json"])["digits"]:
            assert d["mnist_index"] < 60000
    assert max(d["mnist_index"] for s in produce_shard(cfg, "test", 0) for d in json.loads(s["json"])["digits"]) < len(test_imgs)


def test_config_validation_messages():
    from t2i_data.errors import T2IError

    with pytest.raises(T2IError, match="--shard-size must be >= 1, got 0"):
        MDMNISTConfig(shard_size=0)
    with pytest.raises(T2IError, match="--train must be >= 0"):
        MDMNISTConfig(train=-1)
    with pytest.raises(T2IError, match="--png-level must be in 0..9 \\(zlib levels\\), got 10"):
        MDMNISTConfig(png_level=10)
    with pytest.raises(T2IError, match="outside the test split of size 10"):
        render_sample(MDMNISTConfig(test=10), "test", 10)


@pytest.mark.parametrize("split", ["train", "test"])
def test_batched_resize_equals_pillow_per_digit(split, monkeypatch):
    # resize_digits (two Pillow calls per chunk) against one Pillow resize per digit: every digit
    # of the embedded pool, every MD-MNIST size, chunks of 1,024 and chunks of 300 (uneven ends)
    from t2i_data import mdmnist

    images = load_mnist("embedded").pools[split].images
    for size in mdmnist.SIZES:
        one_by_one = np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.BILINEAR)) for d in images])
        assert np.array_equal(mdmnist.resize_digits(images, size), one_by_one), size
        with monkeypatch.context() as m:
            m.setattr(mdmnist, "RESIZE_CHUNK", 300)
            assert np.array_equal(mdmnist.resize_digits(images[3:], size), one_by_one[3:])
    table = mdmnist.GlyphTable(images)
    rows, sizes = np.array([[5, 7, 5], [0, len(images) - 1, 7]]), np.array([[0, 2, 0], [1, 1, 2]])
    table.ensure(rows, sizes)
    assert table.done.sum() == 4  # pairs (5, 20), (7, 40), (0, 30), (last, 30): repeats resized once
    for r, s in zip(rows.ravel(), sizes.ravel()):
        assert np.array_equal(table.tables[s][r], mdmnist.resize_digit(images[r], mdmnist.SIZES[s]))
