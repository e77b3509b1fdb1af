import io
import re

import numpy as np
import pytest

from t2i_data.errors import T2IError
from t2i_data.npyio import load_npy, npy_bytes, npy_meta, npy_view

ARRAYS = [np.arange(24, dtype=np.uint16).reshape(2, 3, 4), np.zeros((0, 12), np.uint16), np.arange(5, dtype=np.int32),
          np.float16([[1.5, -2.0]]), np.array(7, dtype=np.int64)]


def _saved(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_npy_bytes_is_np_save_and_both_readers_give_the_array_back(a):
    data = npy_bytes(a)
    assert data == _saved(a) and npy_bytes(a) == data  # the second call takes the cached header
    for back in (load_npy(data), npy_view(data)):
        assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)
    dtype, shape, count, skip = npy_meta(data[:4096])
    assert (dtype, shape, count, skip) == (a.dtype, a.shape, a.size, len(data) - a.nbytes)


def test_the_readers_do_not_copy():
    data = npy_bytes(np.arange(100, dtype=np.uint16))
    buf = np.frombuffer(data, np.uint8)
    assert np.shares_memory(load_npy(data), buf) and np.shares_memory(npy_view(data), buf)
    assert not load_npy(data).flags.writeable


def test_load_npy_reads_fortran_order_and_version_2():
    a = np.asfortranarray(np.arange(6, dtype=np.uint16).reshape(2, 3))
    assert np.array_equal(load_npy(_saved(a)), a)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(2, 0))
    assert np.array_equal(load_npy(buf.getvalue()), a)


@pytest.mark.parametrize("data,says", [
    (npy_bytes(np.zeros(4, np.uint16))[:-1], "bytes follow"),  # one byte short
    (npy_bytes(np.zeros(4, np.uint16)) + b"\0", "bytes follow"),
    (_saved(np.zeros((1,), np.uint16)).replace(b"(1,)", b"(9,)"), "declares uint16 (9,)"),
    (b"PK\x03\x04 not an npy", "magic string is not correct"),
])
def test_load_npy_refuses_a_header_that_does_not_match_its_bytes(data, says):
    with pytest.raises(T2IError, match=r"^x\.npy: not a readable \.npy .*" + re.escape(says)):
        load_npy(data, "x.npy")


def test_load_npy_refuses_a_huge_declared_shape_without_allocating_it():
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False, "shape": (10**7, 10**6)})
    data = buf.getvalue() + b"\0" * 64  # a 128-byte header claiming 20 TB
    with pytest.raises(T2IError, match="declares uint16 .10000000, 1000000. .20,000,000,000,000 bytes. but 64 bytes follow"):
        load_npy(data, "x")


def test_load_npy_refuses_pickles():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(T2IError, match="object array"):
        load_npy(buf.getvalue(), "x")


def test_npy_meta_refuses_what_is_not_npy_and_fortran_order():
    with pytest.raises(ValueError, match="not an .npy"):
        npy_meta(b"\x00" * 64)
    with pytest.raises(ValueError, match="fortran"):
        npy_meta(_saved(np.asfortranarray(np.zeros((2, 3), np.uint16))))
