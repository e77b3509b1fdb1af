"""Fashion-MNIST (Zalando Research) from its official IDX files: 28×28 grayscale photos of
clothing and accessories in 10 classes, 60,000 train and 10,000 test, captioned from the class.

Layout under ``--root``: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``, as Zalando
distributes them) or not. The format and the file names are MNIST's, so ``mnist.read_idx`` and
``mnist.check_pair`` read and check them (a damaged file stops the run with one ``T2IError``
naming it). Splits: ``train`` (the train-* files), ``test`` (t10k-*). Keys:
``fashion_mnist-<split>-<index:05d>``, the index being the image's place in its IDX file.

The class names are those of the Fashion-MNIST README (github.com/zalandoresearch/fashion-mnist,
section "Labels"), labels 0-9 in order. Each image gets two captions: "a photo of a trouser" (the
name in lower case, with its article) and the name as the README writes it ("Trouser").

An image is not a file of its own: a record names its IDX image file (``image``, so a rerun
notices when that file changes) and its index (``image_id``), and ``read_image`` hands preprocess
the image as a binary PGM: the 13-byte header ``P5\\n28 28\\n255\\n`` and then the 784 IDX bytes
unchanged. Its sha256 (the sample's ``source_sha256``) is then a function of the IDX bytes
alone, whatever the Pillow or zlib version (a PNG's would not be), and it takes the decode path
every dataset takes (grayscale becomes RGB there, the regime resizes it).

The stored member is a lossless PNG (``<key>.png``, schema ``preprocessed_schema(..., "png")``),
not the JPEG other datasets store: JPEG at quality 100 still moves 3.4% of MNIST-format pixels by
1-2 levels, and the CVAE study (seed 002) models these pixels as they are. A grayscale source is
stored as a 1-channel (L) PNG, every reader converting it to RGB (``preprocess.py``). With
``--regime center --size 28`` the stored pixels are the IDX bytes exactly
(``tests/test_fashion_mnist.py``). ``--jpeg-quality`` is refused for this dataset.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import T2IError
from ..quarantine import Quarantine
from .mnist import IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC, check_pair, read_idx
from .records import ImageRecord
from .registry import Dataset, Licence
from .schema_types import INT, STR, preprocessed_schema

NAME = "fashion_mnist"
SPLITS = tuple(IDX_FILES)  # train (the train-* files), test (t10k-*)
# Fashion-MNIST README, "Labels": label -> description
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PGM_HEADER = b"P5\n28 28\n255\n"  # binary 8-bit grayscale, 28 x 28


def captions(label: int) -> tuple[str, str]:
    """The captions of an image of class ``label`` (0-9): ``("a photo of an ankle boot", "Ankle boot")``."""
    noun = CLASSES[label].lower()
    return f"a photo of {'an' if noun[0] in 'aeiou' else 'a'} {noun}", CLASSES[label]


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise T2IError(f"{root}: neither {stem} nor {stem}.gz is there; point --root at the folder of the Fashion-MNIST IDX files")


def load(cfg) -> tuple[dict[str, list[ImageRecord]], dict]:
    """The preprocess loader: one record per image of the splits ``cfg.splits`` (both when
    empty) under ``cfg.root``, in IDX order, and the sha256 of the IDX files read. ``T2IError``
    naming the file when one is missing, is not a readable IDX file of 28×28 images or of labels
    (a truncated one included), or when images and labels do not pair up or a label is over 9.
    The fingerprint (the manifest's ``sources.fashion_mnist``) also names the ten classes in
    label order (``classes``), so the manifest alone maps a ``class_id`` to its name."""
    root = Path(cfg.root)
    by_split, files = {}, {}
    for split in cfg.splits or SPLITS:
        img_path, lab_path = (_find(root, stem) for stem in IDX_FILES[split])
        images, labels = read_idx(img_path, IMAGES_MAGIC), read_idx(lab_path, LABELS_MAGIC)
        check_pair(img_path, images, lab_path, labels)
        by_split[split] = [
            ImageRecord(key=f"{NAME}-{split}-{i:05d}", split=split, image=img_path.name, captions=captions(label),
                        meta={"image_id": i, "file": img_path.name, "class_id": label, "class_name": CLASSES[label]})
            for i, label in enumerate(labels.tolist())
        ]
        for path in (img_path, lab_path):
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    # the class names travel with the data: a manifest reader maps class_id to its name without this module
    return by_split, {"kind": "idx", "files": files, "classes": list(CLASSES)}


@lru_cache(maxsize=2)
def _images(path: str, stamp: tuple[int, int]) -> np.ndarray:
    """An IDX image file's (N, 28, 28) array, read once per process (a dask worker too) and
    again when its size or modification time (``stamp``) changes."""
    return read_idx(path, IMAGES_MAGIC)


def read_image(root: Path, rec: ImageRecord) -> bytes:
    """The record's image as a binary PGM (module docstring). ``Quarantine`` when the IDX file is
    gone or no longer holds the index (changed since its records were read); ``T2IError`` when it
    is no longer a readable IDX file."""
    path = root / rec.image
    try:
        st = path.stat()
    except OSError as e:
        raise Quarantine("missing-image", f"{rec.image}: {e.strerror}") from None
    images = _images(str(path), (st.st_size, st.st_mtime_ns))
    i = rec.meta["image_id"]
    if i >= len(images):
        raise Quarantine("missing-image", f"{rec.image} holds {len(images)} images now, none at index {i}")
    return PGM_HEADER + images[i].tobytes()


DATASET = Dataset(
    name=NAME,
    pretty="Fashion-MNIST",
    summary="Fashion-MNIST (Zalando Research): 28×28 grayscale photos of clothing and accessories from Zalando's shop in 10 "
            "classes, 60,000 train and 10,000 test. Each image is captioned from its class name, as the dataset's README "
            "names the labels 0-9: \"a photo of a trouser\" and \"Trouser\".",
    fields="the image id (its index in the split's IDX file), the class id (the label, 0-9) and name, the IDX file and the source size",
    licences={
        "fashion-mnist": Licence(
            source="Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf; Zalando Research), images and labels",
            licence="MIT (Copyright (c) 2017 Zalando SE)",
            url="https://github.com/zalandoresearch/fashion-mnist",
            note="the captions are made here from the class names of its README",
        ),
    },
    schema=preprocessed_schema({"class_id": INT, "class_name": STR}, image="png"),  # lossless: the source pixels exactly
    columns=(("image_id", pa.int64()), ("class_id", pa.int64()), ("class_name", pa.string())),  # int64 as schema_types.INT declares
    splits=SPLITS,
    loader=load,
    root="the folder holding the four IDX files (train-*, t10k-*; .gz or not)",
    read_image=read_image,
)
