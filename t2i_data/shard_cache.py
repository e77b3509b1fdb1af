"""The local cache of whole shards that sets read by URL go through (``remote.RemoteShardSet``).

Layout: ``<root>/T2I-SHARD-CACHE`` (the mark of a cache folder), one folder per set
``<root>/<16 hex digits of sha256(url)>/`` holding ``.t2i-cache-set.json`` (the URL), the shards
under their manifest names, ``.used/<name>`` (last use, nanoseconds) and ``.locks/<name>`` (one
download per shard across processes).

The cache has a size limit. Eviction drops the least recently used shards first, and only:
- shards in the cache's own set folders (those with the mark), never a file elsewhere: local
  shard sets and ``file://`` URLs are read in place, and a cache folder that holds anything the
  cache did not put there is refused (mosaicml/streaming users lost their local-only shards to a
  cache that evicted from the folder they pointed it at);
- shards no reader holds: a reader pins a shard (``remote.RemoteShardSet.pinned``) with a shared
  ``flock`` on the open file for as long as it reads it, and the evictor takes an exclusive
  ``flock`` without waiting before it unlinks, so a shard in use in any process (DataLoader
  workers, other ranks on the machine) is skipped. When only pinned shards are left the cache goes
  over its limit with a warning rather than stop a run.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

from .errors import T2IError

log = logging.getLogger(__name__)

CACHE_MARK = "T2I-SHARD-CACHE"  # in the cache's root: this folder is a t2i shard cache
CACHE_SET_MARK = ".t2i-cache-set.json"  # in each set folder of the cache: the URL its shards came from
DEFAULT_CACHE_BYTES = 20 * 10**9
_PART = itertools.count()


def parse_size(text) -> int:
    """Bytes from ``"20G"``, ``"500M"``, ``"1.5T"``, ``"4096"`` (decimal units, as disks are sold)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)[bB]?\s*", str(text))
    if m is None:
        raise T2IError(f"cache size {text!r} is not a size such as 20G, 500M or 4096")
    return int(float(m.group(1)) * 10 ** (3 * " kmgt".index(m.group(2).lower() or " ")))


def default_cache_dir() -> Path:
    """``$T2I_CACHE_DIR``, else ``$XDG_CACHE_HOME/t2i/shards``, else ``~/.cache/t2i/shards``."""
    if os.environ.get("T2I_CACHE_DIR"):
        return Path(os.environ["T2I_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t2i" / "shards"


def default_cache_bytes() -> int:
    """``$T2I_CACHE_BYTES`` (e.g. ``50G``), else ``DEFAULT_CACHE_BYTES`` (20 GB)."""
    return parse_size(os.environ["T2I_CACHE_BYTES"]) if os.environ.get("T2I_CACHE_BYTES") else DEFAULT_CACHE_BYTES


def _lock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how)
        return True
    except BlockingIOError:
        return False


class ShardCache:
    """A folder of whole shards downloaded from stores, at most ``limit_bytes`` of them.

    ``root``: ``default_cache_dir()`` when None; created with a ``CACHE_MARK`` file, and refused
    (``T2IError``) when it already holds files without one: the cache deletes only what it put
    there, so it never shares a folder with anything else. ``limit_bytes``:
    ``default_cache_bytes()`` when None. One cache may serve many sets (one subfolder each, named
    by a hash of the set's URL) and many processes at once; ``evicted`` counts the shards this
    process removed to make room."""

    def __init__(self, root: str | os.PathLike | None = None, limit_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.limit = int(limit_bytes) if limit_bytes is not None else default_cache_bytes()
        if self.limit <= 0:
            raise T2IError(f"cache limit {self.limit} bytes; give a positive size")
        self.evicted = 0
        self._claim()

    def __getstate__(self) -> dict:
        return {"root": self.root, "limit": self.limit, "evicted": 0}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _claim(self) -> None:
        root = self.root
        if os.path.islink(root):
            raise T2IError(f"{root}: the shard cache folder is a symlink; give the folder itself")
        if (root / CACHE_MARK).is_file():
            return
        if root.exists() and not root.is_dir():
            raise T2IError(f"{root}: a file, not a folder; the shard cache needs a folder of its own: give an empty or new "
                           f"folder (T2I_CACHE_DIR)")
        if root.exists() and any(root.iterdir()):
            raise T2IError(f"{root}: not a t2i shard cache (no {CACHE_MARK} file) and not empty; the cache deletes the shards "
                           f"it evicts, so it keeps a folder of its own: give an empty or new folder (T2I_CACHE_DIR)")
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / CACHE_MARK).write_text("A t2i shard cache: whole shards downloaded from stores, evicted least recently used "
                                           "first. Safe to delete.\n")
        except OSError as e:
            raise T2IError(f"{root}: cannot make the shard cache folder ({e.strerror or e}); set T2I_CACHE_DIR to a "
                           "writable folder") from None

    def set_dir(self, url: str) -> Path:
        """The cache's folder for the shard set at ``url`` (created, with its ``CACHE_SET_MARK``)."""
        d = self.root / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
        mark = d / CACHE_SET_MARK
        if not mark.is_file():
            (d / ".used").mkdir(parents=True, exist_ok=True)
            (d / ".locks").mkdir(exist_ok=True)
            tmp = d / f"{CACHE_SET_MARK}.{os.getpid()}.{next(_PART)}.part"
            tmp.write_text(json.dumps({"url": url}) + "\n")
            os.replace(tmp, mark)
        return d

    def _entries(self) -> list[tuple[int, int, Path, Path]]:
        """(last use in ns, bytes, shard, use mark) of every shard in the cache's own set folders."""
        out = []
        for d in self.root.iterdir():
            if not re.fullmatch(r"[0-9a-f]{16}", d.name) or os.path.islink(d) or not (d / CACHE_SET_MARK).is_file():
                continue  # only folders the cache made: nothing else is ever deleted
            for e in os.scandir(d):
                if not e.name.endswith(".tar") or e.name.startswith("."):
                    continue
                st = e.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                used = d / ".used" / e.name
                try:
                    when = os.stat(used).st_mtime_ns
                except FileNotFoundError:
                    continue  # no use mark: a file the cache did not download (put there by hand): never evicted
                out.append((when, st.st_size, Path(e.path), used))
        return out

    def usage(self) -> int:
        """Bytes of whole shards in the cache now."""
        return sum(e[1] for e in self._entries())

    def make_room(self, need: int, what: str) -> None:
        """Evict least recently used shards that no reader pins until ``need`` more bytes fit under
        the limit. ``T2IError`` when ``need`` alone exceeds it; a warning when pinned shards keep
        the cache over it (the download goes ahead: a run is not stopped for want of disk)."""
        if need > self.limit:
            raise T2IError(f"{what}: {need:,} bytes, more than the shard cache's limit of {self.limit:,} bytes ({self.root}); "
                           "raise the limit (T2I_CACHE_BYTES, or ShardCache(limit_bytes=...))")
        with _ROOT_LOCKS.setdefault(str(self.root), threading.Lock()), open(self.root / CACHE_MARK, "rb") as mark:
            fcntl.flock(mark.fileno(), fcntl.LOCK_EX)  # one evictor at a time across processes
            entries = sorted(self._entries(), key=lambda e: e[0])
            total = sum(e[1] for e in entries)
            pinned = 0
            for _, size, path, used in entries:
                if total + need <= self.limit:
                    break
                if self._evict(path, used):
                    total -= size
                    self.evicted += 1
                else:
                    pinned += 1
            if total + need > self.limit:
                log.warning("shard cache %s: %s bytes held with %s pinned shards in use; going over its limit of %s bytes "
                            "to fetch %s", self.root, f"{total:,}", pinned, f"{self.limit:,}", what)

    @staticmethod
    def _evict(path: Path, used: Path) -> bool:
        """Unlink ``path`` unless a reader holds it (a shared flock); True when it was removed."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            if not _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                return False  # pinned by a reader in this or another process
            try:
                if os.fstat(fd).st_ino != os.lstat(path).st_ino:
                    return False  # replaced since it was listed: leave the new one
            except FileNotFoundError:
                return True
            os.unlink(path)
            log.info("shard cache: evicted %s", path)
            try:
                os.unlink(used)
            except FileNotFoundError:
                pass
            return True
        finally:
            os.close(fd)


_ROOT_LOCKS: dict[str, threading.Lock] = {}
