"""Small COCO, CUB and MNIST sources in their exact on-disk formats, with the metadata given
line by line or entry by entry, so a test states exactly which field is wrong and how."""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np

from fixtures_sources import jpeg_bytes

COCO_SPLIT = "val2017"


def coco_image(image_id=7, file_name="a.jpg", **extra) -> dict:
    """One entry of ``images`` as the COCO file writes it (width, height, license present)."""
    return {"id": image_id, "file_name": file_name, "width": 64, "height": 48, "license": 1, **extra}


def make_coco_json(root: Path, images: list, annotations: list, top: object = None, jpegs: bool = False) -> Path:
    """``<root>/annotations/captions_val2017.json`` holding ``images`` and ``annotations`` (or
    ``top`` verbatim as the whole document), and ``<root>/val2017/``; with ``jpegs``, a 64x48
    JPEG for every entry whose file_name is a plain string."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / COCO_SPLIT).mkdir(exist_ok=True)
    doc = top if top is not None else {"info": {}, "licenses": [], "images": images, "annotations": annotations}
    (root / "annotations" / f"captions_{COCO_SPLIT}.json").write_text(json.dumps(doc))
    if jpegs:
        for img in images:
            if isinstance(img.get("file_name"), str):
                (root / COCO_SPLIT / img["file_name"]).write_bytes(jpeg_bytes(64, 48))
    return root


CUB_CLASSES = ["1 001.Alpha_bird", "2 002.Beta_bird"]
CUB_IMAGES = ["1 001.Alpha_bird/Alpha_0001.jpg", "2 001.Alpha_bird/Alpha_0002.jpg", "3 002.Beta_bird/Beta_0003.jpg"]
CUB_LABELS = ["1 1", "2 1", "3 2"]
CUB_SPLIT = ["1 1", "2 0", "3 1"]
CUB_BOXES = ["1 1.0 2.0 30.0 40.0", "2 3.5 4.5 20.0 10.0", "3 0.0 0.0 5.0 6.0"]
CUB_TRAIN, CUB_TEST = ["001.Alpha_bird/Alpha_0001", "002.Beta_bird/Beta_0003"], ["001.Alpha_bird/Alpha_0002"]


def make_cub_meta(root: Path, images=CUB_IMAGES, classes=CUB_CLASSES, labels=CUB_LABELS, split=CUB_SPLIT, boxes=CUB_BOXES,
                  train=CUB_TRAIN, test=CUB_TEST) -> Path:
    """The CUB metadata files, one given line per line, the text_c10 folders and the AttnGAN
    pickles (protocol 0, as AttnGAN's Python 2 wrote them). No images: ``load_cub`` reads none."""
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True, exist_ok=True)
    for line in classes:
        (root / "birds" / "text" / line.split()[-1]).mkdir(parents=True, exist_ok=True)
    for name, lines in (("images.txt", images), ("classes.txt", classes), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        (base / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    for name, lst in (("train", train), ("test", test)):
        (root / "birds" / name).mkdir(parents=True, exist_ok=True)
        (root / "birds" / name / "filenames.pickle").write_bytes(pickle.dumps(lst, protocol=0))
    return root


def idx_bytes(magic: int, dims: list[int], data: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(data)


def make_mnist_idx(folder: Path, train_labels: list[int] | None = None, n_train_images: int = 4, n_test: int = 3) -> Path:
    """The four MNIST IDX files, gzipped; ``train_labels`` replaces the train labels verbatim
    (any count, any byte value)."""
    rng = np.random.default_rng(0)
    labels = {"train": train_labels if train_labels is not None else [i % 10 for i in range(n_train_images)],
              "t10k": [i % 10 for i in range(n_test)]}
    for prefix, n in (("train", n_train_images), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(2051, [n, 28, 28], imgs.tobytes())))
        labs = bytes(labels[prefix])
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(2049, [len(labs)], labs)))
    return folder
