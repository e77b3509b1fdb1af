"""MS-COCO captions: ``annotations/captions_<split>.json`` and ``<split>/<file_name>`` images.

Every caption of an image is kept, in the order of the annotations file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import T2IError
from .records import ImageRecord

SPLITS = ("train2017", "val2017")


def annotations_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"captions_{split}.json"


def available_splits(root: str | Path) -> list[str]:
    return [s for s in SPLITS if annotations_path(Path(root), s).is_file()]


def fingerprint(root: Path, splits: list[str]) -> dict:
    files = {f"annotations/captions_{s}.json": hashlib.sha256(annotations_path(root, s).read_bytes()).hexdigest() for s in splits}
    return {"kind": "coco", "files": files}


def load_coco(root: str | Path, split: str) -> list[ImageRecord]:
    root = Path(root)
    path = annotations_path(root, split)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise T2IError(f"{path}: missing; --root must hold annotations/captions_{split}.json and {split}/") from None
    except json.JSONDecodeError as e:
        raise T2IError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise T2IError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    seen: set[int] = set()
    records = []
    for img in sorted(data["images"], key=lambda im: im["id"]):  # sorted() is stable: duplicates keep file order
        image_id = img["id"]
        reject = None
        if image_id in seen:
            reject = f"duplicate-id: image id {image_id} again in {path.name}"
        seen.add(image_id)
        caps = captions.get(image_id)
        if not caps and reject is None:
            reject = f"no-captions: no caption for image id {image_id} in {path.name}"
        meta = {
            "image_id": image_id,
            "file": f"{split}/{img['file_name']}",
            "license": img.get("license"),
            "annotated_size": [img.get("width"), img.get("height")],
        }
        records.append(ImageRecord(
            key=f"coco-{image_id:012d}", split=split, image=f"{split}/{img['file_name']}",
            meta=meta, captions=tuple(caps or ()), reject=reject,
        ))
    return records
