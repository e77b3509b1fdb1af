"""Hostile and damaged shard sets (issue 15): a downloaded set is input like any other.

Every manifest here is made self-consistent with the project's own writer (``write_manifest``
recomputes the digest, and shard sha256 / bytes are set to the files'), so only the checks on
the content of a manifest, an index or a shard stand between it and the file system. Each case
drives the command line and asserts: exit 2 with exactly one stderr line starting
``t2i: error:`` (``verify --deep`` reports a damaged shard as ``unreadable`` and exits 1), no
traceback, and nothing created, changed or removed anywhere under pytest's temporary tree outside
the test's own output folder (nor, in the folders above it, anything our code would name). The
input set sits four folders below the test's folder, so ``../../../../`` from an output lands
inside the snapshot. Peak memory of the 12,000 × 12,000 PNG case is VmHWM of a fresh subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from t2i_models.cli import main
from t2i_data.digest import file_sha256
from t2i_data.errors import T2IError
from t2i_data.manifest import MANIFEST_NAME, write_manifest
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.tario import BLOCK, ShardError, TarWriter, index_path, iter_samples, member_table

ROOT = Path(__file__).resolve().parents[1]
SHARD0 = "mdmnist-train-000000.tar"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """MD-MNIST (8 train in 2 shards, 4 test), the mdmnist tokenizer, a tiny dVAE, and the train
    split's text- and image-token sets."""
    import torch

    from t2i_data.text import load_pretrained
    from t2i_data.tokenize import TokenizeConfig, tokenize
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode

    root = tmp_path_factory.mktemp("hostile-base")
    build(MDMNISTConfig(seed=0, train=8, test=4, shard_size=4), root / "md", InProcessRunner())
    load_pretrained("mdmnist", None).save(root / "tk")
    torch.manual_seed(0)
    save_autoencoder(root / "ae.pt", build_autoencoder("dvae_tiny", image_size=128, hidden=8, vocab_size=16))
    tokenize(root / "tk", root / "md" / "train", root / "text", TokenizeConfig(length=12), InProcessRunner())
    encode(root / "ae.pt", root / "md" / "train", root / "img", EncodeConfig(), InProcessRunner())
    return root


@pytest.fixture
def box(base, tmp_path):
    """A copy of the train split at ``a/b/c/d/set``, an output folder ``a/b/c/d/out`` and a copy
    of the test split at ``foreign``."""
    deep = tmp_path / "a" / "b" / "c" / "d"
    shutil.copytree(base / "md" / "train", deep / "set", symlinks=True)
    shutil.copytree(base / "md" / "test", tmp_path / "foreign")  # another set, outside this one
    return {"set": deep / "set", "out": deep / "out", "tk": base / "tk", "ae": base / "ae.pt", "base": base, "tmp": tmp_path}


# --- watching the file system ------------------------------------------------------------------

MARKS = ("hostile", ".index", ".stats", "mdmnist-", "passwd")  # what our code would name a file it wrote


def snapshot(basetemp: Path) -> dict:
    """Every path under pytest's base temp folder (files with size and mtime), and the names in
    each folder above it."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(basetemp):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            seen[p] = "dir" if n in dirnames and not os.path.islink(p) else (st.st_size, st.st_mtime_ns)
    for parent in basetemp.parents:
        try:
            seen.update({os.path.join(parent, n): "above" for n in os.listdir(parent)})
        except OSError:
            pass
    return seen


def assert_contained(before: dict, after: dict, basetemp: Path, allowed: list[Path]) -> None:
    inside = str(basetemp) + os.sep
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
    bad = []
    for p in changed:
        if not p.startswith(inside):  # folders above: other processes write there too; flag only our names
            if any(m in os.path.basename(p) for m in MARKS):
                bad.append(p)
        elif not any(p == str(a) or p.startswith(str(a) + os.sep) or p.startswith(str(a) + ".partial") for a in allowed):
            bad.append(p)
    assert not bad, f"created, changed or removed outside the output folder: {sorted(bad)}"


@pytest.fixture
def watch(tmp_path_factory):
    basetemp = tmp_path_factory.getbasetemp()

    class Watch:
        def __enter__(self):
            self.before = snapshot(basetemp)
            return self

        def check(self, *allowed: Path) -> None:
            assert_contained(self.before, snapshot(basetemp), basetemp, list(allowed))

        def __exit__(self, *exc):
            return False

    return Watch


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def refused(capsys, *argv, says: str | None = None) -> str:
    rc, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("t2i: error:"), f"{argv[0]}: exit {rc}, stderr {err!r}, stdout {out!r}"
    if says is not None:
        assert says in lines[0], lines[0]
    return lines[0]


def commands(box) -> dict[str, list]:
    s, o = box["set"], box["out"]
    return {
        "verify": ["verify", s],
        "verify --deep": ["verify", "--deep", s],
        "export": ["export", s, "--out", o / "export"],
        "inspect": ["inspect", s, "--out", o / "inspect"],
        "tokenize": ["tokenize", "--tokenizer", box["tk"], "--images", s, "--out", o / "text", "--length", "12", "--workers", "0"],
        "encode": ["encode", "--autoencoder", box["ae"], "--images", s, "--out", o / "img", "--workers", "0", "--check", "0"],
    }


def edit_manifest(folder: Path, change) -> None:
    """Apply ``change(manifest, folder)`` and write it back with a recomputed digest."""
    m = json.loads((folder / MANIFEST_NAME).read_bytes())
    change(m, folder)
    write_manifest(folder / MANIFEST_NAME, {k: v for k, v in m.items() if k != "digest"})


def describe_file(m: dict, path: Path, samples: int | None = None, i: int = 0) -> None:
    """Make shard record ``i`` of ``m``, and its totals, self-consistent with the file at ``path``."""
    rec = m["shards"][i]
    rec.update(sha256=file_sha256(path), bytes=path.stat().st_size)
    if samples is not None:
        rec["samples"] = samples
    m["totals"].update(samples=sum(s["samples"] for s in m["shards"]), bytes=sum(s["bytes"] for s in m["shards"]))


# --- the set as built is read by every command -------------------------------------------------

def test_the_untouched_copy_passes_every_command(box, capsys, watch):
    with watch() as w:
        for name, argv in commands(box).items():
            rc, _, err = run(capsys, *argv)
            assert rc == 0, f"{name}: {err}"
        w.check(box["out"])


# --- path fields of the manifest ---------------------------------------------------------------

def _foreign_tar(m, folder):  # another set's shard, by absolute path, described exactly
    path = folder.parents[4] / "foreign" / "mdmnist-test-000000.tar"
    m["shards"][0]["name"] = str(path)
    describe_file(m, path, samples=4)


def _set(section, field, value):
    def change(m, folder):
        (m[section] if section else m)[field] = value
    return change


def _shard(field, value):
    def change(m, folder):
        m["shards"][0][field] = value
    return change


def _passwd(m, folder):
    m["shards"][0]["name"] = "/etc/passwd"
    describe_file(m, Path("/etc/passwd"), samples=0)


def _totals(m, folder):
    m["totals"]["samples"] += 1


MANIFEST_CASES = {
    "dataset ../../../../hostile": (_set(None, "dataset", "../../../../hostile"), "dataset is '../../../../hostile'"),
    "dataset absolute": (_set(None, "dataset", "/tmp/hostile"), "dataset is '/tmp/hostile'"),
    "split ../../hostile": (_set(None, "split", "../../hostile"), "split is '../../hostile'"),
    "kind ../k": (_set(None, "kind", "../k"), "kind is '../k'"),
    "shard name /etc/passwd": (_passwd, "shards[0].name is '/etc/passwd'"),
    "shard name: another set's tar by absolute path": (_foreign_tar, "shards[0].name is '/"),
    "shard name ../": (_shard("name", "../set/" + SHARD0), "shards[0].name"),
    "shard name in a subfolder": (_shard("name", "sub/" + SHARD0), "shards[0].name"),
    "negative samples": (_shard("samples", -4), "shards[0].samples is -4"),
    "absurd samples": (_shard("samples", 10**12), "shards[0].samples"),
    "samples true": (_shard("samples", True), "shards[0].samples is True"),
    "negative bytes": (_shard("bytes", -1), "shards[0].bytes is -1"),
    "absurd bytes": (_shard("bytes", 10**15), "shards[0].bytes"),
    "sha256 not hex": (_shard("sha256", "../" * 21 + "x"), "shards[0].sha256"),
    "totals disagree": (_totals, "totals.samples"),
    "content_digest not hex": (_shard("content_digest", "x"), "shards[0].content_digest"),
    "aligned_to not hex": (_set(None, "aligned_to", "../x"), "aligned_to"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_a_hostile_manifest_stops_every_command_before_anything_is_written(case, box, capsys, watch):
    change, says = MANIFEST_CASES[case]
    edit_manifest(box["set"], change)
    with watch() as w:
        for name, argv in commands(box).items():
            refused(capsys, *argv, says=says)
        w.check(box["out"])
    assert not [p for p in box["out"].rglob("*") if p.is_file()]  # (a build may make its --out folder before it reads)


@pytest.mark.parametrize("shape,says", [({"shards": {"name": SHARD0}}, "shards is 'dict'"), ({"totals": [1]}, "totals is [1]"),
                                        ({"shards": ["x"]}, "shards[0] is 'x'"), (None, "the manifest is 'list'")])
def test_a_manifest_of_the_wrong_shape_stops_with_one_line(shape, says, box, capsys):
    path = box["set"] / MANIFEST_NAME
    m = json.loads(path.read_bytes())
    path.write_text(json.dumps(dict(m, **shape) if shape else [m]))  # no digest can be computed for these
    for argv in commands(box).values():
        refused(capsys, *argv, says=says if shape else None)


@pytest.mark.parametrize("case", ["dataset ../../../../hostile", "shard name /etc/passwd", "absurd samples"])
def test_streams_refuse_a_hostile_manifest_when_constructed(case, box, watch):
    from t2i_data.stream import ShardStream, decode_and_augment
    from t2i_data.token_stream import TokenStream

    change, says = MANIFEST_CASES[case]
    img, txt = box["tmp"] / "img", box["tmp"] / "text"
    shutil.copytree(box["base"] / "img", img)
    shutil.copytree(box["base"] / "text", txt)
    for folder in (box["set"], img):
        edit_manifest(folder, change)
    with watch() as w:
        with pytest.raises(T2IError, match="shards|dataset"):
            ShardStream(box["set"], decode_and_augment(None, 0), batch_size=2)
        with pytest.raises(T2IError, match="shards|dataset"):
            TokenStream(img, txt, batch_size=2)
        w.check()


# --- symlinks and special files ------------------------------------------------------------------

def test_a_shard_that_is_a_symlink_out_of_the_set_is_refused(box, capsys, watch):
    foreign = box["tmp"] / "foreign"
    target = foreign / "mdmnist-test-000000.tar"
    (box["set"] / SHARD0).unlink()
    (box["set"] / SHARD0).symlink_to(target)

    def describe(m, folder):
        rec = m["shards"][0]
        describe_file(m, target, samples=4)
        theirs = json.loads((foreign / MANIFEST_NAME).read_bytes())["shards"][0]
        rec.update({k: theirs[k] for k in ("content_digest", "first_key", "last_key")})

    edit_manifest(box["set"], describe)
    with watch() as w:
        for argv in commands(box).values():
            refused(capsys, *argv, says="outside")
        w.check(box["out"])


def test_a_shard_that_is_a_symlink_to_etc_passwd_or_a_fifo_is_refused(box, capsys):
    (box["set"] / SHARD0).unlink()
    (box["set"] / SHARD0).symlink_to("/etc/passwd")
    edit_manifest(box["set"], lambda m, f: describe_file(m, Path("/etc/passwd"), samples=0))
    refused(capsys, "verify", box["set"], says="outside")
    (box["set"] / SHARD0).unlink()
    os.mkfifo(box["set"] / SHARD0)  # a reader would block on it for ever
    refused(capsys, "export", box["set"], "--out", box["out"] / "e", says="not a regular file")
    refused(capsys, "verify", box["set"], says="not a regular file")


def test_a_split_folder_that_is_a_symlink_out_of_the_build_folder_is_refused(box, capsys, watch):
    build_dir = box["tmp"] / "build"
    build_dir.mkdir()
    (build_dir / "train").symlink_to(box["base"] / "md" / "train")
    with watch() as w:
        for argv in (["verify", build_dir], ["export", build_dir, "--out", box["out"] / "e"], ["inspect", build_dir],
                     ["tokenize", "--tokenizer", box["tk"], "--images", build_dir, "--out", box["out"] / "t", "--length", "12", "--workers", "0"]):
            refused(capsys, *argv, says="outside")
        w.check(box["out"])


# --- offset indexes --------------------------------------------------------------------------------

def _index_cases():
    def names(doc):
        doc["names"][0] = "../../foreign.png"

    def offsets(doc):
        doc["offsets"][0] = 0

    def past_end(doc):
        doc["offsets"][-1] = doc["bytes"] + 4096

    def sizes(doc):
        doc["sizes"][0] = 10**12

    def subset(doc):  # a truthful prefix that hides the last member
        for k in ("names", "offsets", "sizes", "header_sums"):
            doc[k] = doc[k][:-1]

    def renamed(doc):  # a name that keeps the header's byte sum: 'a'+1 and 'b'-1
        n = doc["names"][0]
        doc["names"][0] = chr(ord(n[0]) + 1) + chr(ord(n[1]) - 1) + n[2:]

    def garbage(doc):
        doc["offsets"] = "everything"

    return {"foreign name": names, "offset into the header": offsets, "offset past the end": past_end, "absurd size": sizes,
            "hides a member": subset, "same byte sum, other name": renamed, "not a list": garbage}


@pytest.mark.parametrize("case", list(_index_cases()))
def test_an_index_that_lies_is_ignored_and_the_headers_are_read(case, box, caplog):
    import logging

    shard = box["set"] / SHARD0
    data = shard.read_bytes()
    truth = member_table(shard, data)
    doc = json.loads(index_path(shard).read_bytes())
    _index_cases()[case](doc)
    index_path(shard).write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        names, offsets, sizes = member_table(shard, data, file_sha256(shard))
    assert (names, offsets.tolist(), sizes.tolist()) == (truth[0], truth[1].tolist(), truth[2].tolist())
    assert "ignoring its offset index" in caplog.text


def test_an_index_folder_that_is_a_symlink_out_of_the_set_is_not_read(box, caplog):
    import logging

    shard = box["set"] / SHARD0
    data = shard.read_bytes()
    truth = member_table(shard, data)
    outside = box["tmp"] / "elsewhere"
    shutil.copytree(box["set"] / ".index", outside)
    shutil.rmtree(box["set"] / ".index")
    (box["set"] / ".index").symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        names, _, _ = member_table(shard, data)
    assert names == truth[0] and "outside" in caplog.text


def test_token_stream_with_lying_indexes_gives_the_batches_of_the_true_members(box):
    from t2i_data.token_stream import TokenStream

    img, txt = box["tmp"] / "img", box["tmp"] / "text"
    shutil.copytree(box["base"] / "img", img)
    shutil.copytree(box["base"] / "text", txt)
    clean = [b["keys"] for b in TokenStream(img, txt, batch_size=3, seed=1)]
    for folder in (img, txt):
        for ipath in (folder / ".index").glob("*.json"):
            doc = json.loads(ipath.read_bytes())
            doc["names"] = [f"../../../{n}" for n in doc["names"]]
            ipath.write_text(json.dumps(doc))
    batches = list(TokenStream(img, txt, batch_size=3, seed=1))
    assert [b["keys"] for b in batches] == clean and sum(b["lost"] for b in batches) == 0


# --- tar headers that lie ------------------------------------------------------------------------

def _header(data: bytearray, member: int) -> int:
    """Byte offset of the header of member ``member`` (walking the real sizes)."""
    pos = 0
    for _ in range(member):
        size = int(data[pos + 124 : pos + 135], 8)
        pos += BLOCK + size + (-size % BLOCK)
    return pos


def _patch(data: bytearray, member: int, start: int, value: bytes) -> bytearray:
    pos = _header(data, member)
    data[pos + start : pos + start + len(value)] = value
    data[pos + 148 : pos + 156] = b" " * 8
    data[pos + 148 : pos + 156] = b"%06o\x00 " % sum(data[pos : pos + BLOCK])  # a valid checksum: only the field lies
    return data


TAR_CASES = {
    "size beyond the file": (lambda d: _patch(d, 0, 124, b"%011o\x00" % (len(d) * 2)), "truncated"),
    "negative size": (lambda d: _patch(d, 1, 124, b"-0000001000\x00"), "not octal"),
    "garbage size": (lambda d: _patch(d, 0, 124, b"zzzzzzzzzzz\x00"), "not octal"),
    "name with ../": (lambda d: _patch(d, 0, 0, b"../../evil.png".ljust(100, b"\x00")), "not a plain"),
    "absolute name": (lambda d: _patch(d, 0, 0, b"/etc/evil.png".ljust(100, b"\x00")), "not a plain"),
    "name ..": (lambda d: _patch(d, 0, 0, b"..".ljust(100, b"\x00")), "not a plain"),
    "path prefix": (lambda d: _patch(d, 0, 345, b"../../x"), "prefix"),
    "duplicate member": (lambda d: _patch(d, 1, 0, bytes(d[:100])), "appears twice"),
    "a symlink member": (lambda d: _patch(d, 0, 156, b"2"), "not a regular file"),
    "bad checksum": (lambda d: d.__setitem__(slice(5, 6), b"Q") or d, "checksum"),
}


def damage(folder: Path, how) -> Path:
    """Damage shard 0 of ``folder`` and describe the new bytes in its manifest (self-consistent)."""
    shard = folder / SHARD0
    shard.write_bytes(bytes(how(bytearray(shard.read_bytes()))))
    edit_manifest(folder, lambda m, f: describe_file(m, shard))
    return shard


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_a_lying_tar_header_stops_readers_with_one_message_naming_the_shard(case, box, capsys, watch):
    how, says = TAR_CASES[case]
    shard = damage(box["set"], how)
    with pytest.raises(ShardError, match=says) as e:
        list(iter_samples(shard))
    assert str(shard) in str(e.value)
    cmds = commands(box)
    with watch() as w:
        for name in ("export", "inspect", "tokenize", "encode"):
            line = refused(capsys, *cmds[name], says=says)
            assert SHARD0 in line
        rc, out, err = run(capsys, *cmds["verify --deep"])
        assert rc == 1 and not err and f"unreadable {SHARD0}" in out and says in out
        w.check(box["out"])


def test_a_lying_tar_header_stops_shard_stream_iteration(box):
    from t2i_data.stream import ShardStream, decode_and_augment

    damage(box["set"], TAR_CASES["negative size"][0])
    with pytest.raises(T2IError, match="not octal"):
        list(ShardStream(box["set"], decode_and_augment(None, 0), batch_size=2, shuffle_buffer=1))


def test_a_sample_json_of_the_wrong_types_stops_export_naming_the_sample(box, capsys):
    meta = json.loads(next(iter_samples(box["set"] / SHARD0))["json"])
    rewrite_first_sample(box["set"], json=json.dumps(dict(meta, index="../x", digits="all")).encode())
    refused(capsys, "export", box["set"], "--out", box["out"] / "e", says=f"{SHARD0}: sample mdmnist-train-00000000")


@pytest.mark.parametrize("kind", ["text", "img"])
def test_an_npy_header_declaring_terabytes_is_refused_before_anything_is_allocated(kind, box, capsys):
    import io

    import numpy as np

    folder = box["tmp"] / kind
    shutil.copytree(box["base"] / kind, folder)
    field = {"text": "text_tokens.npy", "img": "image_tokens.npy"}[kind]
    buf = io.BytesIO()  # a valid .npy header for an array of terabytes, then 48 bytes of data
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False,
                                               "shape": (10**7, 10**6) if kind == "text" else (10**6, 10**3, 10**3)})
    npy = buf.getvalue() + bytes(48)
    rewrite_first_sample(folder, **{field: npy})
    for argv in (["inspect", folder], ["export", folder, "--out", box["out"] / "e"]):
        refused(capsys, *argv, says="but 48 bytes follow")
    rc, out, _ = run(capsys, "verify", "--deep", folder)
    assert rc == 1 and "but 48 bytes follow" in out
    garbage = npy.replace(b"'shape'", b"'shape(")  # numpy's own parser raises tokenize.TokenError on this
    rewrite_first_sample(folder, **{field: garbage})
    refused(capsys, "inspect", folder, says="not a readable .npy")


# --- decompression bombs ---------------------------------------------------------------------------

def bomb_png(side: int = 12_000) -> bytes:
    """A grayscale PNG of side × side black pixels: about 140 KB, 144 Mpx decoded."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(tag)))

    c = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(c.compress(row) for _ in range(side)) + c.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rewrite_first_sample(folder: Path, **fields) -> Path:
    """Shard 0 of ``folder`` with the first sample's fields replaced (written as given, never
    decoded), and the manifest made self-consistent with it."""
    shard = folder / SHARD0
    samples = list(iter_samples(shard))
    with TarWriter(shard) as w:
        for i, s in enumerate(samples):
            w.write(dict(s, **fields, __content__={k: b"as given" for k in fields}) if i == 0 else s)
        rec = w.close()

    def describe(m, f):
        m["shards"][0].update(rec)
        describe_file(m, shard)

    edit_manifest(folder, describe)
    return shard


@pytest.fixture(scope="module")
def bomb_set(base, tmp_path_factory):
    """The train split with the first image of shard 0 replaced by the bomb, self-consistent."""
    folder = tmp_path_factory.mktemp("bomb") / "set"
    shutil.copytree(base / "md" / "train", folder)
    assert rewrite_first_sample(folder, png=bomb_png()).stat().st_size < 400_000
    return folder


PEAK = """
import json, sys
def peak():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
kind, args = sys.argv[1], sys.argv[2:]
message = ""
if kind == "cli":
    from t2i_models.cli import main
    rc = main(["-q", *args])
else:
    from t2i_data.errors import T2IError
    from t2i_data.stream import ShardStream, decode_and_augment
    try:
        list(ShardStream(args[0], decode_and_augment(None, 0), batch_size=2, shuffle_buffer=1))
        rc = 0
    except T2IError as e:
        rc, message = 2, str(e)
print(json.dumps({"rc": rc, "peak": peak(), "message": message}))
"""


def measure(kind: str, *args) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", PEAK, kind, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


BOUND = 64 << 20  # over the same command on the untouched set; the unbounded decode cost 1.3-2.85 GB


def _bomb_runs(base, bomb_set, out):
    clean = base / "md" / "train"
    shard = bomb_set / SHARD0
    return {
        "verify --deep": (["cli", "verify", "--deep", bomb_set], ["cli", "verify", "--deep", clean], 1),
        "preview": (["cli", "preview", shard, "--out", out / "p.png"], ["cli", "preview", clean / SHARD0, "--out", out / "q.png"], 2),
        "encode": (["cli", "encode", "--autoencoder", base / "ae.pt", "--images", bomb_set, "--out", out / "e", "--workers", "0", "--check", "0"],
                   ["cli", "encode", "--autoencoder", base / "ae.pt", "--images", clean, "--out", out / "f", "--workers", "0", "--check", "0"], 2),
        "ShardStream": (["stream", bomb_set], ["stream", clean], 2),
    }


@pytest.mark.parametrize("name", ["verify --deep", "preview", "encode", "ShardStream"])
def test_a_140_kb_png_of_144_megapixels_is_refused_before_it_is_decoded(name, base, bomb_set, tmp_path):
    hostile, clean, expected = _bomb_runs(base, bomb_set, tmp_path)[name]
    got, text = measure(*hostile)
    ref, _ = measure(*clean)
    assert ref["rc"] == 0
    assert got["rc"] == expected, text
    assert "12000x12000" in text and "mdmnist-train-00000000.png" in text and SHARD0 in text, text
    assert got["peak"] < ref["peak"] + BOUND, f"peak {got['peak'] >> 20} MiB, the same command on the clean set {ref['peak'] >> 20} MiB"


def test_load_image_names_the_limit_and_decodes_what_is_under_it():
    from t2i_data.pngio import MAX_SHARD_PIXELS, decode_image, encode_png, load_image

    import numpy as np

    small = encode_png(np.full((3, 5, 3), 7, np.uint8))
    assert decode_image(small, "s.tar: k.png").shape == (3, 5, 3)
    with pytest.raises(T2IError, match=r"s.tar: k.png: the image is 5x3 = 15 pixels, above the 14-pixel limit"):
        load_image(small, "s.tar: k.png", max_pixels=14)
    with pytest.raises(T2IError, match="s.tar: k.png: not an image"):
        load_image(b"GIF? no", "s.tar: k.png")
    assert MAX_SHARD_PIXELS == 1 << 24


@pytest.mark.parametrize("command", ["tokenize", "encode"])
def test_an_image_shard_truncated_on_a_member_boundary_stops_tokenize_and_encode(md_tokens, tmp_path, capsys, command):
    """Issue 15: tokenize exited 0 with 579 of 600 samples, encode with 577, both manifests still
    claiming alignment with the whole image set."""
    import shutil

    from t2i_data.tario import iter_members

    images = tmp_path / "md"
    shutil.copytree(md_tokens / "md" / "train", images)
    shard = sorted(images.glob("*.tar"))[1]
    members = list(iter_members(shard))
    keep = 2 * (len(members) // 2 - 1)  # whole samples, then no end-of-archive blocks
    size = 0
    for name, data in members[:keep]:
        size += 512 + len(data) + (-len(data) % 512)
    shard.write_bytes(shard.read_bytes()[:size])
    argv = (["tokenize", "--tokenizer", str(md_tokens / "tk"), "--length", "12"] if command == "tokenize"
            else ["encode", "--autoencoder", str(md_tokens / "ae.pt")])
    assert main(["-q", *argv, "--images", str(images), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and shard.name in err[0] and "does not match the manifest" in err[0]
