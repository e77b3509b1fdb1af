"""Shard sets by URL: ``s3://``, ``gs://``, ``https://`` (any fsspec protocol) and ``file://``.

A shard-set URL names a split folder in a store, its ``manifest.json`` beside the shards (or the
manifest itself, or a build folder of split subfolders). The manifest is read through fsspec and
checked exactly as a local one (``manifest.parse_manifest``: shard names are the project's own
pattern, so no name can leave the folder; here each is also checked to be one plain name before it
becomes a URL or a cache path). A ``file://`` URL is a local folder: it is read in place, never
copied, and never enters the cache.

Every other shard is read from a local cache of whole shards (``shard_cache.ShardCache``): a
download goes to ``<cache>/<url hash>/<name>.<pid>.<n>.part``, hashed as it arrives, and only when its size and
sha256 match the manifest is it renamed to ``<name>``; a mismatching download is deleted and
reported (``T2IError``), never used. The readers then check what they read against the manifest
as for a local set (``shardcheck.check_shard_once``; the download's hash counts, so a shard is
hashed once per process, not twice).

The cache (``shard_cache.ShardCache``) has a size limit and evicts least recently used shards,
never one a reader pins (in any process) and never a file it did not make.

Prefetch (``RemoteShardSet.prefetch``) downloads the next shards of a reader's plan in a small
thread pool while it reads the current one; ``bench/bench_remote.py`` measures the share of step
time a training loop waits on a slow store with and without it.

Errors are one ``T2IError`` line: a missing manifest or shard (404, no such key:
``ShardMissing``, also a ``FileNotFoundError``, so a stream counts a shard that vanished mid-run as
lost, as for a local one), a store that does not answer after ``RETRIES`` tries
(``StoreUnreachable``, also an ``OSError``), a protocol whose fsspec implementation is not
installed (naming the package: s3fs, gcsfs, aiohttp, ...), a sha256 or size mismatch.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import re
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from .errors import T2IError
from .shard_cache import ShardCache
from .shardcheck import check_shard_once, remember_verified
from .sources.records import plain_relative

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"  # as manifest.MANIFEST_NAME (not imported: manifest imports this module)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]+://")
DEFAULT_PREFETCH = 2  # shards ahead of the one being read
PREFETCH_THREADS = 2
RETRIES = 3  # tries per request on errors other than "not found"
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 256 << 20
MAX_VERIFY_BYTES = 1 << 40  # manifest.MAX_SHARD_BYTES: what verify reads of a shard whose size differs
# fsspec protocol -> the package that implements it, for the message when it is missing
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub", "sftp": "paramiko", "ssh": "paramiko"}
_PART = itertools.count()


class ShardMissing(T2IError, FileNotFoundError):
    """A manifest or shard the store does not have (HTTP 404, no such key)."""


class StoreUnreachable(T2IError, OSError):
    """The store did not answer (connection refused, timeout, server error) after ``RETRIES`` tries."""


class _Local(Exception):
    """An error writing the local copy (disk full, permissions): raised as the ``OSError`` it
    wraps, never retried nor mistaken for the store's."""


def is_url(location) -> bool:
    """True for a string with a scheme (``s3://``, ``https://``, ``file://``, ``memory://``...);
    a ``Path`` or a plain path is never a URL."""
    return isinstance(location, str) and _URL.match(location) is not None


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``);
    ``T2IError`` for a file URL naming another host."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise T2IError(f"{url}: a file:// URL on host {parts.netloc!r}; t2i reads file:// URLs on this machine only "
                       "(file:///absolute/path)")
    return Path(unquote(parts.path))


def local_or_url(location):
    """``location`` as a ``Path`` when it is local (a path, or a ``file://`` URL), else the URL string.
    ``T2IError`` for a URL with a query string or a fragment: a set's files are fetched by their
    own paths under it (``.../manifest.json``, ``.../<shard>.tar``), which a query (a signed URL's
    signature, say) placed after the folder would not follow."""
    if is_url(location):
        parts = urlsplit(location)
        if parts.query or parts.fragment:
            extra = "?" + parts.query if parts.query else "#" + parts.fragment
            raise T2IError(f"{location}: a shard-set URL names a folder, without a query string or fragment ({extra}); "
                           "t2i fetches manifest.json and each shard under it by path: give the folder's URL, with "
                           "credentials in the store's own settings (for s3://, AWS_* variables or ~/.aws)")
        if location.lower().startswith("file://"):
            return file_url_path(location)
        return location.rstrip("/")
    return Path(location)


def _fsspec(url: str):
    try:
        import fsspec
    except ModuleNotFoundError:
        raise T2IError(f"{url}: reading shard sets by URL needs fsspec, which is not installed: pip install fsspec") from None
    return fsspec


def url_to_fs(url: str):
    """(fsspec filesystem, path in it) for ``url``; ``T2IError`` naming the package to install
    when the protocol's implementation is missing, or the protocol is unknown to fsspec."""
    fsspec = _fsspec(url)
    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        pkg = PACKAGES.get(protocol)
        name = f"the {pkg} package" if pkg else "its fsspec implementation"
        cmd = f": pip install {pkg}" if pkg else ""
        raise T2IError(f"{url}: reading {protocol}:// URLs needs {name}, which is not installed{cmd} ({e})") from None
    except ValueError as e:
        if "protocol" not in str(e).lower():
            raise
        raise T2IError(f"{url}: fsspec knows no {protocol}:// protocol ({e}); give an s3://, gs://, https:// or file:// URL, "
                       "or install the package that implements it") from None


def _retrying(what: str, fn, *args, **kw):
    """``fn(*args, **kw)``, tried ``RETRIES`` times on errors other than "not found" and a missing
    package; ``ShardMissing`` / ``StoreUnreachable`` with one line naming ``what`` otherwise."""
    for attempt in range(RETRIES):
        try:
            return fn(*args, **kw)
        except (T2IError, ImportError, TypeError, AttributeError, NameError, AssertionError):
            raise  # a missing package, or a bug here: not the store's doing
        except _Local as e:
            raise e.args[0] from None
        except FileNotFoundError:
            raise ShardMissing(f"{what}: not found in the store (no such file or key; HTTP 404); check the URL, "
                               "or restore it in the store") from None
        except Exception as e:  # aiohttp / botocore / gcsfs errors share no base class but Exception
            if attempt == RETRIES - 1:
                raise StoreUnreachable(f"{what}: the store did not answer ({type(e).__name__}: {e}) after {RETRIES} tries; "
                                       "check the URL and the network, then rerun") from None
            time.sleep(0.1 * 3**attempt)


def _plain_name(name, where: str) -> str:
    """A manifest's shard name as one plain file name: no '/', no '..', not absolute."""
    try:
        plain_relative(name, "shard name")
    except ValueError as e:
        raise T2IError(f"{where}: {e}; a shard must be a file inside its set's folder (DESIGN.md, 'Trust')") from None
    if "/" in name:
        raise T2IError(f"{where}: shard name {name!r} names a subfolder; a shard must be a file in its set's folder (DESIGN.md, 'Trust')")
    return name


def find_remote_manifests(url: str) -> list[tuple[str, bytes]]:
    """(split folder URL, manifest bytes) at ``url``: a split folder, its manifest.json, or a build
    folder whose subfolders hold one each (listed through fsspec, where the store can list)."""
    url = url.rstrip("/")
    if url.endswith("/" + MANIFEST_NAME):
        url = url[: -len(MANIFEST_NAME) - 1]
    fs, root = url_to_fs(url)
    try:
        return [(url, _read_manifest(fs, f"{root}/{MANIFEST_NAME}", f"{url}/{MANIFEST_NAME}"))]
    except ShardMissing:
        pass
    unlisted = ""
    try:
        children = sorted(e["name"] for e in fs.ls(root, detail=True) if e.get("type") == "directory")
    except Exception as e:  # a store that cannot list (a plain HTTP server without an index page): said in the error below
        children, unlisted = [], f"; its subfolders could not be listed ({type(e).__name__}: {' '.join(str(e).split())})"
    found = []
    for child in children:
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if not name or name.startswith("."):
            continue
        try:
            found.append((f"{url}/{name}", _read_manifest(fs, f"{root}/{name}/{MANIFEST_NAME}", f"{url}/{name}/{MANIFEST_NAME}")))
        except ShardMissing:
            continue
    if not found:
        raise ShardMissing(f"{url}/{MANIFEST_NAME}: not found in the store (nor a {MANIFEST_NAME} in a subfolder{unlisted}); give the "
                           f"URL of a shard set's folder (the one holding its shards and {MANIFEST_NAME})")
    return found


def _open_kw(fs, size: int) -> dict:
    """Arguments of ``fs.open`` that read a file of at most ``size`` bytes in one request. For
    fsspec's HTTP filesystem: ``block_size=0`` streams the body (no range requests), and a size
    skips its HEAD request, whose every failure (connection refused included) it reports as
    ``FileNotFoundError``: the GET's own errors tell a 404 from a store that does not answer."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return {"block_size": 0, "size": size} if {"http", "https"} & set(protocols) else {}


def _read_manifest(fs, rpath: str, what: str) -> bytes:
    def read():
        parts, n = [], 0
        with fs.open(rpath, "rb", **_open_kw(fs, MAX_MANIFEST_BYTES + 1)) as f:
            while n <= MAX_MANIFEST_BYTES:  # a streamed HTTP body gives what has arrived per read (96 KiB seen), not all
                chunk = f.read(MAX_MANIFEST_BYTES + 1 - n)
                if not chunk:
                    break
                parts.append(chunk)
                n += len(chunk)
        data = b"".join(parts)
        if len(data) > MAX_MANIFEST_BYTES:
            raise T2IError(f"{what}: more than {MAX_MANIFEST_BYTES:,} bytes; not a t2i manifest")
        return data

    return _retrying(what, read)


class RemoteShardSet:
    """One split of a shard set in a store, read through a ``shard_cache.ShardCache``.

    ``url``: the split folder's URL; ``manifest``: its checked manifest (``manifest.parse_manifest``
    of ``read_manifest(url)``'s bytes: ``manifest.open_remote_set`` does both). ``dir`` is the
    cache folder its shards land in. ``fetch(name)`` gives a cached, checked local copy; ``pinned(name)`` the same, held against eviction for a
    ``with`` block; ``prefetch(names)`` starts downloads in a thread pool of ``threads``.
    ``stats`` counts this process's downloads, bytes, cache hits and refused downloads."""

    remote = True

    def __init__(self, url: str, manifest: dict, cache: ShardCache | None = None, threads: int = PREFETCH_THREADS) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/" + MANIFEST_NAME):
            self.url = self.url[: -len(MANIFEST_NAME) - 1]
        self.fs, self.root = url_to_fs(self.url)
        self.manifest = manifest
        self.records = {_plain_name(s["name"], self.url): s for s in manifest["shards"]}
        self.cache = cache if cache is not None else ShardCache()
        self.dir = self.cache.set_dir(self.url)
        self.threads = threads
        self.stats = {"downloads": 0, "bytes": 0, "hits": 0, "refused": 0, "prefetch_failed": 0}
        self._init_process()

    def _init_process(self) -> None:
        self._pid = os.getpid()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_locks", "_guard", "_pool", "_pending", "fs")}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fs = None
        self._init_process()

    def _here(self) -> None:
        """After a fork (DataLoader workers), fresh locks, pool and filesystem: an HTTP session and
        its event loop do not survive into a child."""
        if self._pid != os.getpid() or self.fs is None:
            self._init_process()
            self.fs, _ = url_to_fs(self.url)

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def record(self, name: str) -> dict:
        try:
            return self.records[name]
        except KeyError:
            raise T2IError(f"{self.url}: its manifest lists no shard {name!r}") from None

    # --- fetching ---------------------------------------------------------------------------

    def fetch(self, name: str) -> Path:
        """The local path of shard ``name``: from the cache when a checked copy is there, else
        downloaded, checked against the manifest (size and sha256) and moved into the cache.
        ``ShardMissing`` / ``StoreUnreachable`` / ``T2IError`` (mismatch) otherwise."""
        self._here()
        rec = self.record(name)
        path = self.dir / name
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one download per shard in this process; a prefetch in flight is waited for
            if self._cached(path, rec):
                self.stats["hits"] += 1
                return path
            with open(self.dir / ".locks" / name, "a+b") as lk:  # ...and across processes
                fcntl.flock(lk.fileno(), fcntl.LOCK_EX)
                if self._cached(path, rec):
                    self.stats["hits"] += 1
                    return path
                self.cache.make_room(rec["bytes"], self.where(name))
                self._download(name, rec, path)
        return path

    def _touch(self, name: str) -> None:
        """Mark the shard used now (its ``.used/<name>``: touching the shard itself would change
        its ctime, and so its version for ``manifest.check_shard_once``). An explicit time keeps
        nanoseconds, where the kernel's own file times move in clock ticks."""
        used = self.dir / ".used" / name
        t = time.time_ns()
        try:
            os.utime(used, ns=(t, t))
        except FileNotFoundError:
            used.touch()
            os.utime(used, ns=(t, t))

    def _cached(self, path: Path, rec: dict) -> bool:
        """True when ``path`` holds the manifest's bytes (hashed once per version per process); a
        cached copy that differs is removed (it is the cache's own file) and False returned."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISREG(st.st_mode) and not (self.dir / ".used" / path.name).is_file():
            raise T2IError(f"{path}: a file the shard cache did not download, where it keeps {path.name}; the cache never "
                           f"deletes, replaces or uses a file it did not make: move it away, or set T2I_CACHE_DIR to another folder")
        if stat.S_ISREG(st.st_mode):
            try:
                check_shard_once(path, rec)
                self._touch(path.name)
                return True
            except FileNotFoundError:
                return False
            except T2IError as e:
                log.warning("%s: the cached copy differs from the manifest (%s); fetching it again", path, e)
        else:
            raise T2IError(f"{path}: not a regular file, where the shard cache keeps a downloaded shard; the cache folder was "
                           f"changed by hand: remove {self.dir} and rerun")
        if ShardCache._evict(path, self.dir / ".used" / path.name):
            return False
        raise T2IError(f"{path}: a cached copy that differs from its manifest is in use by another reader; rerun when it is done")

    def _download(self, name: str, rec: dict, dest: Path) -> None:
        """Stream ``name`` into ``dest`` (``.part`` first, renamed once size and sha256 match)."""
        part = dest.with_name(f"{name}.{os.getpid()}.{next(_PART)}.part")
        what = self.where(name)
        tries = 0
        while True:
            tries += 1
            try:
                sha, size = _retrying(what, self._copy, name, rec, part)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            if size == rec["bytes"] and sha == rec["sha256"]:
                break
            part.unlink(missing_ok=True)
            self.stats["refused"] += 1
            if size < rec["bytes"] and tries < RETRIES:  # a transfer cut short: try again
                log.warning("%s: %d of %d bytes arrived; fetching it again", what, size, rec["bytes"])
                continue
            raise T2IError(f"{what}: the store sent {size:,} bytes with sha256 {sha}, the manifest says {rec['bytes']:,} bytes "
                           f"with sha256 {rec['sha256']}; the download was deleted and not used: the store's copy was replaced, "
                           f"damaged or belongs to another set; fix the store (t2i verify {self.url} lists every problem)")
        self._touch(name)  # the use mark first: a shard file without one is never the cache's (evicted or replaced)
        os.replace(part, dest)
        remember_verified(dest, rec["sha256"])  # hashed as it arrived: the readers' check need not hash it again
        self.stats["downloads"] += 1
        self.stats["bytes"] += size

    def _copy(self, name: str, rec: dict, part: Path) -> tuple[str, int]:
        """One try: the shard's bytes into ``part`` (at most one byte past the manifest's size), hashed."""
        h, n, limit = hashlib.sha256(), 0, rec["bytes"]
        try:
            out = open(part, "wb")
        except OSError as e:
            raise _Local(e) from None
        with out, self.fs.open(f"{self.root}/{name}", "rb", **_open_kw(self.fs, max(limit, 1))) as src:
            while True:
                chunk = src.read(min(CHUNK, limit + 1 - n))
                if not chunk:
                    break
                n += len(chunk)
                h.update(chunk)
                try:
                    out.write(chunk)
                except OSError as e:
                    raise _Local(e) from None
                if n > limit:
                    break  # longer than the manifest says: no need to read the rest
        return h.hexdigest(), n

    @contextmanager
    def pinned(self, name: str) -> Iterator[Path]:
        """The shard's local path, fetched if needed, held against eviction (a shared flock on
        the open file) until the block ends, in this process and every other."""
        for _ in range(8):
            path = self.fetch(name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue  # evicted between the fetch and the open: fetch again
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                same = os.fstat(fd).st_ino == os.lstat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                yield path
            finally:
                os.close(fd)
            return
        raise T2IError(f"{self.where(name)}: evicted each time it was fetched; the shard cache ({self.cache.root}) is too "
                       f"small for the readers sharing it: raise its limit (T2I_CACHE_BYTES)")

    def prefetch(self, names) -> list[Future]:
        """Start downloading ``names`` (those not yet cached) in the background; returns their
        futures. A failed prefetch is only logged: the reader's own ``fetch`` retries and raises."""
        self._here()
        out = []
        for name in names:
            with self._guard:
                fut = self._pending.get(name)
                if fut is not None and not fut.done():
                    out.append(fut)
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="t2i-prefetch")
                fut = self._pool.submit(self._prefetch_one, name)
                self._pending[name] = fut
            out.append(fut)
        return out

    def _prefetch_one(self, name: str) -> None:
        try:
            self.fetch(name)
        except Exception as e:  # the reader's fetch of the same shard raises it where it is needed: counted, not printed
            self.stats["prefetch_failed"] += 1
            log.debug("%s: prefetch failed (%s)", self.where(name), e)

    def wait_prefetched(self) -> None:
        """Wait for every prefetch started in this process (tests and benchmarks)."""
        with self._guard:
            pending = list(self._pending.values())
        for f in pending:
            f.result()

    def list_names(self) -> list[str] | None:
        """The ``.tar`` file names in the store's folder, or None when the store cannot list it."""
        self._here()
        try:
            entries = self.fs.ls(self.root, detail=False)
        except Exception:
            return None
        return sorted(n for n in (e.rstrip("/").rsplit("/", 1)[-1] for e in entries) if n.endswith(".tar"))

    @contextmanager
    def downloaded(self, name: str) -> Iterator[Path]:
        """For ``t2i verify``: a local copy of the shard whatever its bytes. A copy that matches
        the manifest is kept in the cache (pinned for the block); one that differs is kept in a
        ``.part`` file for the block, then deleted. ``ShardMissing`` when the store lacks it."""
        self._here()
        rec = self.record(name)
        pin = self.pinned(name)
        try:
            path = pin.__enter__()
        except (ShardMissing, StoreUnreachable):
            raise
        except T2IError:  # a mismatch: fetch it again without the check, for verify to say what differs
            pin = None
        if pin is not None:
            try:
                yield path
            finally:
                pin.__exit__(None, None, None)
            return
        part = self.dir / f"{name}.{os.getpid()}.{next(_PART)}.part"
        try:
            _retrying(self.where(name), self._copy, name, dict(rec, bytes=MAX_VERIFY_BYTES), part)
            yield part
        finally:
            part.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the prefetch threads (waiting for downloads in flight)."""
        if getattr(self, "_pool", None) is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=True)
            self._pool = None


def read_manifest(url: str) -> tuple[str, bytes]:
    """(the split folder's URL, the bytes of its manifest.json) for a split folder or manifest URL."""
    url = url.rstrip("/")
    if url.endswith("/" + MANIFEST_NAME):
        url = url[: -len(MANIFEST_NAME) - 1]
    fs, root = url_to_fs(url)
    return url, _read_manifest(fs, f"{root}/{MANIFEST_NAME}", f"{url}/{MANIFEST_NAME}")
