"""The record a source hands the preprocessing stage: where an image is and what it says."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageRecord:
    key: str  # stable, from the source id: cub-00039, coco-000000000139
    split: str
    image: str  # path relative to the source root
    meta: dict = field(default_factory=dict)  # source fields written into <key>.json
    captions: tuple[str, ...] | None = None  # inline captions (COCO); None: read caption_file
    caption_file: str | None = None  # path relative to the source root (CUB)
    bbox: tuple[float, float, float, float] | None = None  # x, y, w, h in source pixels
    reject: str | None = None  # "<kind>: <detail>" found in the metadata: quarantine unread
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
    plain_relative(name, what)
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"{what} {name!r} resolves to {path}, outside {base}")
    return path
