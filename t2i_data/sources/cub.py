"""CUB-200-2011 with the AttnGAN / Reed et al. text_c10 captions.

Layout under ``--root``: ``CUB_200_2011/{images.txt, classes.txt, image_class_labels.txt,
train_test_split.txt, bounding_boxes.txt, images/<class>/<name>.jpg}`` and the caption folder
``birds/text/<class>/<name>.txt`` (10 captions per image, one per line), plus, for the
``attngan`` split, ``birds/{train,test}/filenames.pickle``.

Splits: ``official`` (train_test_split.txt: 5,994 train / 5,794 test) or ``attngan`` (the
pickles: 8,855 train images of 150 classes / 2,933 test images of 50 other classes).

Every field is checked where it is read. What stops the run with one ``T2IError`` naming the
file and line: a missing file, a line whose first column is not an integer (it belongs to no
image, and a file of such lines is not the file we expect), any bad line of ``classes.txt``
(it defines what every label means), a pickle that is not a list of plain relative names.
What quarantines one image as ``bad-metadata: <file> line <n>: ...``: any other problem with a
line about that image (see ``_check``), a wrong column count included: one damaged line is one
damaged image, and a run never stops over one bad image (DESIGN, Errors). A line in a per-image
file that names no image in images.txt is skipped, and counted in one warning per file.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import pickle
import posixpath
import re
from pathlib import Path
from typing import Callable

import pyarrow as pa

from ..errors import T2IError
from .records import BadField, ImageRecord, as_int, confiner, plain_relative
from .registry import Dataset, Licence
from .schema_types import FLOAT, INT, STR, list_of, nullable, preprocessed_schema

log = logging.getLogger(__name__)
META = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")
SPLIT_SCHEMES = ("official", "attngan")
KEY_DIGITS = 5  # keys are cub-{id:05d}: a longer id would sort out of id order
_INT = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")  # ASCII only: float() also reads "1_0", "٣", "３0"
MAX_BOX = 1e6  # pixels: no CUB image is near this; a larger box is a damaged line, not a bird


class _ListsOfStrings(pickle.Unpickler):
    """Loads only what opcodes build without importing anything: lists, strings, numbers."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only lists of strings are accepted")


def load_name_list(path: Path) -> list[str]:
    """An AttnGAN ``filenames.pickle`` (a Python 2 pickle of a list of str), loaded safely.

    ``T2IError`` naming the file when it is missing, not a pickle the allow-list accepts, not a
    list, or holds an element that is not a str or not a plain relative name (``names[3]``)."""
    try:
        names = _ListsOfStrings(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise T2IError(f"{path}: missing; the attngan split needs birds/train and birds/test filenames.pickle") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise T2IError(f"{path}: not a pickled list of file names ({e})") from None
    if not isinstance(names, list):
        raise T2IError(f"{path}: expected a list of str, got {type(names).__name__}")
    for i, name in enumerate(names):
        try:
            plain_relative(name, f"names[{i}]")
        except ValueError as e:
            raise T2IError(f"{path}: {e}") from None
    return names


def _table(path: Path) -> list[tuple[int, int, list[str]]]:
    """(line number, id, other columns) for each non-empty line of a CUB metadata file.

    ``T2IError`` naming file:line when the file is missing, is not UTF-8, or a line's first
    column is not an integer. Column counts and value ranges are the caller's: per image."""
    if path.exists() and not path.is_file():  # a folder; a FIFO would block the read forever
        raise T2IError(f"{path}: not a regular file; --root must hold CUB_200_2011/ with the CUB metadata files")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise T2IError(f"{path}: missing; --root must hold CUB_200_2011/ with the CUB metadata files") from None
    except OSError as e:
        raise T2IError(f"{path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise T2IError(f"{path}: not UTF-8 text ({e})") from None
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):  # "\n" only: splitlines() also breaks at U+0085, U+2028 ...
        parts = line.split()
        if not parts:
            continue
        if not _INT.fullmatch(parts[0]) or len(parts[0]) > 100:
            raise T2IError(f"{path}:{lineno}: expected a line starting with an integer id, got {line[:200]!r}")
        rows.append((lineno, int(parts[0]), parts[1:]))
    return rows


def _classes(path: Path) -> dict[int, str]:
    """classes.txt: ``<class id> <name>`` per line; any other line stops (``T2IError``, file:line)."""
    classes: dict[int, str] = {}
    for lineno, class_id, cols in _table(path):
        if len(cols) != 1 or class_id < 0 or class_id in classes:
            problem = "a second line for class" if class_id in classes else "expected '<class id> <name>' for class"
            raise T2IError(f"{path}:{lineno}: {problem} {class_id}, got {' '.join(cols)!r}")
        classes[class_id] = cols[0]
    return classes


def _per_image(path: Path, known: set[int]) -> dict[int, list[tuple[int, list[str]]]]:
    """image id -> [(line number, columns), ...] of one per-image file; more than one entry is
    a problem for that image. Lines naming no image in images.txt are skipped with a warning."""
    lines: dict[int, list[tuple[int, list[str]]]] = {}
    orphans = []
    for lineno, image_id, cols in _table(path):
        if image_id in known:
            lines.setdefault(image_id, []).append((lineno, cols))
        else:
            orphans.append((lineno, image_id))
    if orphans:
        log.warning("%s: skipped %d lines naming no image in images.txt (first: line %d, id %d)", path, len(orphans), *orphans[0])
    return lines


def _one(side: dict, name: str, image_id: int, ncols: int, problems: list, required: bool = False) -> tuple[int, list[str]] | None:
    """(line number, columns) of the one line file ``name`` has for an image; None, with a
    problem appended, when there are several, it has not ``ncols`` values after the id, or
    there is none and the line is ``required`` (else None alone: the source does not say)."""
    entries = side[name].get(image_id, [])
    if not entries:
        if required:
            problems.append(f"{name} has no line for image id {image_id}")
        return None
    if len(entries) > 1:
        problems.append(f"{name} lines {', '.join(str(n) for n, _ in entries)} all give image id {image_id}")
        return None
    lineno, cols = entries[0]
    if len(cols) != ncols:
        problems.append(f"{name} line {lineno}: {len(cols)} values after the id, expected {ncols}")
        return None
    return lineno, cols


def _bbox(cols: list[str], where: str) -> tuple[float, float, float, float]:
    """x, y, w, h: four plain ASCII decimal numbers, finite, each within ±1e6 pixels, with w, h > 0;
    ``BadField`` naming ``where`` otherwise."""
    if not all(_NUMBER.fullmatch(v) for v in cols):
        raise BadField(f"{where}: box {' '.join(cols)[:200]!r} is not four numbers")
    box = tuple(float(v) for v in cols)
    if not all(math.isfinite(v) and abs(v) <= MAX_BOX for v in box):
        raise BadField(f"{where}: box {list(box)} is not finite or beyond {MAX_BOX:g} pixels")
    if box[2] <= 0 or box[3] <= 0:
        raise BadField(f"{where}: box {list(box)} has a width or height <= 0")
    return box  # type: ignore[return-value]


def fingerprint(root: Path) -> dict:
    base = root / "CUB_200_2011"
    return {"kind": "cub", "files": {name: hashlib.sha256((base / name).read_bytes()).hexdigest() for name in META}}


def load_cub(root: str | Path, scheme: str = "official", captions: str | Path | None = None) -> dict[str, list[ImageRecord]]:
    """Records per split, sorted by image id (an id too long for the key last, in file order,
    keyed ``cub-images.txt:<line>``); metadata problems become ``quarantine`` reasons:
    ``bad-metadata`` (see ``_check``), ``duplicate-id``, ``no-split``."""
    if scheme not in SPLIT_SCHEMES:
        raise T2IError(f"--cub-split must be one of {', '.join(SPLIT_SCHEMES)}, got {scheme!r}")
    root = Path(root)
    base = root / "CUB_200_2011"
    text_dir = Path(captions) if captions else root / "birds" / "text"
    if not text_dir.is_dir():
        raise T2IError(f"{text_dir}: no caption folder; pass --captions DIR (the text_c10 folder with <class>/<image>.txt)")
    listed = _table(base / "images.txt")
    classes = _classes(base / "classes.txt")
    known = {image_id for _, image_id, _ in listed}
    side = {name: _per_image(base / name, known) for name in META[2:]}
    named: dict[str, str] = {}
    if scheme == "attngan":
        for s in ("train", "test"):
            for n in load_name_list(root / "birds" / s / "filenames.pickle"):
                named[n] = "both" if named.get(n, s) != s else s
    in_images, in_text = confiner(base / "images"), confiner(text_dir)
    first_line: dict[int, int] = {}
    records: dict[str, list[ImageRecord]] = {"train": [], "test": []}
    order: dict[str, int] = {}
    for lineno, image_id, cols in listed:
        problems: list[str] = []
        rec = _check(lineno, image_id, cols, in_images, in_text, str(text_dir), classes, side, scheme == "official", problems)
        stem = rec.pop("stem")
        is_training = rec.pop("is_training")
        if scheme == "official":
            split = {"0": "test", "1": "train"}.get(is_training)
        else:
            split = named.get(stem) if stem is not None else None
            if split == "both":
                problems.append(f"{stem} is in both birds/train and birds/test filenames.pickle")
                split = None
        quarantine = None
        if problems:
            quarantine = "bad-metadata: " + "; ".join(problems)
        elif image_id in first_line:
            quarantine = f"duplicate-id: image id {image_id} again at images.txt line {lineno} (first at line {first_line[image_id]})"
        elif split is None:
            quarantine = f"no-split: image id {image_id} has no {scheme} split assignment"
        first_line.setdefault(image_id, lineno)
        split = split or ("test" if scheme == "official" else "train")
        key = f"cub-{image_id:05d}" if rec["meta"]["image_id"] is not None else f"cub-images.txt:{lineno}"
        order[key] = image_id if rec["meta"]["image_id"] is not None else 10**KEY_DIGITS + lineno
        records[split].append(ImageRecord(key=key, split=split, quarantine=quarantine, **rec))
    for split in records:  # stable: a duplicate id follows the first occurrence
        records[split].sort(key=lambda r: order[r.key])
    return records


def _check(lineno: int, image_id: int, cols: list[str], in_images: Callable, in_text: Callable, text_dir: str,
           classes: dict[int, str], side: dict, official: bool, problems: list[str]) -> dict:
    """The checks of one images.txt line, each failure appended to ``problems`` (the detail of
    a ``bad-metadata`` reason): the id fits ``cub-{id:05d}``; one path after it, a plain
    relative name confined to ``images/``, whose caption file ``<stem>.txt`` is confined to the
    caption folder; exactly one image_class_labels.txt line, naming a class of classes.txt;
    at most one bounding_boxes.txt line, four finite numbers with w, h > 0; at most one
    train_test_split.txt line, is_training 0 or 1 (checked only by the official scheme, the one
    that reads it; no line is ``no-split``). Returns the ImageRecord fields, plus ``stem`` and
    ``is_training`` for the split; ``meta`` always has its five keys, null where a check failed."""
    where = f"images.txt line {lineno}"
    meta = {"image_id": None, "class_id": None, "class_name": None, "file": None, "bbox": None}
    out = {"meta": meta, "image": "", "caption_file": None, "bbox": None, "stem": None, "is_training": None}
    try:
        meta["image_id"], _ = as_int(image_id, f"{where}: image id", digits=KEY_DIGITS)
    except BadField as e:
        problems.append(str(e))
    if len(cols) != 1:
        problems.append(f"{where}: {len(cols)} values after the id, expected 1 (a path)")
    else:
        rel = cols[0]
        stem = posixpath.splitext(rel)[0]
        try:
            in_images(rel, f"{where}: path")
            in_text(f"{stem}.txt", f"{where}: caption file")
            meta["file"] = f"CUB_200_2011/images/{rel}"
            out.update(image=meta["file"], caption_file=os.path.join(text_dir, f"{stem}.txt"), stem=stem)
        except ValueError as e:
            problems.append(str(e))
    label = _one(side, "image_class_labels.txt", image_id, 1, problems, required=True)
    if label is not None:
        (n, (value,)) = label
        class_id = int(value) if _INT.fullmatch(value) and len(value) <= 100 else None
        if class_id not in classes:
            problems.append(f"image_class_labels.txt line {n}: class {value!r} names no class in classes.txt")
        else:
            meta["class_id"], meta["class_name"] = class_id, classes[class_id]
    box = _one(side, "bounding_boxes.txt", image_id, 4, problems)
    if box is not None:
        try:
            out["bbox"] = _bbox(box[1], f"bounding_boxes.txt line {box[0]}")
            meta["bbox"] = list(out["bbox"])
        except BadField as e:
            problems.append(str(e))
    flag = _one(side, "train_test_split.txt", image_id, 1, problems) if official else None
    if flag is not None and flag[1][0] not in ("0", "1"):
        problems.append(f"train_test_split.txt line {flag[0]}: is_training is {flag[1][0]!r}, not 0 or 1")
    out["is_training"] = flag[1][0] if flag else None
    return out


def load(cfg) -> tuple[dict[str, list[ImageRecord]], dict]:
    """The preprocess loader: both splits of ``cfg.root`` under the scheme ``cfg.cub_split``,
    captions from ``cfg.captions`` (default ``<root>/birds/text``), and the sha256 of the
    metadata files. Raises ``T2IError`` as ``load_cub`` does."""
    root = Path(cfg.root)
    return load_cub(root, cfg.cub_split, cfg.captions), fingerprint(root)


DATASET = Dataset(
    name="cub",
    pretty="CUB-200-2011",
    summary="CUB-200-2011: photographs of 200 bird species, each with 10 captions.",
    fields="the image id, class and bounding box, the source file and size",
    licences={
        "cub": Licence(
            source="Caltech-UCSD Birds-200-2011 (C. Wah, S. Branson, P. Welinder, P. Perona, S. Belongie; Caltech)",
            licence="non-commercial research and educational use; no formal licence text ships with the archive",
            url="https://www.vision.caltech.edu/datasets/cub_200_2011/",
            note="the images were collected from Flickr and remain under their owners' copyright",
        ),
        "cub-captions": Licence(
            source="CUB captions, 10 per image (S. Reed, Z. Akata, H. Lee, B. Schiele, CVPR 2016), as AttnGAN's birds.zip ships them",
            licence="no licence stated by the authors; used for research",
            url="https://github.com/reedscot/cvpr2016",
        ),
    },
    schema=preprocessed_schema({"class_id": INT, "class_name": STR, "bbox": nullable(list_of(FLOAT, 4))}),
    # int64 as schema_types.INT declares (and datasets reads): the source allows up to 18 digits
    columns=(("image_id", pa.int64()), ("class_id", pa.int64()), ("class_name", pa.string()), ("bbox", pa.list_(pa.float64(), 4))),
    splits=("train", "test"),
    loader=load,
    root="the folder holding CUB_200_2011/ and birds/",
    bbox=True,
    flags=(("--cub-split", "cub_split"),),
    settings=("cub_split", "captions"),
)
