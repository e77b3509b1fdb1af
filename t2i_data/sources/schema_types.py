"""The vocabulary of sample schemas: ``Type`` and its building blocks, and the JSON fields that
``t2i preprocess`` writes for every dataset.

A leaf module (it imports nothing of the project): the dataset declarations under
``t2i_data/sources/`` build their schemas from it, and ``t2i_data/schema.py``, which checks
samples against those schemas and turns them into ``datasets`` features, reads the declarations
through the registry. Were the building blocks in ``schema.py``, a declaration importing them
would close the cycle schema -> registry -> declaration -> schema.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping


@dataclass(frozen=True)
class Type:
    """One node of a schema. ``kind``: str, int, float, bool, list, struct, image or array."""

    kind: str
    nullable: bool = False
    item: Type | None = None  # list: the type of every item
    length: int | None = None  # list: the fixed length, or None for any
    fields: tuple[tuple[str, Type], ...] = ()  # struct: (name, type), sorted by name as canonical JSON is
    ndim: int = 0  # array: its number of dimensions
    dtype: str | None = None  # array: numpy dtype name; None in SCHEMAS, filled from the manifest

    def __str__(self) -> str:
        if self.kind == "list":
            s = f"list[{self.item}{'' if self.length is None else f', {self.length}'}]"
        elif self.kind == "struct":
            s = "{" + ", ".join(f"{k}: {t}" for k, t in self.fields) + "}"
        elif self.kind == "array":
            s = f"{self.dtype or 'DTYPE'} array, {self.ndim} dims"
        else:
            s = self.kind
        return f"{s} or null" if self.nullable else s


STR, INT, FLOAT, BOOL, IMAGE = Type("str"), Type("int"), Type("float"), Type("bool"), Type("image")


def list_of(item: Type, length: int | None = None) -> Type:
    """A JSON list whose every item is ``item``; ``length``: its fixed length, None for any."""
    return Type("list", item=item, length=length)


def struct(fields: Mapping[str, Type]) -> Type:
    """A JSON object with exactly these keys, each of its type (kept sorted, as canonical JSON is)."""
    return Type("struct", fields=tuple(sorted(fields.items())))


def nullable(t: Type) -> Type:
    """``t``, or null."""
    return replace(t, nullable=True)


def array(ndim: int, dtype: str | None = None) -> Type:
    """A ``.npy`` tar member of ``ndim`` dimensions; ``dtype`` None: filled from the manifest."""
    return Type("array", ndim=ndim, dtype=dtype)


PREPROCESSED_FIELDS: dict[str, Type] = {  # preprocess.produce_shard, for every dataset it builds
    "captions": list_of(STR), "captions_dropped": INT, "caption_fixes": INT, "split": STR, "regime": STR,
    "size": list_of(INT, 2),  # stored w, h
    "source_size": list_of(INT, 2), "source_mode": STR, "source_format": STR,
    "decoded_scale": FLOAT,  # 1.0, 0.5, ...: the JPEG DCT scale the decoder used
    "crop": nullable(list_of(INT, 4)), "exif_orientation": INT, "size_mismatch": BOOL, "source_sha256": STR,
    "pixel_digest": STR, "normalized": list_of(STR), "image_id": INT, "file": STR,
}


PREPROCESSED_IMAGE_MEMBERS = ("jpg", "png")  # preprocess.py writes one of these; jpg: --jpeg-quality, png: lossless


def preprocessed_schema(source_fields: Mapping[str, Type], image: str = "jpg") -> dict[str, Type]:
    """The image-set schema of a dataset built by ``t2i preprocess``: ``<key>.<image>`` and a JSON
    of ``PREPROCESSED_FIELDS`` plus the fields its source puts into ``ImageRecord.meta``.

    ``image``: ``"jpg"`` (JPEG at ``--jpeg-quality``; for photos) or ``"png"`` (lossless, for a
    source whose pixels must be kept exactly: Fashion-MNIST's 8-bit IDX bytes). ``ValueError`` for
    another member."""
    if image not in PREPROCESSED_IMAGE_MEMBERS:
        raise ValueError(f"preprocessed_schema: image must be one of {', '.join(PREPROCESSED_IMAGE_MEMBERS)}, got {image!r}")
    return {image: IMAGE, "json": struct(PREPROCESSED_FIELDS | dict(source_fields))}
