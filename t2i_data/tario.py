"""Deterministic WebDataset tar shards: a fast writer and a streaming reader.

``tarfile.addfile`` costs ~150 µs per member; a ustar header is 512 fixed bytes, so this
writer builds it from a template (fixed mode 0644, uid/gid 0, empty user names, mtime 0) and
writes raw bytes, ~4 µs per member. Headers are byte-identical to
``tarfile.TarInfo.tobuf(tarfile.USTAR_FORMAT)`` for the same name and size (tested).

A shard is written under ``<name>.partial`` and renamed when closed, so a final name always
means a complete shard; a crash leaves only a ``.partial`` file that the next run overwrites.

Beside each shard the writer leaves an offset index, ``.index/<name>.json`` (member names, data
offsets, sizes and the byte sum of each header, plus the shard's size and sha256), as mosaicml/streaming
keeps an index beside its shards: a reader that trusts it slices members out of the file's bytes
instead of walking 512-byte headers in Python. ``member_table`` checks the index against the
file (size, the manifest's sha256 when given, every header's byte sum, vectorised) and falls
back to parsing the headers when the index is absent or stale. Plain tar tools ignore it.

A shard is input (DESIGN.md, "Trust"), so the reader believes nothing it has not checked:
every member is a regular file with a plain name ``<key>.<field>`` (no '/', no '..', no control
characters, none twice), every header's checksum holds, its size field is octal digits and the
member ends inside the file; anything else stops with one ``ShardError`` naming the shard (a
``T2IError``, so the command line prints one line; also a ``tarfile.ReadError``). The offset
index is a hint written beside the shard by whoever made the set: it is used only when it lies
inside the shard's folder and every entry matches the header it points at (name, size, the
offsets contiguous from the first header to the end-of-archive zeros), so an index can never
name a member the file does not hold, nor point outside it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .digest import ContentHasher, canonical_field
from .errors import T2IError
from .sources.records import confiner

log = logging.getLogger(__name__)

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default blocking factor; GNU tar and tarfile pad archives to it
_ZERO_BLOCK = bytes(BLOCK)
# ustar header after the size field: mtime 0, checksum placeholder, type '0', no link name,
# magic "ustar\0" + version "00", empty user/group names, no device numbers, empty prefix.
_MID = b"00000000000\x00" + b" " * 8 + b"0" + bytes(100) + b"ustar\x0000" + bytes(64)
_TAIL = bytes(8 + 8 + 155 + 12)  # device numbers left empty for regular files, as tarfile does
_MODE_IDS = b"0000644\x00" + b"0000000\x00" * 2
PARTIAL_SUFFIX = ".partial"
# Names the header layout below; bump it when the bytes this writer produces change, so that
# reruns do not reuse shards written by an older writer (it is part of every config digest).
WRITER_ID = "t2i-tar/1 ustar mode=0644 mtime=0 record=10240"
INDEX_DIR = ".index"
INDEX_FORMAT = "t2i-tar-index/1"
# a member name: a key and a field (``<key>.<field>``), no '/', no backslash, no control character
_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")
_OCTAL = re.compile(rb" *([0-7]*) *")


class ShardError(tarfile.ReadError, T2IError):
    """A shard that is not what this project writes, or is damaged: the message names the shard
    and what is wrong. A ``T2IError`` (the command line prints it and exits 2) and, for callers
    that read tar files, a ``tarfile.ReadError``."""


def check_member_name(name, where: str) -> str:
    """``name`` if it is a plain WebDataset member name ``<key>.<field>``; else ``ShardError``."""
    if not isinstance(name, str) or not name or _BAD_NAME_CHARS.search(name) or name.startswith(".") or "." not in name:
        raise ShardError(f"{where}: member {name!r} is not a plain <key>.<field> name (no '/', no '..', no control "
                         f"characters); the shard is damaged or was not written for t2i")
    return name


def index_path(shard: str | os.PathLike) -> Path:
    shard = Path(shard)
    return shard.parent / INDEX_DIR / f"{shard.name}.json"


def ustar_header(name: str, size: int) -> bytes:
    nb = name.encode("utf-8")
    if len(nb) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    if size >= 8**11:
        raise ValueError(f"tar member {name!r} is {size} bytes; ustar allows at most {8**11 - 1}")
    hdr = bytearray(nb.ljust(100, b"\0") + _MODE_IDS + b"%011o\x00" % size + _MID + _TAIL)
    hdr[148:156] = b"%06o\x00 " % sum(hdr)
    return bytes(hdr)


class TarWriter:
    """Writes one tar shard: samples ``{"__key__": k, ext: bytes, ...}`` as contiguous tar members
    (webdataset's ``TarWriter`` writes one tar too; its ``ShardWriter`` rotates many, which
    ``build.write_shards`` does here, one task per shard).

    A sample may carry ``"__content__": {ext: canonical bytes}`` for fields whose canonical form
    the producer already has (raw pixels), which saves decoding them again to hash them.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._f = open(self.partial, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self._content = ContentHasher()
        self._pos = 0
        self._members: tuple[list, list, list, list] = ([], [], [], [])
        self.samples = 0
        self.first_key: str | None = None
        self.last_key: str | None = None

    def _put(self, data: bytes) -> None:
        self._f.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key must not contain '.' or '/': {key!r}")
        if self.last_key is not None and key <= self.last_key:
            raise ValueError(f"keys must increase within a shard: {key!r} after {self.last_key!r}")
        content = sample.get("__content__", {})
        for ext, data in sample.items():
            if ext.startswith("__"):
                continue
            name = f"{key}.{ext}"
            hdr = ustar_header(name, len(data))
            for column, value in zip(self._members, (name, self._pos + BLOCK, len(data), header_sum(int(hdr[148:154], 8)))):
                column.append(value)
            self._put(hdr + data + bytes(-len(data) % BLOCK))
            self._content.update(name, content[ext] if ext in content else canonical_field(ext, data))
        self.first_key = self.first_key or key
        self.last_key = key
        self.samples += 1

    def close(self) -> dict:
        """Finish the archive, rename it to its final name, and return its record."""
        end = 2 * BLOCK
        self._put(bytes(end + (-(self._pos + end) % RECORD)))
        self._f.close()
        os.replace(self.partial, self.path)
        write_index(self.path, self._pos, self._sha.hexdigest(), *self._members)
        return {
            "name": self.path.name,
            "sha256": self._sha.hexdigest(),
            "bytes": self._pos,
            "content_digest": self._content.hexdigest(),
            "samples": self.samples,
            "first_key": self.first_key,
            "last_key": self.last_key,
        }

    def abort(self) -> None:
        self._f.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()


def header_sum(checksum: int) -> int:
    """The sum of all 512 bytes of a ustar header, from its checksum (which counts its own
    field as eight spaces; the field holds ``%06o\\0 ``)."""
    return checksum - 8 * 32 + sum(b"%06o\x00 " % checksum)


def byte_sums(rows: np.ndarray) -> np.ndarray:
    """Sum of each row of a (n, 8·k) uint8 array, eight bytes at a time: 16-bit lanes of uint64
    words (each lane at most k·510, so k ≤ 128 cannot carry into the next), then the four lanes."""
    w = np.ascontiguousarray(rows).view(np.uint64)
    mask = np.uint64(0x00FF00FF00FF00FF)
    t = ((w & mask) + ((w >> np.uint64(8)) & mask)).sum(axis=1, dtype=np.uint64)
    lane = np.uint64(0xFFFF)
    return (t & lane) + ((t >> np.uint64(16)) & lane) + ((t >> np.uint64(32)) & lane) + (t >> np.uint64(48))


def write_index(shard: Path, size: int, sha256: str, names: list, offsets: list, sizes: list, header_sums: list) -> None:
    """``.index/<shard>.json``, written atomically after the shard itself (sorted keys: same bytes each run)."""
    path = index_path(shard)
    path.parent.mkdir(exist_ok=True)
    doc = {"format": INDEX_FORMAT, "shard": shard.name, "bytes": size, "sha256": sha256,
           "names": names, "offsets": offsets, "sizes": sizes, "header_sums": header_sums}
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    os.replace(tmp, path)


def ensure_index(shard: str | os.PathLike, sha256: str) -> None:
    """Write the index of an existing plain-ustar shard that has none (a shard from an older writer)."""
    shard = Path(shard)
    if index_path(shard).exists():
        return
    data = shard.read_bytes()
    members = _parse_ustar(data, str(shard), offsets=True)
    if members is None:
        return  # pax / GNU headers: readers parse it with tarfile anyway
    names = [m[0] for m in members]
    offsets = [m[1] for m in members]
    sums = [header_sum(int(data[o - BLOCK + 148 : o - BLOCK + 154], 8)) for o in offsets]
    write_index(shard, len(data), sha256, names, offsets, [m[2] for m in members], sums)


def member_table(path: str | os.PathLike, data, sha256: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, data offsets, sizes) of a plain ustar shard's members, in archive order.

    From the offset index when it matches this file (its size, ``sha256`` when the caller knows
    the expected one, and every entry against the header it points at, checked in vectorised
    passes: ``_index_problem``); otherwise from the headers. ``data`` is the file's bytes (any
    buffer). Raises ``ShardError`` for a broken archive and ``ValueError`` for one that is not
    plain ustar (pax / GNU headers).

    This reads structure, not identity: the index's recorded sha256 only says which file it was
    written for. A caller that must know the file is the one its manifest describes hashes it
    first (``manifest.check_shard_file``), as every reader in this package does.
    """
    doc = _read_index(path)
    if doc is not None:
        try:
            problem = _index_problem(doc, path, data, sha256)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, UnicodeError) as e:
            problem = f"malformed ({type(e).__name__}: {e})"
        if problem is None:
            return list(doc["names"]), np.asarray(doc["offsets"], dtype=np.int64), np.asarray(doc["sizes"], dtype=np.int64)
        log.warning("%s: ignoring its offset index (%s); parsing the tar headers instead", path, problem)
    members = _parse_ustar(bytes(data), str(path), offsets=True)
    if members is None:
        raise ValueError(f"{path}: not a plain ustar shard (pax or GNU headers); rewrite it with t2i or read it with iter_samples")
    return ([m[0] for m in members], np.array([m[1] for m in members], dtype=np.int64),
            np.array([m[2] for m in members], dtype=np.int64))


def _read_index(path) -> dict | None:
    """The index document of a shard, or None when there is none, it is not JSON, or it (or its
    folder) is a symlink that leads out of the shard's folder."""
    path = Path(path)
    try:
        ipath = confiner(path.parent)(f"{INDEX_DIR}/{path.name}.json", "offset index")
    except ValueError as e:
        log.warning("%s: ignoring its offset index (%s)", path, e)
        return None
    try:
        doc = json.loads(Path(ipath).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _octal_columns(cols: np.ndarray) -> np.ndarray | None:
    """Values of fixed-width octal fields (n, k) of ASCII digits, or None if any byte is not one."""
    digits = cols.astype(np.int64) - 48
    if ((digits < 0) | (digits > 7)).any():
        return None
    return digits @ (8 ** np.arange(cols.shape[1] - 1, -1, -1, dtype=np.int64))


def _index_problem(doc: dict, path, data, sha256: str | None) -> str | None:
    """Why the index cannot be used for this file, or None: it must describe exactly the members
    the headers hold. Names, sizes and offsets are all checked against the headers (not only
    their byte sums), and the offsets must run contiguously from the first header to the
    end-of-archive zeros, so a hostile index can name no other member and reach no other byte."""
    if doc.get("format") != INDEX_FORMAT:
        return f"format {doc.get('format')!r}"
    if doc.get("shard") != Path(path).name:
        return f"it is the index of {doc.get('shard')!r}"
    if doc["bytes"] != len(data):
        return f"it describes {doc['bytes']} bytes, the file has {len(data)}"
    if sha256 is not None and doc["sha256"] != sha256:
        return "it describes another version of the shard (sha256 differs)"
    names = doc["names"]
    offsets = np.asarray(doc["offsets"], dtype=np.int64)
    sizes = np.asarray(doc["sizes"], dtype=np.int64)
    sums = np.asarray(doc["header_sums"], dtype=np.uint64)
    n = len(names)
    if not (isinstance(names, list) and offsets.shape == sizes.shape == sums.shape == (n,)):
        return "its columns differ in length"
    if not all(type(x) is str for x in names) or _BAD_NAME_CHARS.search("".join(names)) or len(set(names)) != n:
        return "it names members that are not plain <key>.<field> names, or one twice"
    if (sizes < 0).any():
        return "negative sizes"
    ends = offsets + sizes + (-sizes % BLOCK)
    if n and (offsets[0] != BLOCK or (offsets[1:] != ends[:-1] + BLOCK).any() or ends[-1] > len(data)):
        return "offsets that do not follow the members one after another inside the file"
    buf = np.frombuffer(data, dtype=np.uint8)
    end = int(ends[-1]) if n else 0
    if buf[end:].any():
        return "bytes after its last member that are not the end-of-archive zeros"
    if not n:
        return None
    heads = np.lib.stride_tricks.sliding_window_view(buf, BLOCK)[offsets - BLOCK]
    total = byte_sums(heads)
    if not np.array_equal(total, sums):
        return "its headers do not match the file's"
    try:
        packed = np.array(names, dtype=bytes)  # (n,) S<longest>, ASCII names (all of this project's)
    except UnicodeEncodeError:
        packed = np.array([x.encode("utf-8") for x in names], dtype=bytes)
    width = packed.dtype.itemsize
    if width > 100:
        return "it names a member longer than a ustar name"
    named = np.zeros((n, 100), np.uint8)
    named[:, :width] = packed.view(np.uint8).reshape(n, width)
    if not np.array_equal(heads[:, :100], named):
        return "its names differ from the headers'"
    if (named[:, 0] == 0).any() or (named[:, 0] == 46).any() or not (named == 46).any(axis=1).all():
        return "it names members that are not plain <key>.<field> names"
    if (heads[:, 345] != 0).any() or (heads[:, 257:262] != np.frombuffer(b"ustar", np.uint8)).any() \
            or not np.isin(heads[:, 156], (0, 48)).all():
        return "headers that are not plain ustar regular files"
    if heads[:, 135].any() or not np.array_equal(_octal_columns(heads[:, 124:135]), sizes):
        return "its sizes differ from the headers'"
    chk = _octal_columns(heads[:, 148:154])
    if chk is None or not np.array_equal(total.astype(np.int64) - heads[:, 148:156].sum(axis=1, dtype=np.int64) + 256, chk):
        return "a header checksum does not hold"
    return None


def iter_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) in archive order; raises ``ShardError`` on a broken archive.

    Plain ustar archives of regular files (what this project writes) are parsed directly from
    one read of the file, ~20x faster than ``tarfile``; any other header (pax, GNU long names)
    sends the whole archive through ``tarfile`` instead. Either way every name is checked
    (``check_member_name``), once, and links, directories and devices are refused."""
    data = Path(path).read_bytes()
    members = _parse_ustar(data, str(path))
    if members is None:
        yield from _iter_tarfile(path)
    else:
        yield from members


def _octal_field(field: bytes, what: str, where: str, pos: int) -> int:
    m = _OCTAL.fullmatch(field.split(b"\0", 1)[0])
    if m is None:
        raise ShardError(f"{where}: the tar header at byte {pos} has a {what} field {field!r} that is not octal digits; "
                         f"the shard is damaged or hostile")
    return int(m.group(1) or b"0", 8)


def _parse_ustar(data: bytes, where: str, offsets: bool = False) -> list[tuple] | None:
    """[(name, bytes)], or with ``offsets`` [(name, data offset, size)] without copying."""
    out, pos, n, seen = [], 0, len(data), set()
    view = memoryview(data)
    while pos + BLOCK <= n:
        hdr = data[pos : pos + BLOCK]
        if hdr == _ZERO_BLOCK:
            return out
        if hdr[257:262] != b"ustar" or hdr[156:157] not in (b"0", b"\0"):
            return None  # not a plain ustar regular file: let tarfile handle the archive
        stored = _octal_field(hdr[148:156], "checksum", where, pos)
        if stored != sum(hdr) - sum(hdr[148:156]) + 256:  # the checksum field counts as eight spaces
            raise ShardError(f"{where}: bad tar header checksum at byte {pos}")
        size = _octal_field(hdr[124:136], "size", where, pos)  # never negative: digits only
        name = hdr[:100].split(b"\0", 1)[0]
        if hdr[345:500].split(b"\0", 1)[0]:
            raise ShardError(f"{where}: member {name!r} at byte {pos} has a path prefix; shard members are plain <key>.<field> names")
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ShardError(f"{where}: member name {name!r} at byte {pos} is not UTF-8") from None
        check_member_name(name, where)
        if name in seen:
            raise ShardError(f"{where}: member {name} appears twice; the shard is damaged or hostile")
        seen.add(name)
        start = pos + BLOCK
        if start + size > n:
            raise ShardError(f"{where}: truncated: member {name} needs {size} bytes, {n - start} left")
        out.append((name, start, size) if offsets else (name, bytes(view[start : start + size])))
        pos = start + size + (-size % BLOCK)
    if pos != n:
        raise ShardError(f"{where}: truncated inside a tar header at byte {pos}")
    return out  # no end-of-archive blocks: tarfile accepts that too


def _iter_tarfile(path) -> Iterator[tuple[str, bytes]]:
    where, seen = str(path), set()
    try:
        with tarfile.open(path, mode="r|") as tf:
            for info in tf:
                if not info.isfile():
                    raise ShardError(f"{where}: member {info.name!r} is a {'link' if info.issym() or info.islnk() else 'directory' if info.isdir() else 'special file'}, "
                                     f"not a regular file; shard members are files")
                name = check_member_name(info.name, where)
                if name in seen:
                    raise ShardError(f"{where}: member {name} appears twice; the shard is damaged or hostile")
                seen.add(name)
                yield name, tf.extractfile(info).read()
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as e:
        raise ShardError(f"{where}: not a readable tar archive ({type(e).__name__}: {e})") from None


def split_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the name up to its first dot (names hold no '/')."""
    key, dot, ext = name.partition(".")
    if not dot or not key or not ext:
        raise ValueError(f"tar member {name!r} is not <key>.<field>, so it has no WebDataset key and field")
    return key, ext


def iter_samples(path: str | os.PathLike) -> Iterator[dict]:
    """Samples ``{"__key__": key, ext: bytes}`` grouped from contiguous members; a key whose
    members are not contiguous (two samples with one key) is a ``ShardError``."""
    sample: dict | None = None
    done: set[str] = set()
    for name, data in iter_members(path):
        key, ext = split_name(name)
        if sample is not None and sample["__key__"] != key:
            done.add(sample["__key__"])
            yield sample
            sample = None
        if sample is None:
            if key in done:
                raise ShardError(f"{path}: sample {key} appears twice (its members are not contiguous); the shard is damaged or hostile")
            sample = {"__key__": key}
        if ext in sample:
            raise ShardError(f"{path}: member {name!r} appears twice in sample {key!r}")
        sample[ext] = data
    if sample is not None:
        yield sample
