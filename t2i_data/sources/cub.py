"""CUB-200-2011 with the AttnGAN / Reed et al. text_c10 captions.

Layout under ``--root``: ``CUB_200_2011/{images.txt, classes.txt, image_class_labels.txt,
train_test_split.txt, bounding_boxes.txt, images/<class>/<name>.jpg}`` and the caption folder
``birds/text/<class>/<name>.txt`` (10 captions per image, one per line), plus, for the
``attngan`` split, ``birds/{train,test}/filenames.pickle``.

Splits: ``official`` (train_test_split.txt: 5,994 train / 5,794 test) or ``attngan`` (the
pickles: 8,855 train images of 150 classes / 2,933 test images of 50 other classes).
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

from ..errors import T2IError
from .records import ImageRecord

META = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")
SPLIT_SCHEMES = ("official", "attngan")


class _ListsOfStrings(pickle.Unpickler):
    """Loads only what opcodes build without importing anything: lists, strings, numbers."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only lists of strings are accepted")


def load_name_list(path: Path) -> list[str]:
    """An AttnGAN ``filenames.pickle`` (a Python 2 pickle of a list of str), loaded safely."""
    try:
        names = _ListsOfStrings(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise T2IError(f"{path}: missing; the attngan split needs birds/train and birds/test filenames.pickle") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise T2IError(f"{path}: not a pickled list of file names ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise T2IError(f"{path}: expected a list of str, got {type(names).__name__}")
    return names


def _table(path: Path, ncols: int) -> list[tuple[int, int, list[str]]]:
    """(line number, id, other columns) for each non-empty line of a CUB metadata file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise T2IError(f"{path}: missing; --root must hold CUB_200_2011/ with the CUB metadata files") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != ncols or not parts[0].isdigit():
            raise T2IError(f"{path}:{lineno}: expected {ncols} columns starting with an image id, got {line!r}")
        rows.append((lineno, int(parts[0]), parts[1:]))
    return rows


def fingerprint(root: Path) -> dict:
    base = root / "CUB_200_2011"
    return {"kind": "cub", "files": {name: hashlib.sha256((base / name).read_bytes()).hexdigest() for name in META}}


def load_cub(root: str | Path, scheme: str = "official", captions: str | Path | None = None) -> dict[str, list[ImageRecord]]:
    """Records per split, sorted by image id; metadata problems become ``reject`` reasons."""
    if scheme not in SPLIT_SCHEMES:
        raise T2IError(f"--cub-split must be one of {', '.join(SPLIT_SCHEMES)}, got {scheme!r}")
    root = Path(root)
    base = root / "CUB_200_2011"
    text_dir = Path(captions) if captions else root / "birds" / "text"
    if not text_dir.is_dir():
        raise T2IError(f"{text_dir}: no caption folder; pass --captions DIR (the text_c10 folder with <class>/<image>.txt)")
    classes = {i: c[0] for _, i, c in _table(base / "classes.txt", 2)}
    labels = {i: int(c[0]) for _, i, c in _table(base / "image_class_labels.txt", 2)}
    official = {i: c[0] for _, i, c in _table(base / "train_test_split.txt", 2)}
    boxes = {i: tuple(float(v) for v in c) for _, i, c in _table(base / "bounding_boxes.txt", 5)}
    if scheme == "attngan":
        named = {n: s for s in ("train", "test") for n in load_name_list(root / "birds" / s / "filenames.pickle")}
    first_line: dict[int, int] = {}
    records: dict[str, list[ImageRecord]] = {"train": [], "test": []}
    for lineno, image_id, (rel,) in _table(base / "images.txt", 2):
        stem = rel.rsplit(".", 1)[0]
        reject = None
        if image_id in first_line:
            reject = f"duplicate-id: image id {image_id} again at images.txt line {lineno} (first at line {first_line[image_id]})"
        else:
            first_line[image_id] = lineno
        if scheme == "official":
            flag = official.get(image_id)
            split = {"1": "train", "0": "test"}.get(flag)
        else:
            split = named.get(stem)
        if split is None:
            split = "test" if scheme == "official" else "train"
            reject = reject or f"no-split: image id {image_id} has no {scheme} split assignment"
        cls = labels.get(image_id)
        meta = {
            "image_id": image_id,
            "class_id": cls,
            "class_name": classes.get(cls),
            "file": f"CUB_200_2011/images/{rel}",
            "bbox": list(boxes[image_id]) if image_id in boxes else None,
        }
        records[split].append(ImageRecord(
            key=f"cub-{image_id:05d}",
            split=split,
            image=str(Path("CUB_200_2011") / "images" / rel),
            meta=meta,
            caption_file=str(text_dir / f"{stem}.txt"),
            bbox=boxes.get(image_id),
            reject=reject,
        ))
    for split in records:  # stable: a duplicate id follows the first occurrence
        records[split].sort(key=lambda r: r.meta["image_id"])
    return records
