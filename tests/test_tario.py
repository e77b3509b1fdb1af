import io
import tarfile

import numpy as np
import pytest
import webdataset as wds

from t2i_data.digest import canonical_json, canonical_pixels
from t2i_data.pngio import decode_image, encode_png
from t2i_data.tario import RECORD, TarWriter, iter_samples, ustar_header


@pytest.mark.parametrize("name,size", [("a.png", 0), ("mdmnist-train-00000001.json", 511), ("k" * 95 + ".npy", 8**11 - 1)])
def test_header_equals_tarfile_ustar(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_header_limits():
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        ustar_header("x" * 101, 1)
    with pytest.raises(ValueError, match="at most"):
        ustar_header("x.bin", 8**11)


def _samples(n):
    rng = np.random.default_rng(0)
    for i in range(n):
        px = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        yield {"__key__": f"s-{i:04d}", "png": encode_png(px), "json": canonical_json({"i": i}), "__content__": {"png": canonical_pixels(px)}}


def test_shard_reads_back_with_tarfile_webdataset_and_our_reader(tmp_path):
    path = tmp_path / "set-000000.tar"
    w = TarWriter(path)
    samples = list(_samples(5))
    for s in samples:
        w.write(s)
    rec = w.close()
    data = path.read_bytes()
    assert len(data) % RECORD == 0 and rec["bytes"] == len(data) and rec["samples"] == 5
    assert (rec["first_key"], rec["last_key"]) == ("s-0000", "s-0004")
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == [f"s-{i:04d}.{e}" for i in range(5) for e in ("png", "json")]
    assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
    ours = list(iter_samples(path))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in samples]
    assert all(a["png"] == b["png"] and a["json"] == b["json"] for a, b in zip(ours, samples))
    theirs = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in samples]
    assert all(a["png"] == b["png"] for a, b in zip(theirs, samples))
    assert np.array_equal(decode_image(theirs[2]["png"]), decode_image(samples[2]["png"]))


def test_content_digest_from_canonical_hint_equals_decoded(tmp_path):
    hinted, plain = TarWriter(tmp_path / "a.tar"), TarWriter(tmp_path / "b.tar")
    for s in _samples(3):
        hinted.write(s)
        plain.write({k: v for k, v in s.items() if k != "__content__"})
    assert hinted.close()["content_digest"] == plain.close()["content_digest"]


def test_partial_name_until_close_and_abort_leaves_nothing(tmp_path):
    path = tmp_path / "x-000000.tar"
    w = TarWriter(path)
    w.write(next(_samples(1)))
    assert not path.exists() and (tmp_path / "x-000000.tar.partial").exists()
    w.close()
    assert path.exists() and not (tmp_path / "x-000000.tar.partial").exists()
    with pytest.raises(RuntimeError):
        with TarWriter(tmp_path / "y-000000.tar") as w2:
            w2.write(next(_samples(1)))
            raise RuntimeError("boom")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [".index", ".index/x-000000.tar.json", "x-000000.tar"]


def test_keys_must_increase_and_be_plain(tmp_path):
    w = TarWriter(tmp_path / "z.tar")
    w.write({"__key__": "b", "txt": b"1"})
    with pytest.raises(ValueError, match="keys must increase"):
        w.write({"__key__": "a", "txt": b"1"})
    with pytest.raises(ValueError, match="must not contain"):
        w.write({"__key__": "c.d", "txt": b"1"})
    w.abort()


def test_reader_reports_truncation_and_bad_checksums(tmp_path):
    path = tmp_path / "t-000000.tar"
    w = TarWriter(path)
    for s in _samples(3):
        w.write(s)
    w.close()
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1500])
    with pytest.raises(tarfile.ReadError, match="truncated"):
        list(iter_samples(cut))
    bad = bytearray(data)
    bad[10] ^= 0x20  # a letter of the first member's name: the header checksum no longer holds
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_samples(tmp_path / "bad.tar"))


def test_reader_falls_back_to_tarfile_for_pax_and_gnu_archives(tmp_path):
    long_key = "k" * 120  # longer than a ustar name: pax / GNU headers
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"f{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tf:
            for name, payload in ((f"{long_key}.txt", b"hello"), ("short.txt", b"x" * 700)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        assert [(s["__key__"], s["txt"]) for s in iter_samples(path)] == [(long_key, b"hello"), ("short", b"x" * 700)]


def test_offset_index_matches_the_headers_and_a_stale_one_is_ignored(tmp_path, caplog):
    import json
    import logging

    from t2i_data.tario import _parse_ustar, ensure_index, index_path, member_table

    path = tmp_path / "x-000000.tar"
    with TarWriter(path) as w:
        for s in _samples(7):
            w.write(s)
        rec = w.close()
    data = path.read_bytes()
    parsed = _parse_ustar(data, str(path), offsets=True)
    doc = json.loads(index_path(path).read_bytes())
    assert doc["bytes"] == len(data) and doc["sha256"] == rec["sha256"] and len(doc["names"]) == 14
    assert [(n, o, z) for n, o, z in zip(doc["names"], doc["offsets"], doc["sizes"])] == parsed
    assert doc["header_sums"] == [sum(data[o - 512 : o]) for o in doc["offsets"]]
    names, offs, sizes = member_table(path, data, rec["sha256"])
    assert (names, offs.tolist(), sizes.tolist()) == tuple(map(list, zip(*parsed)))
    # stale: another shard's sha256, a corrupted header byte -> warning, then the headers are parsed
    with caplog.at_level(logging.WARNING):
        assert member_table(path, data, "0" * 64)[0] == names
        assert "sha256 differs" in caplog.text
        bad = bytearray(data)
        bad[doc["offsets"][3] - 512 + 5] ^= 1  # inside a member name: the header checksum no longer holds
        with pytest.raises(tarfile.ReadError, match="bad tar header checksum"):
            member_table(path, bytes(bad), rec["sha256"])
        assert "headers do not match" in caplog.text
    # a shard from an older writer gets its index written once
    before = index_path(path).read_bytes()
    index_path(path).unlink()
    ensure_index(path, rec["sha256"])
    assert index_path(path).read_bytes() == before
