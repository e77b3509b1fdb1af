"""``.npy`` payloads, the one array format of token shards (``<key>.text_tokens.npy``,
``<key>.image_tokens.npy``): written once, read two ways.

- ``npy_bytes``: ``np.save`` output, byte for byte, with the header built once per (dtype, shape).
- ``load_npy``: the checked reader for bytes from a shard someone else may have written: the
  header is parsed by numpy's bounded parser and checked against the bytes that follow before
  anything is allocated.
- ``npy_meta`` / ``npy_view``: the fast reader for ``TokenStream``'s hot path, whose shard bytes
  were checked against their manifest's sha256 first: a header dict is parsed once per distinct
  header and the array is a view of the bytes, never a copy.
"""
from __future__ import annotations

import ast
import io
import math

import numpy as np

from .errors import T2IError

_NPY_HEADERS: dict = {}  # (dtype str, shape) -> the np.save header for it
_HEADERS: dict[bytes, tuple] = {}  # header dict bytes -> (dtype, shape, item count)


def npy_bytes(arr: np.ndarray) -> bytes:
    """``np.save(arr)``'s bytes (format 1.0, C order, no pickle) for any non-object dtype and shape,
    with the header built once per (dtype, shape) instead of per array."""
    key = (arr.dtype.str, arr.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.zeros(arr.shape, arr.dtype), allow_pickle=False)
        header = _NPY_HEADERS[key] = buf.getvalue()[: len(buf.getvalue()) - arr.nbytes]
    return header + np.ascontiguousarray(arr).tobytes()


def load_npy(data: bytes, where: str = "array") -> np.ndarray:
    """The array of ``.npy`` bytes read from a shard, as a read-only view of ``data`` (any dtype
    and shape the header declares, C or Fortran order), once its header is checked against the
    bytes that follow it; one ``T2IError`` naming ``where`` otherwise. ``np.load`` allocates the
    shape its header declares before reading any element, so a 128-byte header saying
    (10**7, 10**6) costs terabytes (MemoryError) or, lazily, gigabytes. Format versions other
    than 1.0 and 2.0 and object arrays (pickles) are refused, as ``allow_pickle=False`` would."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version}, t2i reads 1.0 and 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if dtype.hasobject:
            raise ValueError("an object array (a pickle)")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data) - f.tell():
            raise ValueError(f"its header declares {dtype} {shape} ({count * dtype.itemsize:,} bytes) but {len(data) - f.tell():,} bytes follow")
        return np.frombuffer(data, dtype=dtype, count=count, offset=f.tell()).reshape(shape, order="F" if fortran else "C")
    except Exception as e:  # ValueError mostly; numpy's header parser also leaks tokenize.TokenError on garbage
        raise T2IError(f"{where}: not a readable .npy ({e}); the shard is damaged") from None


def npy_meta(data: bytes) -> tuple[np.dtype, tuple, int, int]:
    """(dtype, shape, item count, header bytes) of an .npy payload from its first bytes (the
    header, or more: a caller passes up to 4096); the header dict is parsed once per distinct
    header. Raises ``ValueError`` for bytes that are not .npy and for Fortran order (a garbled
    header dict raises what ``ast.literal_eval`` raises: the bytes are trusted, their sha256
    checked first); it does not check the payload's length (``TokenStream`` compares it with the
    member's size)."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy payload")
    hlen = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    start = 10 if data[6] == 1 else 12
    head = bytes(data[start : start + hlen])
    meta = _HEADERS.get(head)
    if meta is None:
        d = ast.literal_eval(head.decode("latin1"))
        if d["fortran_order"]:
            raise ValueError("fortran-ordered .npy is not supported here")
        meta = _HEADERS[head] = (np.dtype(d["descr"]), tuple(d["shape"]), int(np.prod(d["shape"])))
    return (*meta, start + hlen)


def npy_view(data: bytes) -> np.ndarray:
    """The array of a whole .npy payload (``npy_meta``'s dtype and shape) as a view of ``data``,
    without copying; ``ValueError`` as ``npy_meta``, or from numpy when ``data`` is too short."""
    dtype, shape, count, skip = npy_meta(data)
    return np.frombuffer(data, dtype=dtype, offset=skip, count=count).reshape(shape)
