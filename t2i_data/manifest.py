"""Manifests: the contract between stages (DESIGN.md, "Formats").

``manifest.json`` sits beside its shards, written with sorted keys. Its ``digest`` identifies the
data, not the bytes: it covers everything except the shards' file sha256 and sizes and the
encoder versions, so a shard set rebuilt with another zlib keeps its digest (and its aligned
derived sets stay valid) while ``t2i verify`` still reports the byte difference.

A manifest is input like any other (DESIGN.md, "Trust"): a shard set is often downloaded, and its
digest is no defence, since whoever edits a manifest can recompute it. So ``load_manifest``
checks every field that names a file or sizes a loop before any reader sees it: ``dataset`` and
``split`` are plain tokens (``TOKEN``), shard i is named ``<dataset>-<split>-<i:06d>.tar`` (the
only name this project writes, so no manifest can name ``../x`` or ``/etc/passwd``), and each
shard path, resolved with its symlinks, stays inside the manifest's folder and is a regular file
when it exists; counts are non-negative integers within ``MAX_SHARD_BYTES`` and one ustar header
per sample, sha256 fields are 64 hex digits and the totals add up. Every output path downstream
(tokenize, encode, inspect) is built from these checked tokens.

The checked-reading API lives here too, beside the contract it holds readers to: ``ShardSet`` (a
split's folder and its loaded manifest), ``open_shard_sets``, ``check_shard_file`` (the one size
and sha256 check every reader runs, the streams' cached one included; defined in ``shardcheck``),
``checked_shard_path``, ``checked_samples`` (count checked too) and ``data_files`` (for
``webdataset.WebDataset`` and ``datasets.load_dataset("webdataset")``). Each also takes a set by
URL (``remote.py``; ``open_remote_set``, ``open_split``): the manifest read from the store is
checked by ``parse_manifest`` as a local one is, and its shards are read from the local cache
(``ShardSet.remote``, ``ShardSet.pinned``), checked against the manifest there.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .digest import canonical_json
from .errors import T2IError
from .remote import DEFAULT_PREFETCH, RemoteShardSet, find_remote_manifests, is_url, local_or_url, read_manifest
from .shardcheck import _VERIFIED, check_shard_file, check_shard_once, remember_verified, stat_key  # noqa: F401  (re-exported)
from .sources.records import confiner
from .tario import iter_samples

FORMAT_VERSION = 2  # what this t2i writes; 2: "rejected" became "quarantined", autoencoder.vocab became vocab_size
READABLE_VERSIONS = (1, 2)  # format 1 is read through _upgrade_v1, its digest kept
MANIFEST_NAME = "manifest.json"
KINDS = ("images", "text_tokens", "image_tokens", "text_emb")
_BYTE_LEVEL_SHARD_FIELDS = ("sha256", "bytes")
# dataset, split and regime: they become file names (shards, indexes, figures) and keys
TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_SHARDS = 10**6  # shard numbers have six digits
MAX_SHARD_BYTES = 1 << 40  # 1 TiB; this project's shards are tens to hundreds of MB
MIN_SAMPLE_BYTES = 512  # one ustar header: a sample has at least one member
# bounds on fields that size arrays in readers (inspect's code usage, export's fixed-size lists)
_FIELD_BOUNDS = {("tokenizer", "length"): (1, 1 << 16), ("tokenizer", "pad_id"): (0, 1 << 31), ("tokenizer", "vocab_size"): (1, 1 << 31),
                 ("autoencoder", "vocab_size"): (1, 1 << 24), ("autoencoder", "grid"): (1, 1 << 12), ("config", "views"): (1, 1 << 12),
                 ("text_encoder", "dim"): (1, 1 << 20)}
_DTYPES = ("uint16", "int32")
_REQUIRED = {"text_tokens": {"tokenizer": ("length", "pad_id")}, "image_tokens": {"autoencoder": ("grid",)},
             "text_emb": {"text_encoder": ("dim", "dtype", "fingerprint")}}
_EMB_DTYPES = ("float16",)  # text_emb sets (t2i_models/embed.py)


def manifest_digest(manifest: dict) -> str:
    ident = {k: v for k, v in manifest.items() if k not in ("digest", "encoder")}
    ident["shards"] = [{k: v for k, v in s.items() if k not in _BYTE_LEVEL_SHARD_FIELDS} for s in manifest["shards"]]
    ident["totals"] = {k: v for k, v in manifest["totals"].items() if k != "bytes"}
    return hashlib.sha256(canonical_json(ident)).hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def dump_manifest(manifest: dict) -> bytes:
    manifest = dict(manifest, digest=manifest_digest(manifest))
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest(path: str | os.PathLike, manifest: dict) -> dict:
    atomic_write(path, dump_manifest(manifest))
    return dict(manifest, digest=manifest_digest(manifest))


def shard_file_name(dataset: str, split: str, index: int) -> str:
    """The name of shard ``index`` of a set: the only shard name a manifest may hold."""
    return f"{dataset}-{split}-{index:06d}.tar"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "..."


def _is_int(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi  # never a bool, a float or a string


def check_manifest(manifest, where: str) -> None:
    """Every field of a loaded manifest that names a file, sizes a loop or an array, or identifies
    data, checked; one ``T2IError`` naming ``where``, the field and its value otherwise."""

    def bad(field: str, value, why: str):
        raise T2IError(f"{where}: {field} is {_shown(value)}, {why}; this manifest is damaged or was not written by t2i "
                       f"(DESIGN.md, 'Trust'): rebuild the set or get it again from its source")

    if not isinstance(manifest, dict):
        bad("the manifest", type(manifest).__name__, "not a JSON object")
    if manifest.get("kind") not in KINDS:
        bad("kind", manifest.get("kind"), f"not one of {', '.join(KINDS)}")
    for field in ("dataset", "split"):
        v = manifest.get(field)
        if not isinstance(v, str) or not TOKEN.fullmatch(v):
            bad(field, v, f"not a plain name ({TOKEN.pattern}: lower-case letters, digits, '_', '.', '-')")
    if manifest.get("regime") is not None and not (isinstance(manifest["regime"], str) and TOKEN.fullmatch(manifest["regime"])):
        bad("regime", manifest["regime"], "neither null nor a plain name")
    for field in ("digest", "aligned_to"):
        v = manifest.get(field)
        if v is not None and not (isinstance(v, str) and _HEX64.fullmatch(v)):
            bad(field, v, "not a sha256 (64 lower-case hex digits)")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) > MAX_SHARDS:
        bad("shards", type(shards).__name__ if not isinstance(shards, list) else f"{len(shards)} shards",
            f"not a list of at most {MAX_SHARDS:,} shard records")
    for i, s in enumerate(shards):
        at = f"shards[{i}]"
        if not isinstance(s, dict):
            bad(at, s, "not an object")
        name = shard_file_name(manifest["dataset"], manifest["split"], i)
        if s.get("name") != name:
            bad(f"{at}.name", s.get("name"), f"expected {name!r} (shard i of a set is <dataset>-<split>-<i:06d>.tar)")
        for field in ("sha256", "content_digest"):
            if (field in s or field == "sha256") and not (isinstance(s.get(field), str) and _HEX64.fullmatch(s[field])):
                bad(f"{at}.{field}", s.get(field), "not a sha256 (64 lower-case hex digits)")
        if not _is_int(s.get("bytes"), 0, MAX_SHARD_BYTES):
            bad(f"{at}.bytes", s.get("bytes"), f"not an integer from 0 to {MAX_SHARD_BYTES:,}")
        if not _is_int(s.get("samples"), 0, s["bytes"] // MIN_SAMPLE_BYTES):
            bad(f"{at}.samples", s.get("samples"), f"not an integer from 0 to {s['bytes'] // MIN_SAMPLE_BYTES:,} "
                f"(its {s['bytes']:,} bytes hold at most one sample per {MIN_SAMPLE_BYTES}-byte tar header)")
        for field in ("first_key", "last_key"):
            if s.get(field) is not None and not (isinstance(s[field], str) and len(s[field]) <= 100 and "/" not in s[field]):
                bad(f"{at}.{field}", s[field], "not a sample key")
    totals = manifest.get("totals")
    if not isinstance(totals, dict):
        bad("totals", totals, "not an object")
    quarantined = manifest.get("quarantined", [])
    if not isinstance(quarantined, list) or not all(isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("reason"), str)
                                                 for r in quarantined):
        bad("quarantined", type(quarantined).__name__ if not isinstance(quarantined, list) else "a list", "not a list of {key, reason} records")
    sums = {"shards": len(shards), "samples": sum(s["samples"] for s in shards), "bytes": sum(s["bytes"] for s in shards)}
    if "quarantined" in manifest:
        sums["quarantined"] = len(quarantined)
    for field, expected in sums.items():
        if (field in totals or field != "quarantined") and totals.get(field) != expected:
            bad(f"totals.{field}", totals.get(field), f"but the shard records add up to {expected:,}")
    for section, fields in _REQUIRED.get(manifest["kind"], {}).items():
        for field in fields:
            if not isinstance(manifest.get(section), dict) or field not in manifest[section]:
                bad(f"{section}.{field}", None, f"missing, and a {manifest['kind']} set needs it")
    if manifest["kind"] != "images" and manifest.get("aligned_to") is None:
        bad("aligned_to", None, "missing: a derived set names the digest of the image set it is aligned to")
    for (section, field), (lo, hi) in _FIELD_BOUNDS.items():
        sec = manifest.get(section)
        if sec is not None and not isinstance(sec, dict):
            bad(section, sec, "not an object")
        if sec and field in sec and not _is_int(sec[field], lo, hi):
            bad(f"{section}.{field}", sec[field], f"not an integer from {lo} to {hi:,}")
    for section in ("tokenizer", "autoencoder"):
        sec = manifest.get(section) or {}
        if "dtype" in sec and sec["dtype"] not in _DTYPES:
            bad(f"{section}.dtype", sec["dtype"], f"not one of {', '.join(_DTYPES)}")
    sec = manifest.get("text_encoder") or {}
    if "dtype" in sec and sec["dtype"] not in _EMB_DTYPES:
        bad("text_encoder.dtype", sec["dtype"], f"not one of {', '.join(_EMB_DTYPES)}")


def shard_path(folder: str | os.PathLike, name: str, where: str | None = None) -> Path:
    """``folder / name`` for a shard name read from a manifest: a plain relative name that,
    resolved with its symlinks, stays inside ``folder``, and a regular file if it exists
    (a FIFO would block a reader, a device would never end); one ``T2IError`` otherwise."""
    return Path(_confine_shards(Path(folder), [name], where or str(folder))[0])


def _confine_shards(folder: Path, names: list, where: str) -> list[str]:
    check = confiner(folder)
    out = []
    for name in names:
        try:
            path = check(name, "shard name")
        except ValueError as e:
            raise T2IError(f"{where}: {e}; a shard must be a file inside its set's folder (DESIGN.md, 'Trust')") from None
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None  # missing: the reader says so in its own words
        if mode is not None and not stat.S_ISREG(mode):
            raise T2IError(f"{where}: shard {name} is not a regular file; replace it with the shard itself")
        out.append(path)
    return out


def parse_manifest(data: bytes, where: str) -> dict:
    """The manifest in ``data`` (the bytes of a manifest.json, read from ``where``: a path or a
    URL, named in messages), checked (``check_manifest``) and its digest verified; one
    ``T2IError`` otherwise. Shard names are not yet confined to a folder: ``load_manifest`` does
    that on disk, ``remote.RemoteShardSet`` for a store."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise T2IError(f"{where}: not valid JSON ({e}); the manifest is damaged, rebuild the shard set") from None
    except RecursionError as e:
        raise T2IError(f"{where}: not a readable manifest ({type(e).__name__}); point at a shard set's manifest.json") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise T2IError(f"{where}: manifest format_version {version!r}, this t2i reads {', '.join(map(str, READABLE_VERSIONS))}; "
                       "rebuild the shard set with this t2i (the same command writes it anew)")
    stored = manifest
    if version == 1:
        manifest = _upgrade_v1(manifest)
    check_manifest(manifest, where)
    if stored.get("digest") != manifest_digest(stored):
        raise T2IError(f"{where}: the manifest's digest does not match its content; it was edited by hand or damaged")
    return manifest


def load_manifest(path: str | os.PathLike) -> dict:
    """The manifest at ``path``, checked (``parse_manifest``), and every shard it lists confined
    to its folder (``shard_path``): readers may then open ``folder / name``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise T2IError(f"{path}: no manifest here; build the shard set first or point at its manifest.json") from None
    except IsADirectoryError as e:
        raise T2IError(f"{path}: not a readable manifest ({type(e).__name__}); point at a shard set's manifest.json") from None
    manifest = parse_manifest(data, str(path))
    _confine_shards(path.parent, [s["name"] for s in manifest["shards"]], str(path))
    return manifest


def _upgrade_v1(manifest: dict) -> dict:
    """A format-1 manifest as format 2 names its fields, in memory: ``rejected`` -> ``quarantined``
    (list and total), ``autoencoder.vocab`` -> ``autoencoder.vocab_size``. The digest stays the one
    the file records (computed over the stored form), so derived sets aligned to it, and training
    runs whose plan names it, still match; nothing is rewritten on disk."""
    m = dict(manifest)
    if "rejected" in m and "quarantined" not in m:
        m["quarantined"] = m.pop("rejected")
    if isinstance(m.get("totals"), dict) and "rejected" in m["totals"] and "quarantined" not in m["totals"]:
        m["totals"] = {("quarantined" if k == "rejected" else k): v for k, v in m["totals"].items()}
    ae = m.get("autoencoder")
    if isinstance(ae, dict) and "vocab" in ae and "vocab_size" not in ae:
        m["autoencoder"] = {("vocab_size" if k == "vocab" else k): v for k, v in ae.items()}
    return m


def find_manifests(path: str | os.PathLike) -> list[Path]:
    """A manifest file, a shard directory holding one, or a build directory of split subfolders.
    Inside a directory, a manifest (or split folder) that is a symlink leading out of it is refused."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / MANIFEST_NAME).is_file():
        found = [path / MANIFEST_NAME]
    else:
        found = sorted(path.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise T2IError(f"{path}: no {MANIFEST_NAME} in it or in its subfolders; is this a shard set?")
    check = confiner(path)
    for m in found:
        try:
            check(m.relative_to(path).as_posix(), "manifest")
        except ValueError as e:
            raise T2IError(f"{path}: {e}; a shard set's manifest must lie inside the folder given (DESIGN.md, 'Trust')") from None
    return found


# --- checked reading ------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSet:
    """One split of a shard set: its folder and its (loaded, digest-checked) manifest.

    ``remote``: the ``remote.RemoteShardSet`` of a set read by URL (``dir`` is then the cache
    folder its shards are fetched into), None for a local folder. ``where(name)`` names a shard
    in messages (its path, or its URL); ``pinned(name)`` gives a readable local path for a
    ``with`` block; ``shards(ahead)`` walks the manifest's shard records, prefetching the next
    ``ahead`` of a remote set while the caller reads one."""

    dir: Path
    manifest: dict
    remote: object = None

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def split(self) -> str:
        return self.manifest["split"]

    @property
    def location(self) -> str:
        """The set's folder or URL, as the user gave it."""
        return self.remote.url if self.remote is not None else str(self.dir)

    def where(self, name: str) -> str:
        return self.remote.where(name) if self.remote is not None else str(self.dir / name)

    def field(self, section: str, name: str):
        """``manifest[section][name]``, or one T2IError saying the manifest lacks it."""
        value = (self.manifest.get(section) or {}).get(name)
        if value is None:
            raise T2IError(f"{self.location}: its manifest has no {section}.{name}, which reading a {self.kind} set needs; rebuild the set")
        return value

    @contextmanager
    def pinned(self, name: str) -> Iterator[Path]:
        """A local path of shard ``name`` for the block: the file itself (confined to the set's
        folder), or a remote set's cached copy, fetched if needed and held against eviction."""
        if self.remote is None:
            yield shard_path(self.dir, name)
        else:
            with self.remote.pinned(name) as path:
                yield path

    def shards(self, ahead: int | None = None) -> Iterator[dict]:
        """The manifest's shard records in order; for a remote set the next ``ahead`` shards
        (``remote.DEFAULT_PREFETCH`` when None) download while the caller reads the current one."""
        records = self.manifest["shards"]
        if self.remote is not None and ahead is None:
            ahead = DEFAULT_PREFETCH
        for i, rec in enumerate(records):
            if self.remote is not None and ahead:
                self.remote.prefetch([r["name"] for r in records[i : i + 1 + ahead]])
            yield rec


def open_shard_sets(path: str | os.PathLike, cache=None) -> list[ShardSet]:
    """The split(s) at ``path`` (a split folder, a build folder of splits, or a manifest.json),
    with every listed shard present; raises one T2IError otherwise.

    ``path`` may be a URL (``remote.is_url``): ``file://`` is the local folder; any other
    protocol (s3://, gs://, https://, ...) gives ``ShardSet``s whose shards are fetched into
    ``cache`` (a ``shard_cache.ShardCache``; the default cache when None) as they are read, so their
    presence is checked then, not here."""
    if is_url(path):
        path = local_or_url(path)
        if isinstance(path, str):
            return [_remote(u, parse_manifest(data, f"{u}/{MANIFEST_NAME}"), cache) for u, data in find_remote_manifests(path)]
    path = Path(path)
    if not path.exists():
        raise T2IError(f"{path}: no such folder; give a shard set folder (the one holding {MANIFEST_NAME}) or a build folder of splits")
    if path.is_file() and path.name != MANIFEST_NAME:
        raise T2IError(f"{path}: a file, not a shard set; give the folder that holds the shards and their {MANIFEST_NAME}")
    if path.is_dir() and not (path / MANIFEST_NAME).is_file() and not any(path.glob(f"*/{MANIFEST_NAME}")):
        raise T2IError(f"{path}: no {MANIFEST_NAME} here or in its subfolders, so it is not a t2i shard set; point at the folder "
                       f"a t2i build wrote (shards with their {MANIFEST_NAME}), or rebuild the set")
    sets = []
    for mpath in find_manifests(path):
        m = load_manifest(mpath)
        if m.get("kind") not in KINDS:
            raise T2IError(f"{mpath}: kind {m.get('kind')!r}; t2i reads {', '.join(KINDS)} shard sets")
        ss = ShardSet(mpath.parent, m)
        missing = [s["name"] for s in m["shards"] if not (ss.dir / s["name"]).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise T2IError(f"{ss.dir}: shard {', '.join(missing[:3])}{more} listed in its manifest is missing; restore it or rebuild "
                           f"the set (t2i verify {ss.dir} lists every problem)")
        sets.append(ss)
    return sets


def open_remote_set(url: str, cache=None, manifest: dict | None = None) -> ShardSet:
    """The split folder at ``url`` (a store's; ``remote.py``) as a ``ShardSet`` whose shards are
    fetched into ``cache`` (a ``shard_cache.ShardCache``, the default one when None): its
    manifest read from the store and checked (``parse_manifest``), or ``manifest`` when given
    (a local one, e.g. committed, checked by ``load_manifest``)."""
    if manifest is None:
        url, data = read_manifest(url)
        manifest = parse_manifest(data, f"{url}/{MANIFEST_NAME}")
    return _remote(url, manifest, cache)


def _remote(url: str, manifest: dict, cache) -> ShardSet:
    rs = RemoteShardSet(url, manifest, cache)
    return ShardSet(rs.dir, rs.manifest, rs)


def split_manifest(location) -> dict:
    """The manifest of one split folder given as a setting: a local folder (or ``file://`` URL),
    or any other URL, whose manifest.json is read from the store (not cached: it is small and
    the shards' reader fetches it again). ``T2IError`` as ``load_manifest`` and ``read_manifest``."""
    if is_url(location):
        location = local_or_url(location)
        if isinstance(location, str):
            url, data = read_manifest(location)
            return parse_manifest(data, f"{url}/{MANIFEST_NAME}")
    path = Path(location)
    if path.is_dir() and not (path / MANIFEST_NAME).is_file():
        splits = sorted(p.parent.name for p in path.glob(f"*/{MANIFEST_NAME}"))
        if splits:  # a build folder of splits where one split is read
            raise T2IError(f"{path}: holds {len(splits)} splits ({', '.join(splits)}); give one split's folder, "
                           f"e.g. {path / ('train' if 'train' in splits else splits[0])}")
    return load_manifest(path / MANIFEST_NAME)


def open_split(location, cache=None) -> ShardSet:
    """One split folder given to a stream: a local folder (or ``file://`` URL), its manifest
    loaded and its shard names confined (presence is the stream's to check: a shard gone
    mid-run is counted as lost), or a URL read through ``remote.RemoteShardSet`` with ``cache``."""
    if is_url(location):
        location = local_or_url(location)
        if isinstance(location, str):
            return open_remote_set(location, cache)
    location = Path(location)
    return ShardSet(location, load_manifest(location / MANIFEST_NAME))


def open_one_split(path: str | os.PathLike, kind: str, what: str, reads: str) -> ShardSet:
    """The one split of kind ``kind`` at ``path`` (``open_shard_sets``'s checks first). ``what``
    starts each message (a flag such as ``"--prompts-from "``, or ``""``) and ``reads`` says
    what the command reads. ``T2IError`` for a build folder of several splits (naming them and
    the first split's folder to give instead) or a set of another kind."""
    sets = open_shard_sets(path)
    if len(sets) != 1:
        raise T2IError(f"{what}{path}: {len(sets)} splits ({', '.join(s.split for s in sets)}); give one split's folder, "
                       f"e.g. {sets[0].location}")
    if sets[0].kind != kind:
        raise T2IError(f"{what}{sets[0].location}: a {sets[0].kind} shard set; {reads}")
    return sets[0]


def checked_shard_path(ss: ShardSet, shard: dict) -> Path:
    """The shard's path (confined to the set's folder, or a remote set's cached copy, fetched
    if needed) once its size and sha256 match the manifest's."""
    if ss.remote is not None:
        path = ss.remote.fetch(shard["name"])
        check_shard_once(path, shard)
        return path
    path = shard_path(ss.dir, shard["name"])
    try:
        check_shard_file(path, shard)
    except FileNotFoundError:
        raise T2IError(f"{path}: listed in the manifest but missing; restore it or rebuild the set (t2i verify {ss.dir})") from None
    return path


def checked_samples(ss: ShardSet, shard: dict) -> Iterator[dict]:
    """The samples of one shard, after its checksum check, with their count checked too (a
    remote set's shard is held against eviction while they are read)."""
    n = 0
    with ss.pinned(shard["name"]) if ss.remote is not None else nullcontext():
        for sample in iter_samples(checked_shard_path(ss, shard)):
            n += 1
            yield sample
    if n != shard["samples"]:
        raise T2IError(f"{ss.where(shard['name'])}: {n} samples, the manifest says {shard['samples']}; rebuild the set")


def data_files(path: str | os.PathLike, check: bool = True, cache=None) -> dict[str, list[str]]:
    """{split: shard paths in order} for ``webdataset.WebDataset(files[split])`` and
    ``datasets.load_dataset("webdataset", data_files=files)``, after the manifest, presence and
    (with ``check``) checksum checks. Shards with no samples are left out: they add no rows, and
    datasets infers the columns from the first shard it is given.

    For a set given by URL (not ``file://``): with ``check`` every shard is fetched into ``cache``
    and checked, and the cached copies' paths are returned (``T2IError`` when the set does not
    fit the cache's limit, since those paths are not held against eviction); without ``check``,
    the shards' URLs (datasets and webdataset open them through fsspec themselves)."""
    out = {}
    for ss in open_shard_sets(path, cache):
        shards = [s for s in ss.manifest["shards"] if s["samples"]]
        if ss.remote is not None and check:
            need = sum(s["bytes"] for s in shards)
            if need > ss.remote.cache.limit:
                raise T2IError(f"{ss.location}: {need:,} bytes of shards, more than the shard cache's limit of {ss.remote.cache.limit:,} "
                               f"bytes ({ss.remote.cache.root}); raise it (T2I_CACHE_BYTES), or take the URLs with check=False")
        if ss.remote is not None:
            out[ss.split] = [str(p) for p in _fetch_all(ss, shards)] if check else [ss.where(s["name"]) for s in shards]
        else:
            out[ss.split] = [str(checked_shard_path(ss, s) if check else ss.dir / s["name"]) for s in shards]
    return out


def _fetch_all(ss: ShardSet, shards: list[dict]) -> list[Path]:
    ss.remote.prefetch([s["name"] for s in shards])
    return [checked_shard_path(ss, s) for s in shards]
