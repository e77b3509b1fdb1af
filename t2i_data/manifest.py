"""Manifests: the contract between stages (DESIGN.md, "Formats").

``manifest.json`` sits beside its shards, written with sorted keys. Its ``digest`` identifies the
data, not the bytes: it covers everything except the shards' file sha256 and sizes and the
encoder versions, so a shard set rebuilt with another zlib keeps its digest (and its aligned
derived sets stay valid) while ``t2i verify`` still reports the byte difference.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .digest import canonical_json
from .errors import T2IError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_BYTE_LEVEL_SHARD_FIELDS = ("sha256", "bytes")


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


def load_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise T2IError(f"{path}: no manifest here; build the shard set first or point at its manifest.json") from None
    except json.JSONDecodeError as e:
        raise T2IError(f"{path}: not valid JSON ({e}); the manifest is damaged, rebuild the shard set") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise T2IError(f"{path}: manifest format_version {version!r}, this t2i reads {FORMAT_VERSION}")
    if manifest.get("digest") != manifest_digest(manifest):
        raise T2IError(f"{path}: the manifest's digest does not match its content; it was edited by hand or damaged")
    return manifest


def find_manifests(path: str | os.PathLike) -> list[Path]:
    """A manifest file, a shard directory holding one, or a build directory of split subfolders."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / MANIFEST_NAME).is_file():
        return [path / MANIFEST_NAME]
    found = sorted(path.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise T2IError(f"{path}: no {MANIFEST_NAME} in it or in its subfolders; is this a shard set?")
    return found
