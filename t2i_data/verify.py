"""Check shard sets against manifests: bytes first, then decoded content where bytes differ.

Statuses: ``ok`` (sha256 matches); ``content-ok`` (bytes differ but decoded pixels, JSON and
arrays are identical: another encoder version wrote them); ``mismatch`` (content differs);
``unreadable`` (not a valid tar, a member name or header that is not what t2i writes, or a field
that fails to decode, e.g. an image over ``pngio.MAX_SHARD_PIXELS``); ``missing``. A manifest
that names a file outside its folder stops the run (``manifest.shard_path``): it is not a finding
about one shard but a set that must not be read.

A set may be given by URL (``remote.py``: s3://, gs://, https://; file:// is a local folder), or
a local manifest with ``--data URL``: each shard is downloaded once, into the local cache when it
matches its manifest (so a later read costs nothing), into a temporary file deleted after the
check when it does not; ``missing`` then means the store does not have it, and ``extra`` is
reported where the store can list its folder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .digest import ContentHasher, canonical_field, file_sha256
from .errors import T2IError
from .manifest import MANIFEST_NAME, find_manifests, load_manifest, open_shard_sets, open_remote_set, shard_path
from .remote import RemoteShardSet, ShardMissing, StoreUnreachable, is_url, local_or_url
from .shard_cache import ShardCache
from .tario import iter_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardCheck:
    """One shard's status (``ok``, ``content-ok``, ``mismatch``, ``unreadable``, ``missing``,
    ``extra``) with what was found."""

    name: str
    status: str
    detail: str = ""


def content_record(path: Path) -> dict:
    """Decode a shard and return its content digest, sample count and first/last key."""
    h, n, first, last = ContentHasher(), 0, None, None
    for sample in iter_samples(path):
        key = sample["__key__"]
        for ext, data in sample.items():
            if ext != "__key__":
                h.update(f"{key}.{ext}", canonical_field(ext, data, f"{path}: {key}.{ext}"))
        first, last, n = first or key, key, n + 1
    return {"content_digest": h.hexdigest(), "samples": n, "first_key": first, "last_key": last}


def verify_shard(expected: dict, path: Path, deep: bool = False) -> ShardCheck:
    """``t2i verify``'s finding about one shard (a status, never an exception for bad data):
    ``expected`` is its manifest record, ``deep`` decodes it even when its sha256 matches."""
    name = expected["name"]
    if not path.is_file():
        return ShardCheck(name, "missing", f"{path} does not exist")
    sha = file_sha256(path)
    if sha == expected["sha256"] and not deep:
        return ShardCheck(name, "ok")
    try:
        rec = content_record(path)
    except Exception as e:  # any decode failure is a finding about the data, not a crash
        return ShardCheck(name, "unreadable", f"{type(e).__name__}: {e}")
    diffs = [f"{k} {rec[k]!r} != {expected[k]!r}" for k in ("samples", "first_key", "last_key", "content_digest") if rec[k] != expected[k]]
    if diffs:
        return ShardCheck(name, "mismatch", "; ".join(diffs))
    if sha == expected["sha256"]:
        return ShardCheck(name, "ok", "content checked")
    return ShardCheck(name, "content-ok", f"bytes differ (sha256 {sha[:12]}…), decoded content identical: another encoder version")


def verify_manifest(manifest_path: Path, data_dir: Path | None = None, deep: bool = False) -> list[ShardCheck]:
    """Every shard of a manifest checked (``data_dir``: where the shards are, when the manifest
    lies elsewhere), plus ``extra`` for shard files of the set that the manifest does not list."""
    manifest = load_manifest(manifest_path)
    data_dir = data_dir or manifest_path.parent
    if not data_dir.is_dir():
        raise T2IError(f"{data_dir}: no such shard directory")
    checks = [verify_shard(s, shard_path(data_dir, s["name"], str(manifest_path)), deep) for s in manifest["shards"]]
    listed = {s["name"] for s in manifest["shards"]}
    prefix = f"{manifest.get('dataset')}-{manifest.get('split')}-"
    for extra in sorted(p.name for p in data_dir.glob(f"{prefix}*.tar")):
        if extra not in listed:
            checks.append(ShardCheck(extra, "extra", "a shard file the manifest does not list"))
    return checks


def verify_remote(rs: RemoteShardSet, deep: bool = False) -> list[ShardCheck]:
    """Every shard of a set in a store checked as ``verify_manifest`` checks a local one (the
    next shards downloading while one is hashed); a shard the store lacks is ``missing``, one it
    does not serve after ``remote.RETRIES`` tries ``unreadable``."""
    checks = []
    shards = rs.manifest["shards"]
    for i, s in enumerate(shards):
        name = s["name"]
        rs.prefetch([r["name"] for r in shards[i + 1 : i + 3]])
        try:
            with rs.downloaded(name) as path:
                checks.append(verify_shard(s, path, deep))
        except ShardMissing:
            checks.append(ShardCheck(name, "missing", f"{rs.where(name)} is not in the store"))
        except StoreUnreachable as e:
            checks.append(ShardCheck(name, "unreadable", str(e)))
    names = rs.list_names()
    if names is None:
        log.warning("%s: the store cannot list this folder; shard files the manifest does not list were not looked for", rs.url)
    listed = {s["name"] for s in shards}
    prefix = f"{rs.manifest.get('dataset')}-{rs.manifest.get('split')}-"
    for extra in names or ():
        if extra.startswith(prefix) and extra not in listed:
            checks.append(ShardCheck(extra, "extra", "a shard file the manifest does not list"))
    return checks


def verify_path(path: str | Path, data: str | Path | None = None, deep: bool = False,
                cache: ShardCache | None = None) -> list[tuple[Path | str, Path | str, list[ShardCheck]]]:
    """``t2i verify PATH [--data DIR]``: (manifest, data folder, checks) per manifest at ``path``
    (a manifest, a split folder or a build folder of splits). With ``data`` and several manifests,
    split ``s`` is looked for in ``data / s``'s folder name, as a build writes it.

    ``path`` or ``data`` may be a URL (``remote.py``; shards downloaded into ``cache``, the
    default ``shard_cache.ShardCache`` when None): then the manifest and the data folder are URLs."""
    if is_url(path):
        path = local_or_url(path)
        if isinstance(path, str):
            if data is not None:
                raise T2IError(f"--data {data}: give it with a local manifest; {path} is the set itself, its manifest beside its shards")
            return [(f"{ss.remote.url}/{MANIFEST_NAME}", ss.remote.url, verify_remote(ss.remote, deep)) for ss in open_shard_sets(path, cache)]
    if data is not None and is_url(data):
        data = local_or_url(data)
    out = []
    manifests = find_manifests(path)
    for mpath in manifests:
        if isinstance(data, str):  # a store holds the shards of a local (e.g. committed) manifest
            url = data.rstrip("/") + (f"/{mpath.parent.name}" if len(manifests) > 1 else "")
            out.append((mpath, url, verify_remote(open_remote_set(url, cache, load_manifest(mpath)).remote, deep)))
            continue
        data_dir = Path(data) if data else None
        if data_dir is not None and len(manifests) > 1:
            data_dir = data_dir / mpath.parent.name  # a build directory: one subfolder per split
        out.append((mpath, data_dir or mpath.parent, verify_manifest(mpath, data_dir, deep=deep)))
    return out
