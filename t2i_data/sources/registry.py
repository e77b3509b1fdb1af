"""The dataset registry: every dataset is one module under ``t2i_data/sources/`` holding a
``DATASET = Dataset(...)`` declaration, found here by listing the package (``pkgutil``).

A declaration says everything the stages need to know about its dataset: how to load its records
(the loader ``t2i preprocess`` calls) and which splits it has, the text of its card (pretty name,
summary, what the JSON of a sample holds, the licences of its sources), the schema of its image
samples (``schema.py`` checks every sample against it and declares it in the card's YAML) and the
typed columns of ``t2i export``. ``preprocess.py``, ``card.py``, ``export.py``, ``schema.py`` and
the command line look datasets up here, so adding a dataset touches one new file.

The declarations import only this module, ``schema_types`` and their own source code: never
``schema``, ``card``, ``export`` or ``preprocess``, which import the registry (the import graph
stays acyclic, ``tests/test_architecture.py``). The registry imports the declarations by name at
the first lookup, not at import time, so it can be imported by them.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from .schema_types import Type

_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")  # a dataset name: keys, shard names, `t2i preprocess NAME`


@dataclass(frozen=True)
class Licence:
    """One source's terms as its card and LICENSE.md state them (one row of the licence table).

    ``applies``: None when the row is in every card of the dataset, else a function of the
    manifest that says whether it is (MD-MNIST's embedded digits: only sets built from them)."""

    source: str  # who made it, and what it is
    licence: str  # the terms as the source states them; where it states none, say so
    url: str
    note: str = ""
    applies: Callable[[dict], bool] | None = None


@dataclass(frozen=True)
class Dataset:
    """One dataset's declaration (module docstring). A dataset is built either by ``t2i
    preprocess`` (``loader`` set) or by a command of its own (``command`` set), never both.

    ``ValueError`` naming the field when the name is not lower-case letters, digits and '_', when
    neither or both of ``loader`` and ``command`` are set, when ``schema`` has no image member
    or no struct ``json``, or when ``bbox``, ``flags`` or ``read_image`` are given to a dataset
    preprocess does not build."""

    name: str  # as manifests, keys and shard names spell it: cub, coco, mdmnist
    pretty: str  # the card's title: CUB-200-2011
    summary: str  # the card's first paragraph: what the data is
    fields: str  # the card: what a sample's JSON holds besides captions and split
    licences: Mapping[str, Licence]  # key -> terms, in the card's order; keys are unique among all datasets
    schema: Mapping[str, Type]  # image set: tar member -> type, in member order (schema.py)
    columns: tuple[tuple[str, Any], ...]  # t2i export: (column, pyarrow type) of the JSON fields, beside the full JSON
    splits: tuple[str, ...]  # every split the dataset can have; --split must name some of these
    # preprocess: cfg (a PreprocessConfig) -> ({split: [ImageRecord]} for cfg.splits, or every split
    # present when it is empty; the source fingerprint the manifest records). Raises T2IError.
    loader: Callable[[Any], tuple[dict, dict]] | None = None
    root: str = ""  # what --root points at, for the command line's help
    # (root, record) -> the image's encoded bytes, when an image is not the file root/record.image
    # (pixels inside an archive, an array file); raises Quarantine for a bad one
    read_image: Callable[[Path, Any], bytes] | None = None
    bbox: bool = False  # its records carry bounding boxes: --bbox-crop applies
    flags: tuple[tuple[str, str], ...] = ()  # (flag, config key) its rebuild command adds after --seed
    # PreprocessConfig settings only this dataset reads (cub: cub_split, captions); another dataset
    # given one of them is refused, since the setting would be recorded yet change nothing
    settings: tuple[str, ...] = ()
    # a dataset built by its own command: its manifest's config -> that command (UPPER-CASE words stand for paths)
    command: Callable[[dict], list[str]] | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"{where}: name must be lower-case letters, digits and '_'")
        if (self.loader is None) == (self.command is None):
            raise ValueError(f"{where}: set exactly one of loader (built by t2i preprocess) and command (built by its own command)")
        if self.image_member is None or getattr(self.schema.get("json"), "kind", None) != "struct":
            raise ValueError(f"{where}: schema must have an image member and a struct 'json', got {list(self.schema)}")
        if self.loader is None and (self.bbox or self.flags or self.read_image or self.settings):
            raise ValueError(f"{where}: bbox, flags, settings and read_image are preprocess settings; it has no loader")

    @property
    def preprocessed(self) -> bool:
        """Built by ``t2i preprocess``, with a regime (ae, prior or center)."""
        return self.loader is not None

    @property
    def image_member(self) -> str | None:
        """The tar member of the image: ``jpg`` or ``png``."""
        return next((m for m, t in self.schema.items() if t.kind == "image"), None)

    def licence_keys(self, manifest: dict) -> list[str]:
        """The keys of the licences that apply to the set ``manifest`` describes, in card order."""
        return [k for k, lic in self.licences.items() if lic.applies is None or lic.applies(manifest)]


@lru_cache(maxsize=None)
def datasets() -> dict[str, Dataset]:
    """Every declared dataset by name, sorted by name: the ``DATASET`` of each module in this
    package. ``ValueError`` when a ``DATASET`` is not a ``Dataset``, or two declarations share a
    dataset name or a licence key. The dict is shared: do not change it."""
    found: dict[str, Dataset] = {}
    owner: dict[str, str] = {}  # licence key -> dataset
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        ds = getattr(importlib.import_module(f"{__package__}.{info.name}"), "DATASET", None)
        if ds is None:
            continue
        if not isinstance(ds, Dataset):
            raise ValueError(f"{__package__}.{info.name}.DATASET is a {type(ds).__name__}, not a Dataset")
        if ds.name in found:
            raise ValueError(f"{__package__}.{info.name}: dataset {ds.name!r} is declared twice")
        for key in ds.licences:
            if key in owner:
                raise ValueError(f"{__package__}.{info.name}: licence key {key!r} is {owner[key]}'s already")
            owner[key] = ds.name
        found[ds.name] = ds
    return dict(sorted(found.items()))


def lookup(name: str) -> Dataset | None:
    """The declaration of dataset ``name``, or None when no module declares it."""
    return datasets().get(name)


def preprocess_names() -> tuple[str, ...]:
    """The datasets ``t2i preprocess`` builds, sorted."""
    return tuple(name for name, ds in datasets().items() if ds.preprocessed)
