"""The record a source hands the preprocessing stage: where an image is and what it says."""
from __future__ import annotations

import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class ImageRecord:
    key: str  # stable, from the source id: cub-00039, coco-000000000139
    split: str
    image: str  # path relative to the source root
    meta: dict = field(default_factory=dict)  # source fields written into <key>.json
    captions: tuple[str, ...] | None = None  # inline captions (COCO); None: read caption_file
    caption_file: str | None = None  # path relative to the source root (CUB)
    bbox: tuple[float, float, float, float] | None = None  # x, y, w, h in source pixels
    quarantine: str | None = None  # "<kind>: <detail>" found in the metadata: quarantine unread
    captions_dropped: int = 0  # captions the source listed that were not usable text (null, number, blank)
    normalized: tuple[str, ...] = ()  # metadata values read in another unambiguous form, e.g. "images[0].id: '7' -> 7"


def clean_caption_lines(data: bytes, replace_fffd: bool) -> tuple[list[str], int]:
    """UTF-8 caption file → its non-empty lines in order, and how many lines were repaired.

    ``replace_fffd``: replace each "\\ufffd\\ufffd" by a space, as AttnGAN does for the CUB
    text_c10 files whose words are separated by two U+FFFD characters. Raises
    ``UnicodeDecodeError`` for bytes that are not UTF-8.
    """
    text = data.decode("utf-8")
    captions, fixes = [], 0
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if replace_fffd and "\ufffd\ufffd" in line:
            line, fixes = line.replace("\ufffd\ufffd", " "), fixes + 1
        if line.strip():
            captions.append(line)
    return captions, fixes


def plain_relative(name, what: str) -> str:
    """``name`` if it is a plain relative path (str, POSIX separators, no ``..``, not absolute,
    no NUL, no backslash, no empty or ``.`` parts); else ``ValueError`` naming ``what``.

    Source files and manifests are input, often from someone else: a file name read from them
    must never reach outside the folder it is relative to. ``confined`` then checks the same
    against symlinks on disk.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} is {type(name).__name__}, not a string")
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        raise ValueError(f"{what} {name!r} is not a plain relative name")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what} {name!r} is not a plain relative name (empty, '.' or '..' part)")
    return name


def confined(root: Path, name: str, what: str) -> Path:
    """``root / name`` after ``plain_relative``, resolved (symlinks followed) and checked to
    lie inside ``root`` resolved; ``ValueError`` naming ``what`` otherwise."""
    return Path(confiner(root)(name, what))


def confiner(root: Path) -> Callable[[str, str], str]:
    """``confined`` for many names under one ``root``, as strings: ``check(name, what)``
    resolves ``root`` once, then ``lstat``s the parts of ``name`` that exist; when none is a
    symlink, ``root/name`` is already what ``Path.resolve`` would return, and only otherwise is
    the path resolved in full (a symlink loop is a ``ValueError`` too). Why: resolving every path in full, and the root each time, took 4.7-5.2 s for CUB's
    11,788 images here (0.4 ms a name: 50 s for COCO train2017), the walk 0.34-0.39 s.
    """
    base = Path(root).resolve()

    def check(name: str, what: str) -> str:
        plain_relative(name, what)
        cur = str(base)
        for part in name.split("/"):
            cur = os.path.join(cur, part)
            try:
                mode = os.lstat(cur).st_mode
            except OSError:
                break  # nothing exists below a part that does not: resolve() keeps the rest as written
            if stat.S_ISLNK(mode):
                try:
                    path = (base / name).resolve()
                except (OSError, RuntimeError) as e:  # Python 3.11 raises RuntimeError for a symlink loop
                    raise ValueError(f"{what} {name!r} cannot be resolved ({e})") from None
                if path != base and base not in path.parents:
                    raise ValueError(f"{what} {name!r} resolves to {path}, outside {base}")
                return str(path)
        return os.path.join(str(base), name)

    return check


class BadField(ValueError):
    """One metadata value that cannot be used; its message (naming where the value is, e.g.
    ``images[3].id is a list``) is the detail of the record's ``bad-metadata`` reason."""


_DIGITS = re.compile(r"-?[0-9]+")  # ASCII only: str.isdigit() accepts "²", which int() refuses


def as_int(value, where: str, *, minimum: int = 0, digits: int = 18) -> tuple[int, str | None]:
    """An integer read from source metadata, and a line for ``ImageRecord.normalized`` when it
    came in another form that means the same number unambiguously, else None.

    Accepted as is: an ``int`` (never a ``bool``: ``True`` is an int in Python, and no source
    means 1 by it). Normalised: a float with an integral value (``7.0 -> 7``) and a string of
    ASCII digits with an optional minus sign (``'7' -> 7``). Then the value must be at least
    ``minimum`` and have at most ``digits`` digits: 18 by default, so that every integer written
    into a sample fits Arrow's int64 (``datasets`` and ``t2i export`` refuse larger ones), fewer
    where a zero-padded key (``coco-{id:012d}``) must keep keys in id order. Raises ``BadField`` naming ``where`` otherwise:
    ``"<where> is null"``, ``"<where> is a list"``, ``"<where> is 7.5, not an integer"``,
    ``"<where> is -3, negative"``, ``"<where> is 123456, more than 5 digits"``.
    """
    if type(value) is int and minimum <= value < 10**digits:  # the common case, first: 45,000 calls for COCO val2017
        return value, None
    if value is None:
        raise BadField(f"{where} is null")
    if isinstance(value, bool):
        raise BadField(f"{where} is a bool ({value})")
    if not isinstance(value, (int, float, str)):
        raise BadField(f"{where} is a {type(value).__name__}")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + "...'"[: 3 + isinstance(value, str)]
    if isinstance(value, float) and not value.is_integer():  # also nan and inf
        raise BadField(f"{where} is {shown}, not an integer")
    if isinstance(value, str) and (not _DIGITS.fullmatch(value) or len(value) > 100):  # int() refuses 4,300+ digits
        raise BadField(f"{where} is {shown}, not an integer")
    number = int(value)
    if number < minimum:
        raise BadField(f"{where} is {shown}, " + ("negative" if minimum == 0 else f"less than {minimum}"))
    if abs(number) >= 10**digits:
        raise BadField(f"{where} is {shown}, more than {digits} digits")
    return number, None if type(value) is int else f"{where}: {shown} -> {number}"


def usable_caption(value) -> bool:
    """A caption is kept only if it is a string that UTF-8 can hold (no lone surrogate such as
    ``"\ud800"``, which JSON allows) with a visible character: null, numbers, lists, blank
    strings and strings of only spaces, control and format characters (U+200B) are dropped (and
    counted by the source), never turned into text like "None"."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf") for ch in value)
