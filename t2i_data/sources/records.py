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
