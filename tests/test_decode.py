"""Source decoding (issue 14, kinds 2 and 3): bounds before decoding, strict decodes, EXIF
orientation, transparency and bit depth; each kind tried on several members, through
``t2i preprocess`` on COCO trees in the exact source format."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from t2i_models.cli import main
from t2i_data.decode import ImageLimits, decode_source, orient_box
from t2i_data.regimes import Regime, to_rgb
from t2i_data.quarantine import Quarantine
from t2i_data.tario import iter_samples

from fixtures_sources import jpeg_bytes

REALDATA = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"))


def noisy_jpeg(w: int, h: int, seed: int = 0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG", **kw)
    return buf.getvalue()


def png16_rgb(w: int, h: int) -> bytes:
    """A 16-bit RGB PNG written chunk by chunk (Pillow cannot write one; it reads it as 8-bit RGB)."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    px = (np.arange(h * w * 3, dtype=">u2").reshape(h, w * 3) * 97).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in px)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def coco_tree(root: Path, files: dict[int, bytes], sizes: dict[int, tuple] | None = None, split: str = "val2017") -> Path:
    """A COCO root whose ``split`` holds ``files`` ({id: bytes}), one caption each."""
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    images, anns = [], []
    for i, (image_id, data) in enumerate(sorted(files.items())):
        name = f"{image_id:012d}.jpg"
        (root / split / name).write_bytes(data)
        w, h = (sizes or {}).get(image_id) or Image.open(io.BytesIO(data)).size
        images.append({"id": image_id, "file_name": name, "width": w, "height": h, "license": 1})
        anns.append({"id": i + 1, "image_id": image_id, "caption": f"picture {image_id}"})
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def run_coco(root: Path, out: Path, *extra: str, size: int = 32, regime: str = "ae", split: str = "val2017") -> tuple[dict, dict]:
    """(written {key: (json, pixels)}, quarantined {key: reason}) of a CLI build."""
    assert main(["-q", "preprocess", "coco", "--root", str(root), "--out", str(out), "--regime", regime, "--size", str(size),
                 "--workers", "0", *extra]) == 0
    written = {}
    for p in sorted((out / split).glob("*.tar")):
        for s in iter_samples(p):
            written[s["__key__"]] = (json.loads(s["json"]), np.asarray(Image.open(io.BytesIO(s["jpg"]))))
    m = json.loads((out / split / "manifest.json").read_text())
    return written, {r["key"]: r["reason"] for r in m["quarantined"]}


GOOD = {1: jpeg_bytes(64, 48, seed=1), 3: jpeg_bytes(50, 40, seed=3)}


# -- kind 2: a bound on what an input can cost -------------------------------------------------

@pytest.mark.parametrize("bad, reason", [
    (jpeg_bytes(3, 2000), "extreme-aspect"),  # the issue's 3x2000: ae target 138x92,000
    (jpeg_bytes(2000, 3), "extreme-aspect"),
    (jpeg_bytes(400, 39), "extreme-aspect"),  # 10.3:1, just over the default
    (png_bytes(np.zeros((6000, 6000, 3), np.uint8), compress_level=9), "too-large"),  # 36 Mpx > 2**25, 100 KB file
])
def test_bounded_inputs_are_quarantined_and_the_good_ones_written(tmp_path, bad, reason):
    written, rejected = run_coco(coco_tree(tmp_path / "coco", {**GOOD, 2: bad}), tmp_path / "out", size=128)
    assert sorted(written) == ["coco-000000000001", "coco-000000000003"]
    assert list(rejected) == ["coco-000000000002"] and rejected["coco-000000000002"].startswith(reason + ":")


def test_limits_are_settings(tmp_path):
    root = coco_tree(tmp_path / "coco", {**GOOD, 2: jpeg_bytes(90, 30)})  # 3:1
    _, rejected = run_coco(root, tmp_path / "a", "--max-aspect", "2.5")
    assert rejected["coco-000000000002"].startswith("extreme-aspect: 90x30 is 3.0:1")
    _, rejected = run_coco(root, tmp_path / "b", "--max-target-pixels", "3000")  # ae 32: 42x56 = 2,352 fits, 126x42 not
    assert list(rejected) == ["coco-000000000002"] and rejected["coco-000000000002"].startswith("too-large: stored image would be 126x42")
    assert main(["preprocess", "coco", "--root", str(root), "--out", str(tmp_path / "c"), "--size", "32", "--max-aspect", "0.5"]) == 2


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak from /proc (Linux)")
def test_a_huge_png_is_refused_from_its_header_with_bounded_memory(tmp_path):
    """A 12000x12000 PNG of 140 KB: refused before decoding, in a process whose peak stays small
    (a full decode would need 432 MB for the pixels alone)."""
    big = png_bytes(np.zeros((12000, 12000), np.uint8), compress_level=9)
    root = coco_tree(tmp_path / "coco", {**GOOD, 2: big}, sizes={2: (12000, 12000)})
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked (large) pytest process
    code = ("import re, sys; from t2i_models.cli import main; "
            f"rc = main(['-q', 'preprocess', 'coco', '--root', {str(root)!r}, '--out', {str(tmp_path / 'o')!r}, '--size', '32', '--workers', '0']); "
            "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    peak_mb = int(res.stdout.split()[-1]) / 1024
    assert peak_mb < 400, peak_mb
    m = json.loads((tmp_path / "o" / "val2017" / "manifest.json").read_text())
    assert [r["reason"].split(":")[0] for r in m["quarantined"]] == ["too-large"] and m["totals"]["samples"] == 2


def test_a_failing_encode_is_quarantined_not_fatal(tmp_path, monkeypatch):
    import t2i_data.preprocess as pp

    real = pp.encode_jpeg

    def encode(image, quality):
        if image.size == (56, 42):  # the 64x48 source only (ae 32: shorter side 42)
            raise OSError("broken data stream when writing image file")
        return real(image, quality)

    monkeypatch.setattr(pp, "encode_jpeg", encode)
    written, rejected = run_coco(coco_tree(tmp_path / "coco", GOOD), tmp_path / "out")
    assert list(written) == ["coco-000000000003"]
    assert rejected == {"coco-000000000001": "encode-failed: OSError: broken data stream when writing image file"}


# -- kind 3: damaged or rotated pixels ---------------------------------------------------------

def _zeroed(data: bytes, frac: float) -> bytes:
    sos = data.find(b"\xff\xda")
    d = bytearray(data)
    at = sos + int((len(d) - sos) * frac)
    d[at : at + 64] = bytes(64)
    return bytes(d)


def _flip_idat_byte(data: bytes) -> bytes:
    d = bytearray(data)
    at = d.find(b"IDAT") + 20
    d[at] ^= 0xFF
    return bytes(d)


@pytest.mark.parametrize("bad, detail", [
    (_zeroed(noisy_jpeg(160, 120), 0.5), "Corrupt JPEG data"),  # 64 zero bytes mid-scan
    (_zeroed(noisy_jpeg(160, 120), 0.3), "Corrupt JPEG data"),
    (noisy_jpeg(160, 120)[:-2] + b"\x12\x34\x56\xff\xd9", "extraneous bytes"),
    (noisy_jpeg(160, 120)[:9000], "Premature end of JPEG file"),  # truncated
    (_flip_idat_byte(png_bytes(np.full((40, 50, 3), 90, np.uint8))), "checksum"),
    (png_bytes(np.full((40, 50, 3), 90, np.uint8))[:-20], "PNG"),  # truncated PNG
])
def test_corrupt_images_are_quarantined(tmp_path, bad, detail):
    written, rejected = run_coco(coco_tree(tmp_path / "coco", {**GOOD, 2: bad}, sizes={2: (160, 120)}), tmp_path / "out")
    assert sorted(written) == ["coco-000000000001", "coco-000000000003"]
    reason = rejected["coco-000000000002"]
    assert reason.startswith("corrupt-image:") and detail in reason, reason


@pytest.mark.skipif(not (REALDATA / "coco" / "val2017").is_dir(), reason="needs $T2I_REALDATA (../shared/realdata)")
@pytest.mark.parametrize("request_size", [None, (100, 100), (200, 150), (40, 40)])
def test_strict_jpeg_decode_equals_pillow(request_size):
    """simplejpeg (libjpeg-turbo, strict) gives Pillow's pixels at the DCT scale Pillow picks, on
    every real COCO and CUB JPEG: the stored bytes do not depend on which library decodes."""
    import simplejpeg

    files = sorted((REALDATA / "coco" / "val2017").glob("*.jpg")) + sorted((REALDATA / "cub").rglob("*.jpg"))
    assert len(files) >= 70
    for f in files:
        im = Image.open(f)
        if request_size:
            im.draft(None, request_size)
        im.load()
        w, h = im.size
        ours = simplejpeg.decode_jpeg(f.read_bytes(), "GRAY" if im.mode == "L" else "RGB", min_width=w, min_height=h, strict=True)
        assert np.array_equal(ours[..., 0] if im.mode == "L" else ours, np.asarray(im)), f


def test_an_mpo_camera_jpeg_is_decoded_strictly_as_its_first_picture():
    first = np.random.default_rng(0).integers(0, 256, (60, 80, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (80, 60))])
    data = buf.getvalue()
    dec = decode_source(data, Regime("ae", 8), ImageLimits())
    assert dec.info["source_format"] == "MPO" and dec.scale < 1  # DCT-scaled, as a JPEG
    im = Image.open(io.BytesIO(data))
    im.draft(None, dec.image.size)
    assert np.array_equal(np.asarray(dec.image), np.asarray(im.convert("RGB")))
    with pytest.raises(Quarantine, match="corrupt-image"):
        decode_source(_zeroed(data[: data.find(b"\xff\xd9") + 2], 0.5) + data[data.find(b"\xff\xd9") + 2 :], Regime("ae", 8), ImageLimits())


def _exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _marked(w: int, h: int) -> np.ndarray:
    a = np.full((h, w, 3), 40, np.uint8)
    a[: h // 4, : w // 4] = (250, 20, 20)  # red block in the stored top-left corner
    return a


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_exif_transpose_does(orientation):
    data = _exif_jpeg(_marked(40, 20), orientation)
    dec = decode_source(data, Regime("ae", 8), ImageLimits())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert dec.info["exif_orientation"] == orientation and dec.info["source_size"] == [40, 20]
    assert np.array_equal(np.asarray(dec.image), np.asarray(expected))
    assert dec.box == (0, 0, *dec.image.size)


def test_the_issues_rotated_coco_image_is_stored_upright_and_flagged_when_sizes_disagree(tmp_path):
    """400x200 stored, EXIF 6 (turn clockwise), COCO says 200x400: stored portrait, no mismatch;
    the same file with no tag but that annotation is flagged."""
    rotated = _exif_jpeg(_marked(400, 200), 6)
    plain = _exif_jpeg(_marked(400, 200), 1)
    root = coco_tree(tmp_path / "coco", {**GOOD, 2: rotated, 4: plain}, sizes={2: (200, 400), 4: (200, 400)})
    written, rejected = run_coco(root, tmp_path / "out")
    assert rejected == {}
    meta, px = written["coco-000000000002"]
    assert meta["exif_orientation"] == 6 and meta["size"] == [42, 84] and meta["size_mismatch"] is False
    assert px[2, -3, 0] > 200 and px[2, 2, 0] < 100  # the red corner is now top-right
    meta4, _ = written["coco-000000000004"]
    assert meta4["exif_orientation"] == 1 and meta4["size"] == [84, 42] and meta4["size_mismatch"] is True
    m = json.loads((tmp_path / "out" / "val2017" / "manifest.json").read_text())
    assert m["stats"]["size_mismatch"] == 1 and m["stats"]["exif_rotated"] == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_box_follows_the_transpose(orientation):
    from t2i_data.decode import ORIENTATION_TRANSPOSE

    im = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (30, 50, 3)).astype(np.uint8))
    box = (7, 4, 31, 22)
    t = ORIENTATION_TRANSPOSE.get(orientation)
    a = im.crop(box).transpose(t) if t is not None else im.crop(box)
    b = (im.transpose(t) if t is not None else im).crop(tuple(int(v) for v in orient_box(box, im.size, orientation)))
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("data", [
    png16_rgb(50, 40),  # 16-bit RGB: Pillow opens it as 8-bit "RGB"
    png_bytes(np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 31),  # 16-bit gray
])
def test_16_bit_images_are_quarantined(data):
    with pytest.raises(Quarantine, match="unsupported-mode"):
        decode_source(data, Regime("ae", 8), ImageLimits())


def _rgba_hiding_red() -> np.ndarray:
    a = np.zeros((20, 30, 4), np.uint8)
    a[..., :3] = (255, 0, 0)  # red, hidden where alpha is 0
    a[:, 15:, 3] = 255
    a[:, 15:, :3] = (0, 0, 200)
    return a


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(_rgba_hiding_red(), "RGBA"),
    lambda: Image.fromarray(_rgba_hiding_red(), "RGBA").quantize(4, method=Image.Quantize.FASTOCTREE),  # P + tRNS alphas
    lambda: Image.fromarray(_rgba_hiding_red()[..., [0, 3]], "LA"),
])
def test_transparent_pixels_become_white_whatever_colour_they_hide(make):
    im = make()
    buf = io.BytesIO()
    im.save(buf, "PNG")
    dec = decode_source(buf.getvalue(), Regime("ae", 8), ImageLimits())
    px = np.asarray(dec.image)
    assert (px[:, :15] == 255).all()  # transparent half: white, not red or magenta
    assert (px[:, 15:] != 255).any()  # opaque half keeps its colour


def test_palette_png_with_a_transparent_index_becomes_white():
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([255, 0, 255, 0, 0, 0] + [0] * 762)
    pal.paste(0, (0, 0, 5, 10))  # magenta index 0, marked transparent
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    px = np.asarray(decode_source(buf.getvalue(), Regime("ae", 4), ImageLimits()).image)
    assert (px[:, :5] == 255).all() and (px[:, 5:] == 0).all()


def test_alpha_formula_is_img2datasets():
    a = np.array([[[200, 100, 50, 128]]], np.uint8)
    out = np.asarray(to_rgb(Image.fromarray(a, "RGBA")))[0, 0]
    alpha = 128 / 255
    assert out.tolist() == [round(alpha * v + 255 - 128) for v in (200, 100, 50)]
