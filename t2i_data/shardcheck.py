"""The one check of a shard file against its manifest record (size, then sha256), and the
process's memory of the file versions that passed it.

Every reader in the project checks a shard through ``check_shard_file``, directly or through
``check_shard_once`` (``manifest.checked_shard_path``, the streams' ``stream.check_shard_cached``,
``remote.RemoteShardSet``'s cache). ``manifest`` re-exports these names; they live here so that
``remote``, which ``manifest`` uses, can check a cached copy without importing ``manifest``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .digest import file_sha256
from .errors import T2IError


def check_shard_file(path: Path, record: dict, data=None) -> str:
    """Check one shard file against its manifest record: size first, then sha256 of the bytes
    (``data``: the file's bytes or its mapping when the caller has them, so hashing faults in the
    pages the caller reads next; hashlib releases the GIL over the whole buffer). Returns the sha256.

    Raises ``T2IError`` naming the shard with expected and actual values when they differ;
    ``OSError`` (missing, unreadable) passes through for the caller to word or to count the shard
    as lost (the streams). Every reader in the project checks a shard through this function."""
    expected = record.get("sha256")
    if not expected or "bytes" not in record:
        raise T2IError(f"{path}: the manifest records no sha256 or size for this shard; rebuild the set's manifest")
    size = os.stat(path).st_size
    if size != record["bytes"]:
        raise T2IError(f"{path}: {size} bytes where the manifest says {record['bytes']} (sha256 {expected}), so the size "
                       f"does not match the manifest: the shard is truncated or was replaced; run `t2i verify {path.parent}` and rebuild or re-fetch it")
    actual = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    if actual != expected:
        raise T2IError(f"{path}: sha256 {actual}, the manifest says {expected}, so the checksum does not match the manifest: "
                       f"the shard was replaced, damaged or comes from another set; run `t2i verify {path.parent}` and rebuild or re-fetch it")
    return actual


# (path, device, inode, size, mtime_ns, ctime_ns) -> sha256 of a file this process has hashed.
# Any write to the file changes its ctime (which no user call can set back), so a hit means the
# bytes hashed then are the bytes there now; a reader reopening a shard pays a stat instead of a
# hash. ``stream.check_shard_cached`` and ``remote`` (which hashes a download as it arrives) share it.
_VERIFIED: dict[tuple, str] = {}


def stat_key(path, st: os.stat_result | None = None) -> tuple:
    """The version of a file ``_VERIFIED`` knows it by."""
    st = st or os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def remember_verified(path, sha256: str) -> None:
    """Record that the bytes now at ``path`` have ``sha256`` (the caller hashed exactly them)."""
    _VERIFIED[stat_key(path)] = sha256


def check_shard_once(path: Path, record: dict, data=None) -> None:
    """``check_shard_file`` once per version of a file in this process (``_VERIFIED``)."""
    st = os.stat(path)
    key = stat_key(path, st)
    if record.get("sha256") and st.st_size == record.get("bytes") and _VERIFIED.get(key) == record["sha256"]:
        return
    check_shard_file(path, record, data)
    _VERIFIED[key] = record["sha256"]
