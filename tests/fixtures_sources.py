"""Tiny CUB and COCO trees in their exact on-disk formats, with one bad input of each kind."""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(w: int, h: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), ((xx + yy) * 3) % 256], axis=2).astype(np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(base)
    if mode == "L":
        im = im.convert("L")
    elif mode == "CMYK":
        im = Image.new("CMYK", (w, h), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png16_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(w * h, dtype=np.uint16).reshape(h, w) * 37)).save(buf, "PNG")
    return buf.getvalue()


# (id, class, name, is_training, image kind, caption kind)
CUB_ROWS = [
    (1, 1, "Alpha_0001", 1, "rgb", "ok"),
    (2, 1, "Alpha_0002", 0, "gray", "ok"),
    (3, 1, "Alpha_0003", 1, "cmyk", "fffd"),
    (4, 2, "Beta_0004", 0, "rgb", "ok"),
    (5, 2, "Beta_0005", 1, "truncated", "ok"),
    (6, 2, "Beta_0006", 0, "corrupt", "ok"),
    (7, 2, "Beta_0007", 1, "empty", "ok"),
    (8, 2, "Beta_0008", 0, "missing", "ok"),
    (9, 1, "Alpha_0009", 1, "rgb", "none"),
    (10, 1, "Alpha_0010", 0, "rgb", "blank"),
    (11, 1, "Alpha_0011", 1, "rgb", "latin1"),
    (12, 2, "Beta_0012", 1, "png16", "ok"),
    (13, 2, "Beta_0013", 1, "rgb", "ok"),
]
CUB_BAD = {
    "cub-00005": "corrupt-image",  # truncated: libjpeg "Premature end of JPEG file"
    "cub-00006": "unreadable-image",
    "cub-00007": "empty-image",
    "cub-00008": "missing-image",
    "cub-00009": "missing-captions",
    "cub-00010": "empty-captions",
    "cub-00011": "non-utf8-captions",
    "cub-00012": "unsupported-mode",
    "cub-00013": "duplicate-id",  # images.txt lists id 13 twice
}
CLASSES = {1: "001.Alpha_bird", 2: "002.Beta_bird"}


def captions_for(image_id: int) -> list[str]:
    return [f"bird {image_id} caption {j}, with  two spaces and a comma" for j in range(10)]


def make_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    for cls in CLASSES.values():
        (base / "images" / cls).mkdir(parents=True, exist_ok=True)
        (root / "birds" / "text" / cls).mkdir(parents=True, exist_ok=True)
    images, labels, split, boxes, train, test = [], [], [], [], [], []
    for i, (image_id, cls, name, is_train, kind, caps) in enumerate(CUB_ROWS):
        rel = f"{CLASSES[cls]}/{name}.jpg"
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cls}")
        split.append(f"{image_id} {is_train}")
        w, h = 60 + 13 * i, 90 - 3 * i
        boxes.append(f"{image_id} {w / 4:.1f} {h / 4:.1f} {w / 2:.1f} {h / 3:.1f}")
        (train if is_train else test).append(rel[:-4])
        path = base / "images" / rel
        data = {"rgb": lambda: jpeg_bytes(w, h, seed=i), "gray": lambda: jpeg_bytes(w, h, "L"), "cmyk": lambda: jpeg_bytes(w, h, "CMYK"),
                "truncated": lambda: jpeg_bytes(w, h)[: len(jpeg_bytes(w, h)) // 2], "corrupt": lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3,
                "empty": lambda: b"", "png16": lambda: png16_bytes(w, h)}.get(kind)
        if data is not None:
            path.write_bytes(data())
        text = root / "birds" / "text" / f"{rel[:-4]}.txt"
        lines = captions_for(image_id)
        if caps == "ok":
            text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif caps == "fffd":
            text.write_text("\n".join(l.replace(" ", "\ufffd\ufffd", 1) for l in lines) + "\n", encoding="utf-8")
        elif caps == "blank":
            text.write_text("\n  \n\n", encoding="utf-8")
        elif caps == "latin1":
            text.write_bytes("caf\u00e9 bird\n".encode("latin-1"))
    images.append(f"13 {CLASSES[2]}/Beta_0013.jpg")  # the duplicate id
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in CLASSES.items()))
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    for name, lst in (("train", train), ("test", test)):
        (root / "birds" / name).mkdir(parents=True, exist_ok=True)
        (root / "birds" / name / "filenames.pickle").write_bytes(pickle.dumps(lst, protocol=0))
    return root


COCO_CAPTIONS = {
    139: ["A woman stands in the dining area at the table.", "  Trailing and leading spaces kept  ", "Caf\u00e9 — unicode “quotes”\n"],
    285: ["A big bear."],
    632: ["Bedroom with a bookshelf."],
    724: ["A stop sign."],
}


def make_coco(root: Path, split: str = "val2017") -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    images = []
    for i, image_id in enumerate([724, 139, 285, 632, 776, 885, 139]):  # 139 twice; unsorted on purpose
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48, "license": 1})
        if image_id == 632:
            (root / split / name).write_bytes(jpeg_bytes(48, 64, "L"))
        elif image_id == 285:
            (root / split / name).write_bytes(jpeg_bytes(64, 48, "CMYK"))
        elif image_id != 885:  # 885 is listed but missing
            (root / split / name).write_bytes(jpeg_bytes(64, 48, seed=i))
    anns, n = [], 0
    for image_id, caps in [(139, COCO_CAPTIONS[139][:2]), (285, COCO_CAPTIONS[285]), (632, COCO_CAPTIONS[632]), (139, COCO_CAPTIONS[139][2:]), (724, COCO_CAPTIONS[724]), (885, ["gone"])]:
        for c in caps:
            n += 1
            anns.append({"image_id": image_id, "id": n, "caption": c})
    # 776 has no caption at all
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns}))
    return root


def coco_shards(tmp_path_factory, regime: str = "ae", size: int = 32, shard_size: int = 2) -> Path:
    """make_coco's tree preprocessed in-process: its val2017 image shard set's folder."""
    from t2i_data.preprocess import PreprocessConfig, preprocess
    from t2i_data.runner import InProcessRunner

    root = make_coco(tmp_path_factory.mktemp("coco") / "coco")
    out = tmp_path_factory.mktemp("img")
    preprocess(PreprocessConfig("coco", str(root), regime=regime, size=size, shard_size=shard_size), out, InProcessRunner())
    return out / "val2017"
