"""MS-COCO captions: ``annotations/captions_<split>.json`` and ``<split>/<file_name>`` images.

Every usable caption of an image is kept, in the order of the annotations file. The file is
input, often from someone else, so every field is type-checked where it is read, with one of
three outcomes:

- the file as a whole is malformed (not JSON, top level not an object, ``images`` or
  ``annotations`` missing or not a list): one ``T2IError`` naming the file and the field;
- one entry of ``images`` is wrong: that record is quarantined as ``bad-metadata: images[3].id
  is a list`` (every problem of the entry, joined by "; "), and nothing of it is read; an integer
  written in another unambiguous form (``"7"``, ``7.0``) is used and noted in
  ``ImageRecord.normalized`` (``images[0].id: '7' -> 7``);
- one entry of ``annotations`` is wrong: a caption that is not a string with a non-blank
  character is dropped and counted in its image's ``captions_dropped``; an annotation that is
  not an object, whose ``image_id`` is malformed, or that names no image is skipped, and the
  skipped ones are counted in one warning per file (they belong to no record to quarantine).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa

from ..errors import T2IError
from .records import BadField, ImageRecord, as_int, confiner, usable_caption
from .registry import Dataset, Licence
from .schema_types import INT, list_of, nullable, preprocessed_schema

log = logging.getLogger(__name__)
SPLITS = ("train2017", "val2017")
KEY_DIGITS = 12  # keys are coco-{id:012d}: a longer id would sort out of id order


def annotations_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"captions_{split}.json"


def available_splits(root: str | Path) -> list[str]:
    return [s for s in SPLITS if annotations_path(Path(root), s).exists()]  # a folder or FIFO there is refused by _read, by name


def fingerprint(root: Path, splits: list[str]) -> dict:
    files = {f"annotations/captions_{s}.json": hashlib.sha256(annotations_path(root, s).read_bytes()).hexdigest() for s in splits}
    return {"kind": "coco", "files": files}


def _read(path: Path, split: str) -> tuple[list, list]:
    """The ``images`` and ``annotations`` lists; ``T2IError`` naming the file (and the field)
    when the file is missing, not JSON, or not an object holding those two lists."""
    if path.exists() and not path.is_file():  # a folder; a FIFO would block the read forever
        raise T2IError(f"{path}: not a regular file; --root must hold annotations/captions_{split}.json")
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise T2IError(f"{path}: missing; --root must hold annotations/captions_{split}.json and {split}/") from None
    except OSError as e:
        raise T2IError(f"{path}: cannot be read ({e.strerror})") from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, an integer over 4,300 digits
        raise T2IError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise T2IError(f"{path}: not a COCO captions file (JSON nested too deeply to read)") from None
    if not isinstance(data, dict):
        raise T2IError(f"{path}: the top level is a {type(data).__name__}, not an object; a COCO captions file is "
                       "an object with 'images' and 'annotations' lists")
    lists = []
    for name in ("images", "annotations"):
        if name not in data:
            raise T2IError(f"{path}: not a COCO captions file: no '{name}' (it needs 'images' and 'annotations')")
        if not isinstance(data[name], list):
            raise T2IError(f"{path}: '{name}' is a {type(data[name]).__name__}, not a list")
        lists.append(data[name])
    return lists[0], lists[1]


@dataclass
class _Captions:
    """What ``annotations`` says about each image id, and what it says about none."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)
    notes: dict[int, list[str]] = field(default_factory=dict)  # normalised annotations[j].image_id
    first: dict[int, int] = field(default_factory=dict)  # the first annotation index per image id
    count: dict[int, int] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)  # annotations skipped: not an object, bad image_id


def _captions(anns: list) -> _Captions:
    """Group the captions by image id, in file order. A non-string or blank caption is counted
    in ``dropped`` and never kept; an annotation that is not an object or whose ``image_id`` is
    not an id (``as_int`` rules) goes into ``malformed``."""
    out = _Captions()
    for j, ann in enumerate(anns):
        if not isinstance(ann, dict):
            out.malformed.append(f"annotations[{j}] is a {type(ann).__name__}, not an object")
            continue
        try:
            image_id, note = as_int(ann.get("image_id"), f"annotations[{j}].image_id", digits=KEY_DIGITS)
        except BadField as e:
            out.malformed.append(str(e) if "image_id" in ann else f"annotations[{j}].image_id is missing")
            continue
        if note:
            out.notes.setdefault(image_id, []).append(note)
        out.first.setdefault(image_id, j)
        out.count[image_id] = out.count.get(image_id, 0) + 1
        caption = ann.get("caption")
        if usable_caption(caption):
            out.texts.setdefault(image_id, []).append(caption)
        else:
            out.dropped[image_id] = out.dropped.get(image_id, 0) + 1
    return out


def _optional_int(img: dict, name: str, where: str, minimum: int, problems: list, notes: list) -> int | None:
    """``img[name]`` checked by ``as_int``; None when absent or null (the source does not say),
    None with a problem appended when present but not an integer of at least ``minimum``."""
    if img.get(name) is None:
        return None
    try:
        value, note = as_int(img[name], f"{where}.{name}", minimum=minimum)
    except BadField as e:
        problems.append(str(e))
        return None
    if note:
        notes.append(note)
    return value


def _check_image(i: int, img, split: str, in_split: Callable) -> tuple[int | None, dict, str, list[str], list[str]]:
    """One entry of ``images``: (id or None, meta, image path or "", normalised notes, problems).

    ``id`` as ``as_int`` with at most 12 digits (required); ``file_name`` a plain relative name
    confined to ``<root>/<split>`` by ``in_split`` (required; a name that fails is never joined to a path);
    ``width`` and ``height`` positive integers, ``license`` a non-negative integer (each
    optional: absent or null gives null, and ``annotated_size`` is null unless both sizes are
    there). ``meta`` always has the four keys; a value that failed is null.
    """
    where = f"images[{i}]"
    meta = {"image_id": None, "file": None, "license": None, "annotated_size": None}
    notes: list[str] = []
    if not isinstance(img, dict):
        return None, meta, "", notes, [f"{where} is a {type(img).__name__}, not an object"]
    problems: list[str] = []
    try:
        meta["image_id"], note = as_int(img.get("id"), f"{where}.id", digits=KEY_DIGITS)
        notes += [note] if note else []
    except BadField as e:
        problems.append(str(e) if "id" in img else f"{where}.id is missing")
    image = ""
    if "file_name" not in img:
        problems.append(f"{where}.file_name is missing")
    else:
        try:
            in_split(img["file_name"], f"{where}.file_name")
            image = meta["file"] = f"{split}/{img['file_name']}"
        except ValueError as e:
            problems.append(str(e))
    w = _optional_int(img, "width", where, 1, problems, notes)
    h = _optional_int(img, "height", where, 1, problems, notes)
    meta["annotated_size"] = [w, h] if w is not None and h is not None else None
    meta["license"] = _optional_int(img, "license", where, 0, problems, notes)
    return meta["image_id"], meta, image, notes, problems


def load_coco(root: str | Path, split: str) -> list[ImageRecord]:
    """One record per entry of ``images``: those with a usable id sorted by id (a duplicate id
    after the first, in file order), then those without one, in file order, keyed by their
    place (``coco-images[3]``). Reasons: ``bad-metadata`` (see ``_check_image``),
    ``duplicate-id`` (an entry repeating an earlier one's id and file; every entry of an id
    listed with two different files, since captions name only the id), ``no-captions`` (none, or none usable: the count dropped is in the
    reason). Raises ``T2IError`` for a malformed file as a whole (see ``_read``)."""
    root = Path(root)
    path = annotations_path(root, split)
    images, anns = _read(path, split)
    caps = _captions(anns)
    in_split = confiner(root / split)
    checked = [(i, *_check_image(i, img, split, in_split)) for i, img in enumerate(images)]
    keyed = sorted((c for c in checked if c[1] is not None), key=lambda c: c[1])  # stable: duplicates keep file order
    files: dict[int, set] = {}
    for c in keyed:
        files.setdefault(c[1], set()).add(c[2]["file"])
    seen: set[int] = set()
    records = []
    for i, image_id, meta, image, notes, problems in keyed + [c for c in checked if c[1] is None]:
        quarantine = None
        dropped = caps.dropped.get(image_id, 0) if image_id is not None else 0
        if image_id is not None:
            notes = notes + caps.notes.get(image_id, [])
        if problems:
            quarantine = "bad-metadata: " + "; ".join(problems)
        elif len(files[image_id]) > 1:  # annotations name the id, so no caption can be told to belong to one of them
            quarantine = (f"duplicate-id: image id {image_id} names {len(files[image_id])} different files in {path.name}; "
                      "its captions cannot be attributed, so none of them is kept")
        elif image_id in seen:
            quarantine = f"duplicate-id: image id {image_id} again in {path.name}"
        elif not caps.texts.get(image_id):
            extra = f" ({dropped} dropped: not text or blank)" if dropped else ""
            quarantine = f"no-captions: no caption for image id {image_id} in {path.name}{extra}"
        if image_id is not None:
            seen.add(image_id)
        records.append(ImageRecord(
            key=f"coco-{image_id:012d}" if image_id is not None else f"coco-images[{i}]", split=split, image=image,
            meta=meta, captions=tuple(caps.texts.get(image_id, ())), quarantine=quarantine,
            captions_dropped=dropped, normalized=tuple(notes),
        ))
    _warn_skipped(path, len(anns), caps, seen)
    return records


def _warn_skipped(path: Path, total: int, caps: _Captions, image_ids: set[int]) -> None:
    """One warning for the annotations that reach no record: malformed, or naming no image."""
    orphans = sorted((j, image_id) for image_id, j in caps.first.items() if image_id not in image_ids)
    n_orphan = sum(caps.count[image_id] for _, image_id in orphans)
    if not caps.malformed and not orphans:
        return
    parts = []
    if caps.malformed:
        parts.append(f"{len(caps.malformed)} malformed (first: {caps.malformed[0]})")
    if orphans:
        parts.append(f"{n_orphan} naming no image in 'images' (first: annotations[{orphans[0][0]}] names image id {orphans[0][1]})")
    log.warning("%s: skipped %d of %d annotations: %s", path, len(caps.malformed) + n_orphan, total, ", ".join(parts))


def load(cfg) -> tuple[dict[str, list[ImageRecord]], dict]:
    """The preprocess loader: the splits ``cfg.splits`` of ``cfg.root`` (when empty, every split
    whose annotations file is there) and the sha256 of their annotations files. Raises
    ``T2IError`` when no split is there, or as ``load_coco`` does."""
    root = Path(cfg.root)
    splits = list(cfg.splits) or available_splits(root)
    if not splits:
        raise T2IError(f"--root {root}: no annotations/captions_{{train2017,val2017}}.json in it")
    return {s: load_coco(root, s) for s in splits}, fingerprint(root, splits)


DATASET = Dataset(
    name="coco",
    pretty="MS-COCO",
    summary="MS-COCO 2017: everyday scenes, each image with its (usually 5) captions.",
    fields="the image id, its licence id, the source file and size",
    licences={
        "coco-annotations": Licence(
            source="MS-COCO 2017 caption annotations (COCO Consortium)", licence="CC BY 4.0", url="https://cocodataset.org/#termsofuse",
        ),
        "coco-images": Licence(
            source="MS-COCO 2017 images (from Flickr)",
            licence="each image under its own Flickr licence: the `license` id in its JSON, ids 1-8 of the annotation "
                    "file's list (CC BY-NC-SA 2.0, CC BY-NC 2.0, CC BY-NC-ND 2.0, CC BY 2.0, CC BY-SA 2.0, CC BY-ND 2.0, "
                    "no known copyright restrictions, United States Government Work)",
            url="https://cocodataset.org/#termsofuse",
            note="the COCO Consortium does not own the images' copyright; their use must follow the Flickr Terms of Use",
        ),
    },
    schema=preprocessed_schema({"license": nullable(INT), "annotated_size": nullable(list_of(INT, 2))}),
    columns=(("image_id", pa.int64()), ("license", pa.int64())),  # int64 as schema_types.INT declares
    splits=SPLITS,
    loader=load,
    root="the folder holding annotations/ and train2017/ val2017/",
)
