"""Every sample's schema, per set kind and dataset, as data: image sets as their dataset declares
them (``sources/<name>.py``, found through ``sources/registry.py``), token sets derived from those.

A schema maps each tar member of a sample (``png``/``jpg``, ``json``, ``*.npy``) to its type;
``json`` is a struct whose fields are always present, each with one type, null only where the
schema says so. Producers call ``check_meta`` on every sample's JSON before writing it, so a set
never holds two schemas; the dataset card declares ``features(schema)`` in its YAML header, so
Hugging Face ``datasets`` infers nothing. Inference is what broke: ``datasets``' webdataset
builder types the columns from the first five samples of the first shard, so a COCO set whose
first image has no ``license`` typed the column ``null`` and failed on the first shard with one
(``Couldn't cast array of type int64 to null``).

Types map onto ``datasets`` features the way its webdataset builder would infer them from
complete data: ``str`` → string, ``int`` → int64, ``float`` → float64, ``bool`` → bool, lists →
``List`` (fixed-size where the length is declared), structs → dicts, images → ``Image``, and a
``.npy`` array of n dimensions → n nested lists of its dtype (from the manifest: uint16, or
int32 for vocabularies over 65,536). ``__key__`` and ``__url__`` are strings, as the builder
makes them. Arrow cannot say "not null", so nullability lives here and in ``check_meta`` only.

``check_meta`` runs per sample in the producers, so each type compiles once into a checker
(``_checker``, cached) that builds no strings unless it fails: 6 µs for an MD-MNIST JSON on the
shared 2-core machine, about half of what ``canonical_json`` of the same dict takes there
(a hand-written flat expression took 4.6 µs; MD-MNIST's whole sample takes 165 µs).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping

from .sources import registry
from .sources.schema_types import BOOL, FLOAT, IMAGE, INT, STR, Type, array, list_of, nullable, struct  # noqa: F401 (re-exported)

ARRAY_DTYPES = ("uint16", "int32")  # what tokenize.py and encode.py write
KIND_DTYPES = {"text_emb": ("float16",)}  # kinds whose arrays hold other dtypes: t2i_models/embed.py writes float16


# --- the declarations ------------------------------------------------------------------------

# encode.produce_shard: without a regime (MD-MNIST) the one view is {"identity": true}; with one
# (ae, prior or center: regimes.REGIMES), every view (view 0 too) is a ViewParams. An image set's
# ``regime`` field is the STR of sources/schema_types.py, the name of the regime it was built with.
IDENTITY_VIEWS_JSON = struct({"views": list_of(struct({"identity": BOOL}))})
REGIME_VIEWS_JSON = struct({"views": list_of(struct({"angle": FLOAT, "x": INT, "y": INT, "flip": BOOL}))})


def _schemas() -> dict[tuple[str, str], dict[str, Type]]:
    """Every set kind of every registered dataset: its image set as declared (sources/<name>.py),
    and the token sets derived from it."""
    out: dict[tuple[str, str], dict[str, Type]] = {}
    for name, ds in registry.datasets().items():
        out[("images", name)] = dict(ds.schema)
        out[("text_tokens", name)] = {"text_tokens.npy": array(2)}
        out[("text_emb", name)] = {"text_emb.npy": array(2)}  # float16 (captions, D)
        out[("image_tokens", name)] = {"image_tokens.npy": array(3), "json": REGIME_VIEWS_JSON if ds.preprocessed else IDENTITY_VIEWS_JSON}
    return out


SCHEMAS: dict[tuple[str, str], dict[str, Type]] = _schemas()  # (kind, dataset) → {tar member: type}, in member order


def schema_for(kind: str, dataset: str, dtype: str | None = None, levels: list[str] | None = None) -> dict[str, Type]:
    """The schema of a (kind, dataset) set; ``dtype`` fills its arrays' element type. ``levels``
    (an image-token set of a multi-level autoencoder, VQ-VAE-2: ``levels_of``) puts one
    ``image_tokens.<level>.npy`` member per level, in the order given, where a single-grid set
    has ``image_tokens.npy``."""
    try:
        schema = SCHEMAS[(kind, dataset)]
    except KeyError:
        known = ", ".join(f"{k}/{d}" for k, d in SCHEMAS)
        raise ValueError(f"no sample schema is declared for {kind}/{dataset}; declared: {known}") from None
    if levels:
        if kind != "image_tokens":
            raise ValueError(f"token levels belong to image-token sets, not {kind}")
        schema = {**{f"image_tokens.{lv}.npy": schema["image_tokens.npy"] for lv in levels},
                  **{m: t for m, t in schema.items() if m != "image_tokens.npy"}}
    if any(t.kind == "array" for t in schema.values()):
        allowed = KIND_DTYPES.get(kind, ARRAY_DTYPES)
        if dtype not in allowed:
            raise ValueError(f"{kind}/{dataset}: array dtype must be one of {', '.join(allowed)}, got {dtype!r}")
        schema = {m: replace(t, dtype=dtype) if t.kind == "array" else t for m, t in schema.items()}
    return schema


def schema_of(manifest: dict) -> dict[str, Type]:
    """The schema of the set a manifest describes (array dtype from its tokenizer, autoencoder or text encoder;
    one member per token level for a multi-level image-token set, ``levels_of``)."""
    dtype = (manifest.get("tokenizer") or manifest.get("autoencoder") or manifest.get("text_encoder") or {}).get("dtype")
    levels = list(levels_of(manifest)) if manifest.get("kind") == "image_tokens" else None
    return schema_for(manifest["kind"], manifest["dataset"], dtype, levels)


LEVEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,15}")  # part of a tar member name and of figure file names


def levels_of(manifest: dict) -> dict[str, dict]:
    """The token levels of an image-token set made by a multi-level autoencoder (VQ-VAE-2;
    ``t2i_models.encode``): ``{level: {"grid", "vocab_size"}}`` coarse to fine (by grid), from its
    manifest's ``autoencoder.levels``; ``{}`` for a single-grid set. ``T2IError`` for a record that
    is not such a map (a level name that is not a short lower-case word, a grid or vocabulary that
    is not a positive integer)."""
    from .errors import T2IError

    lv = (manifest.get("autoencoder") or {}).get("levels")
    if lv is None:
        return {}
    ok = isinstance(lv, dict) and lv and all(
        isinstance(k, str) and LEVEL_NAME.fullmatch(k) and isinstance(v, dict) and set(v) == {"grid", "vocab_size"}
        and all(type(v[f]) is int and 1 <= v[f] <= (1 << 24) for f in ("grid", "vocab_size")) for k, v in lv.items())
    if not ok:
        raise T2IError(f"{manifest.get('dataset')}/{manifest.get('split')}: its manifest's autoencoder.levels is {str(lv)[:80]}, not a map "
                       f"of level names to {{grid, vocab_size}}; rebuild the set")
    return {k: dict(lv[k]) for k in sorted(lv, key=lambda k: (lv[k]["grid"], k))}


def declared(manifest: dict) -> bool:
    return (manifest.get("kind"), manifest.get("dataset")) in SCHEMAS


# --- checking --------------------------------------------------------------------------------

def check_meta(meta: dict, schema: Mapping[str, Type] | Type, where: str) -> None:
    """Raise ``ValueError`` naming a key that is missing or extra (the first, sorted), or else a
    value of the wrong type, null where not nullable, or a list of the wrong length, with its path
    (``digits[1].color``). ``schema``: a sample schema (its ``json`` member is used) or a struct type."""
    t = schema if isinstance(schema, Type) else schema["json"]
    hit = _COMPILED.get(id(t))  # by identity: hashing a nested frozen dataclass costs more than the check
    if hit is None or hit[0] is not t:
        hit = _COMPILED[id(t)] = (t, _checker(t))
    try:
        hit[1](meta)
    except _Bad as e:
        path = "".join(reversed(e.path)).removeprefix(".")  # ".digits[1].color" → "digits[1].color"
        raise ValueError(f"{where}: sample JSON {e.what(repr(path) if path else '(the whole object)')}") from None


class _Bad(Exception):
    """Raised by a checker; the path is collected on the way out, so a valid sample builds no strings."""

    def __init__(self, what: Callable[[str], str]) -> None:
        self.what = what  # path name → the message
        self.path: list[str] = []  # ".key" or "[i]", innermost first


def _bad(v, t: Type) -> _Bad:
    if v is None:
        return _Bad(lambda p: f"{p} is null, the schema declares {t} (not nullable)")
    return _Bad(lambda p: f"{p} is {type(v).__name__} {json.dumps(v, default=repr)[:60]}, the schema declares {t}")


_SCALARS = {"str": str, "int": int, "bool": bool, "float": float}
_COMPILED: dict[int, tuple[Type, Callable]] = {}  # id(type) → (the type, kept alive so the id stays its own; its checker)


def _plain(t: Type) -> bool:
    """Checked by ``type(v) is``: a non-null str, int or bool (a float must also be finite)."""
    return t.kind in ("str", "int", "bool") and not t.nullable


@lru_cache(maxsize=None)
def _checker(t: Type) -> Callable[[object], None]:
    """A function that raises ``_Bad`` for a value not of type ``t``; built once per type, since
    it runs for every sample a producer writes."""
    if t.kind in _SCALARS:
        ok, finite = _SCALARS[t.kind], t.kind == "float"

        def check(v):
            # type() is, not isinstance: bool is an int, and an int where a float is declared changes the JSON bytes
            if type(v) is ok and (not finite or math.isfinite(v)) or v is None and t.nullable:
                return
            if finite and type(v) is float:
                raise _Bad(lambda p: f"{p} is {v}, which JSON cannot hold; the schema declares a finite float")
            raise _bad(v, t)
        return check
    if t.kind == "list":
        item, length = t.item, t.length
        plain = _SCALARS[item.kind] if _plain(item) else None
        sub = _checker(item)

        def check(v):
            if type(v) not in (list, tuple):
                if v is None and t.nullable:
                    return
                raise _bad(v, t)
            if length is not None and len(v) != length:
                raise _Bad(lambda p: f"{p} has {len(v)} items, the schema declares {t}")
            if plain is not None and all(type(x) is plain for x in v):  # the common case, in one pass
                return
            for i, x in enumerate(v):
                try:
                    sub(x)
                except _Bad as e:
                    e.path.append(f"[{i}]")
                    raise
        return check
    if t.kind == "struct":
        names = tuple(k for k, _ in t.fields)
        keyset = frozenset(names)
        # non-null str / int / bool fields in one loop with no call per field: a third of the cost
        plain = tuple((k, _SCALARS[ft.kind]) for k, ft in t.fields if _plain(ft))
        subs = tuple((k, _checker(ft)) for k, ft in t.fields if not _plain(ft))

        def check(v):
            if type(v) is not dict:
                if v is None and t.nullable:
                    return
                raise _bad(v, t)
            if v.keys() != keyset:
                for k in sorted(keyset | set(map(str, v))):
                    if k not in v:
                        e = _Bad(lambda p, k=k: f"lacks key {p}, which the schema declares ({dict(t.fields)[k]})")
                    elif k not in keyset:
                        e = _Bad(lambda p: f"has key {p}, which the schema does not declare (declared: {', '.join(names)})")
                    else:
                        continue
                    e.path.append("." + k)
                    raise e
            for k, ok in plain:
                if type(v[k]) is not ok:
                    e = _bad(v[k], dict(t.fields)[k])
                    e.path.append("." + k)
                    raise e
            for k, sub in subs:
                try:
                    sub(v[k])
                except _Bad as e:
                    e.path.append("." + k)
                    raise
        return check
    raise ValueError(f"a {t.kind} is a tar member of its own, not a JSON value")


# --- datasets features and the card's YAML ---------------------------------------------------

_VALUE = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}


def _yaml_type(t: Type) -> dict:
    """The type as ``datasets`` writes it in a card (``Features._to_yaml_list``), without the name."""
    if t.kind in _VALUE:
        return {"dtype": _VALUE[t.kind]}
    if t.kind == "image":
        return {"dtype": "image"}
    if t.kind == "struct":
        return {"struct": [{"name": k, **_yaml_type(ft)} for k, ft in t.fields]}
    if t.kind == "array":
        if t.dtype is None:
            raise ValueError("an array's dtype is not set; take the schema from schema_of(manifest) or schema_for(..., dtype=...)")
        inner: dict = {"dtype": t.dtype}
        for _ in range(t.ndim):
            inner = {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
        return inner
    if t.kind == "list":
        inner = _yaml_type(t.item)
        out = {"list": inner["dtype"] if set(inner) == {"dtype"} else (inner["struct"] if set(inner) == {"struct"} else inner)}
        return out | ({"length": t.length} if t.length is not None else {})
    raise ValueError(f"unknown type kind {t.kind!r}")


def feature_list(schema: Mapping[str, Type]) -> list[dict]:
    """The whole sample's features in the YAML form: the tar members, then ``__key__``, ``__url__``
    (the builder's own order), each ``{"name": ..., <type>}``."""
    columns = {**schema, "__key__": STR, "__url__": STR}
    return [{"name": name, **_yaml_type(t)} for name, t in columns.items()]


def yaml_lines(obj, indent: str = "") -> list[str]:
    """Block YAML for the nested dicts and lists ``feature_list`` returns; scalars JSON-quoted,
    which YAML reads as they are. A list under a key is indented two spaces more than the key
    (``struct:`` then ``  - name: ...``), so no line of it looks like an item of the card's
    ``data_files`` path list, which sits at four spaces."""
    lines = []
    if isinstance(obj, list):
        for item in obj:
            sub = yaml_lines(item, indent + "  ")
            lines.append(indent + "- " + sub[0][len(indent) + 2 :])
            lines += sub[1:]
        return lines
    for k, v in obj.items():
        if isinstance(v, (dict, list)):
            lines.append(f"{indent}{k}:")
            lines += yaml_lines(v, indent + "  ")
        else:
            lines.append(f"{indent}{k}: {json.dumps(v)}")
    return lines


def features(schema: Mapping[str, Type]):
    """The ``datasets.Features`` of a whole sample: what ``load_dataset`` builds from the card's
    YAML, and what to pass as ``features=`` to ``load_dataset("webdataset", data_files=...)``."""
    from .extras import require

    Features = require("datasets", "datasets.Features for a shard set").Features

    # The function datasets reads a card's dataset_info.features with (private, in datasets 5.2):
    # so these are by construction what load_dataset(FOLDER) builds from the card, and the YAML
    # form is the one translation of a schema. tests/test_schema.py compares the two through
    # load_dataset_builder, so a change on datasets' side shows there.
    return Features._from_yaml_list(feature_list(schema))


def features_of(path: str | Path):
    """``features(schema_of(manifest))`` for a shard-set folder (or a build folder of splits, which
    must share one schema): ``load_dataset("webdataset", data_files=data_files(p), features=features_of(p))``."""
    from .manifest import find_manifests, load_manifest

    schemas = {tuple(s.items()): s for s in (schema_of(load_manifest(m)) for m in find_manifests(path))}
    if len(schemas) != 1:
        raise ValueError(f"{path}: {len(schemas)} sample schemas among its shard sets; give one split folder")
    return features(next(iter(schemas.values())))
