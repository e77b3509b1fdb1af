import gzip
import hashlib

import numpy as np
import pytest

from t2i_data.errors import T2IError
from t2i_data.sources.mnist import IMAGES_MAGIC, LABELS_MAGIC, load_mnist, read_idx


def idx_bytes(magic, dims, data):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(data)


def write_idx_folder(folder, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, n, dtype=np.uint8)
        for stem, blob in ((f"{prefix}-images-idx3-ubyte", idx_bytes(IMAGES_MAGIC, [n, 28, 28], imgs.tobytes())),
                           (f"{prefix}-labels-idx1-ubyte", idx_bytes(LABELS_MAGIC, [n], labs.tobytes()))):
            (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(blob) if gz else blob)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_gz_or_plain(tmp_path, gz):
    src = load_mnist(str(write_idx_folder(tmp_path, gz=gz)))
    assert src.pools["train"].images.shape == (6, 28, 28) and src.pools["test"].images.shape == (4, 28, 28)
    assert src.fingerprint["kind"] == "idx" and len(src.fingerprint["files"]) == 4


@pytest.mark.parametrize(
    "blob,match",
    [
        (idx_bytes(2049, [1, 28, 28], bytes(784)), "bad magic number 2049 \\(expected 2051"),
        (idx_bytes(IMAGES_MAGIC, [2, 28, 28], bytes(784)), "short data: header says \\[2, 28, 28\\] = 1568 bytes of data, file has 784"),
        (idx_bytes(IMAGES_MAGIC, [1, 28, 28], bytes(785)), "trailing bytes"),
        (idx_bytes(IMAGES_MAGIC, [1, 27, 28], bytes(756)), "27x28"),
        (b"\x00\x00", "too short for an IDX header"),
    ],
)
def test_malformed_idx_names_file_and_problem(tmp_path, blob, match):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(T2IError, match=match) as e:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(e.value)


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(LABELS_MAGIC, [3], bytes(3)))
    with pytest.raises(T2IError, match="4 images but t10k-labels-idx1-ubyte has 3 labels"):
        load_mnist(str(tmp_path))


def test_missing_file_and_broken_gzip(tmp_path):
    with pytest.raises(T2IError, match="neither train-images-idx3-ubyte nor"):
        load_mnist(str(tmp_path))
    write_idx_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(T2IError, match="train-labels-idx1-ubyte.gz: not a readable gzip"):
        load_mnist(str(tmp_path))


def test_embedded_pools_are_disjoint_and_balanced():
    src = load_mnist("embedded")
    tr, te = src.pools["train"], src.pools["test"]
    assert len(tr.ids) == 4000 and len(te.ids) == 1000
    assert not set(tr.ids.tolist()) & set(te.ids.tolist())
    assert np.bincount(te.labels).tolist() == [100] * 10 and np.bincount(tr.labels).tolist() == [400] * 10
    assert src.fingerprint["kind"] == "embedded" and len(next(iter(src.fingerprint["files"].values()))) == 64


def test_real_mnist_idx_files(mnist_idx):
    src = load_mnist(str(mnist_idx))
    assert src.pools["train"].images.shape == (60000, 28, 28) and src.pools["test"].images.shape == (10000, 28, 28)
    # the official uncompressed md5 of train-images-idx3-ubyte (see realdata/README.md)
    raw = gzip.decompress((mnist_idx / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    assert np.array_equal(src.pools["train"].images.reshape(60000, -1), np.frombuffer(raw, np.uint8, offset=16).reshape(60000, -1))
    assert src.pools["train"].labels[:5].tolist() == [5, 0, 4, 1, 9]
