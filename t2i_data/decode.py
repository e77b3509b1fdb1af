"""Source image files → RGB pixels, with every check that decides whether a file is usable.

Per image, in this order, so that nothing is decoded before it is known to be affordable:

1. **Header** (Pillow's ``Image.open`` reads only the header): format, mode, size, EXIF.
   Pillow's own bomb check refuses more than 2 × ``Image.MAX_IMAGE_PIXELS`` (179 Mpx) here:
   ``too-large``.
2. **Bounds**, on the oriented (and, for CUB, cropped) size: aspect ratio above
   ``max_aspect`` is ``extreme-aspect``; a stored image above ``max_target_pixels`` or a
   decode whose working set (decoded pixels, plus the mirror-padded square for ``prior``) is
   above ``max_decoded_pixels`` is ``too-large``. See ``ImageLimits`` for the numbers.
3. **Strict decode.** Pillow decodes a JPEG whose entropy-coded data is damaged without a word:
   its libjpeg error manager drops libjpeg's warnings ("Corrupt JPEG data: ...", "Premature
   end of JPEG file"). JPEGs are therefore decoded by libjpeg-turbo through ``simplejpeg`` with
   ``strict=True``, which raises on those warnings (``corrupt-image``), at the DCT scale
   Pillow's ``draft`` picks: the pixels are Pillow's, bit for bit (held by
   ``tests/test_decode.py::test_strict_jpeg_decode_equals_pillow`` on the real JPEGs), and the
   decode is no slower (0.58 s against 0.64 s for 3 × 74 real JPEGs at 1/2 scale, measured here).
   CMYK JPEGs (Adobe's inverted CMYK is undone by Pillow only) are decoded by Pillow after a
   strict simplejpeg pass at 1/8 scale. PNGs go through Pillow's ``verify()`` first, which
   checks every chunk's CRC and the IEND chunk. What no decoder can see: a damaged run of
   entropy-coded bytes after which the Huffman decoder resynchronises. Of 50 overwrites of 64
   bytes with zeros at 5 places in the scans of 10 COCO JPEGs, libjpeg warned for 32; the
   other 18 decode with shifted colours (mean deviation 0.7-62/255) and pass.
4. **Orientation.** EXIF Orientation is applied (``ImageOps.exif_transpose``'s table), as
   Hugging Face ``datasets``' ``Image`` feature and ``transformers.image_utils.load_image`` do:
   the stored pixels are the picture people (and captioners using today's browsers) see.
   img2dataset does not (OpenCV's ``IMREAD_UNCHANGED`` ignores the tag). The value is recorded
   in the sample's JSON (``exif_orientation``, 1 = none), and a source whose annotated size
   disagrees with the oriented size is flagged (``size_mismatch``) by the preprocessing stage.
5. **RGB**: ``regimes.to_rgb`` (transparent pixels composited onto white; 16-bit quarantined).
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image

from .regimes import Regime, to_rgb
from .quarantine import Quarantine

EXIF_ORIENTATION = 0x0112
T = Image.Transpose
# ImageOps.exif_transpose's table: the transpose that turns stored pixels upright
ORIENTATION_TRANSPOSE = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
                         6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}
SWAPS_AXES = (5, 6, 7, 8)
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's JPEG with more pictures after it; the first is the image
# libjpeg's warnings, as libjpeg-turbo words them (jerror.h: JWRN_*); simplejpeg raises them
JPEG_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters", "Warning:")


@dataclass(frozen=True)
class ImageLimits:
    """Per-image bounds, checked from the header before any pixel is decoded.

    ``max_aspect`` 10: the widest real COCO / CUB images are near 3:1 (COCO val2017's 500×169);
    img2dataset offers the same filter (``max_aspect_ratio``). ``max_decoded_pixels`` 2**25
    (33.5 Mpx, e.g. 5792×5792 decoded; a JPEG is counted at the DCT scale it is decoded at, so
    a 100 Mpx JPEG needs only 1.6 Mpx at 1/8; ``prior`` also counts its mirror-padded square).
    Measured peak RSS of one process preprocessing one image at the limit (ae, N=128,
    ``/usr/bin/time``-style ``ru_maxrss``): 424 MiB for a 5792² RGBA PNG, 166 MiB for an RGB
    one, 254 MiB for a 4096² RGBA PNG under ``prior`` (36 MiB of it is the interpreter and
    imports). ``max_target_pixels`` 2**24: the stored image (``Regime.stored_size``), so a thin
    image cannot ask for a 138×92,000 resize.
    """

    max_aspect: float = 10.0
    max_decoded_pixels: int = 1 << 25
    max_target_pixels: int = 1 << 24

    def __post_init__(self) -> None:
        if not self.max_aspect >= 1:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if self.max_decoded_pixels < 1 or self.max_target_pixels < 1:
            raise ValueError(f"pixel limits must be positive, got {self.max_decoded_pixels}, {self.max_target_pixels}")


@dataclass
class Decoded:
    image: Image.Image  # RGB, upright, at the decoded scale
    box: tuple[float, float, float, float]  # the source (or its crop) in ``image``'s pixels
    scale: float  # decoded pixels per source pixel (1, 1/2, 1/4, 1/8)
    info: dict  # source_size (as stored, w h), source_mode, source_format, exif_orientation, crop, decoded_scale


def bbox_square(bbox, factor: float, w: int, h: int) -> tuple[int, int, int, int]:
    """AttnGAN's crop: a square of side factor·max(bw, bh) centred on the box, clipped to the image."""
    x, y, bw, bh = bbox
    lim = 4 * (w + h)  # beyond this every value crops the same; keeps int() finite for absurd boxes
    clip = lambda v: min(max(v, -lim), lim)  # noqa: E731
    r = int(clip(max(bw, bh) * factor / 2))
    cx, cy = int(clip((2 * x + bw) / 2)), int(clip((2 * y + bh) / 2))
    return max(0, cx - r), max(0, cy - r), min(w, cx + r), min(h, cy + r)


def orient_box(box: tuple, size: tuple[int, int], orientation: int) -> tuple:
    """A box (x0, y0, x1, y1) in an image of ``size`` → the same region after the transpose that
    undoes EXIF ``orientation`` (Pillow's ROTATE_90 turns counter-clockwise)."""
    w, h = size
    x0, y0, x1, y1 = box
    pts = {
        1: lambda x, y: (x, y), 2: lambda x, y: (w - x, y), 3: lambda x, y: (w - x, h - y), 4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x), 6: lambda x, y: (h - y, x), 7: lambda x, y: (h - y, w - x), 8: lambda x, y: (y, w - x),
    }[orientation]
    (a, b), (c, d) = pts(x0, y0), pts(x1, y1)
    return (min(a, c), min(b, d), max(a, c), max(b, d))


def exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag, 1 when absent; values outside 1-8 count as 1, as
    ``ImageOps.exif_transpose`` treats them. A broken EXIF block raises ``corrupt-image``.

    Only EXIF found with the header counts (JPEG APP1, a PNG eXIf chunk before the pixels):
    Pillow's ``getexif`` would otherwise decode a whole PNG to look for one after them, before
    the bounds are checked."""
    if "exif" not in im.info:
        return 1
    try:
        with warnings.catch_warnings():  # Pillow only warns about most broken IFDs: make them count
            warnings.simplefilter("error")
            value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as e:  # Pillow raises struct.error, SyntaxError, ValueError ... on broken EXIF
        raise Quarantine("corrupt-image", f"EXIF block unreadable ({type(e).__name__}: {e})") from None
    return value if isinstance(value, int) and value in ORIENTATION_TRANSPOSE else 1


def _check_bounds(regime: Regime, limits: ImageLimits, ow: float, oh: float, work: int) -> None:
    aspect = max(ow, oh) / min(ow, oh)
    if aspect > limits.max_aspect:
        raise Quarantine("extreme-aspect", f"{ow:g}x{oh:g} is {aspect:.1f}:1, above the {limits.max_aspect:g}:1 limit")
    tw, th = regime.stored_size(ow, oh)  # target_size x the regime's scale
    if tw * th > limits.max_target_pixels:
        raise Quarantine("too-large", f"stored image would be {tw}x{th}, above {limits.max_target_pixels:,} pixels")
    if work > limits.max_decoded_pixels:
        raise Quarantine("too-large", f"decoding needs {work:,} pixels, above the {limits.max_decoded_pixels:,} limit")


def _strict_jpeg(data: bytes, colorspace: str, **kw) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, colorspace, strict=True, **kw)
    except ValueError as e:
        msg = str(e)
        kind = "corrupt-image" if any(w in msg for w in JPEG_WARNINGS) else "unreadable-image"
        raise Quarantine(kind, f"libjpeg: {msg}") from None


def _raw_mode(im: Image.Image) -> str:
    """The decoder's raw mode (``RGB;16B`` for a 16-bit RGB PNG, which Pillow opens as 8-bit RGB)."""
    args = im.tile[0][3] if im.tile else ""
    return args if isinstance(args, str) else str(args[0]) if args else ""


def png_data_complete(data: bytes) -> str | None:
    """Why a PNG's pixel data is incomplete, or None. Pillow fills the rows a short zlib stream
    lacks with black and says nothing, even when every chunk CRC is right; this inflates the
    IDAT chunks and compares the length with what IHDR asks for (one more inflate of the file:
    PNG sources are rare in COCO / CUB, whose images are JPEGs)."""
    import struct
    import zlib

    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    row = lambda width: 1 + (width * channels * depth + 7) // 8 if width else 0  # noqa: E731
    if interlace:  # Adam7: seven passes of (width, height) sub-images
        passes = [((w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy) for x0, y0, dx, dy in
                  ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))]
        expected = sum(row(pw) * ph for pw, ph in passes if pw and ph)
    else:
        expected = row(w) * h
    z, got, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data):
        n, tag = struct.unpack(">I4s", data[pos : pos + 8])
        if tag == b"IDAT":
            got += len(z.decompress(data[pos + 8 : pos + 8 + n], expected + 1 - got))
        pos += 12 + n
    if not z.eof:
        return f"its zlib stream does not end ({got:,} of {expected:,} bytes of rows)"
    if got != expected:
        return f"its rows hold {got:,} bytes, the header asks for {expected:,}"
    return None


def decode_source(data: bytes, regime: Regime, limits: ImageLimits, bbox=None, bbox_crop: float | None = None) -> Decoded:
    """The bytes of one source image → an upright RGB image at the decoded scale.

    ``bbox`` (x, y, w, h, in stored pixels) with ``bbox_crop``: crop to AttnGAN's enlarged
    square first. Raises ``Quarantine`` with kind ``unreadable-image``, ``corrupt-image``,
    ``too-large``, ``extreme-aspect``, ``unsupported-mode`` or ``bad-bbox``.
    """
    try:
        with warnings.catch_warnings():  # Pillow warns above 89 Mpx; the bounds below decide, with a reason
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Quarantine("too-large", str(e)) from None
    except Image.UnidentifiedImageError:  # its message holds the address of the BytesIO: not deterministic
        raise Quarantine("unreadable-image", f"not an image format Pillow reads (starts with {data[:8]!r})") from None
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError ... on bad headers
        raise Quarantine("unreadable-image", f"{type(e).__name__}: {e}") from None
    src_w, src_h = im.size
    orientation = exif_orientation(im)
    info = {"source_size": [src_w, src_h], "source_mode": im.mode, "source_format": im.format, "exif_orientation": orientation, "crop": None}
    box = bbox_square(bbox, bbox_crop, src_w, src_h) if bbox_crop and bbox else (0, 0, src_w, src_h)
    cw, ch = box[2] - box[0], box[3] - box[1]
    if cw < 1 or ch < 1:
        raise Quarantine("bad-bbox", f"bounding-box crop {box} is empty")
    if box != (0, 0, src_w, src_h):
        info["crop"] = list(box)
    swap = orientation in SWAPS_AXES
    ow, oh = (ch, cw) if swap else (cw, ch)  # the region upright
    jpeg = im.format in JPEG_FORMATS
    scale = 1.0
    # prior mirror-pads to a square; a pad wider than the image (aspect over 3:1) drifts by up to
    # 28/255 at a reduced DCT scale (measured on 650x65 JPEGs), so such images are decoded whole
    # when that fits the pixel budget
    whole = (regime.name == "prior" and max(cw, ch) > 3 * min(cw, ch)
             and src_w * src_h + max(cw, ch) ** 2 <= limits.max_decoded_pixels)
    if jpeg and not whole:
        rw, rh = regime.draft_request(ow, oh)
        rw, rh = (rh, rw) if swap else (rw, rh)
        drafted = im.draft(None, (max(1, rw * src_w // cw), max(1, rh * src_h // ch)))
        if drafted is not None:  # (mode, (0, 0, src_w / k, src_h / k)) for a 1/k decode
            scale = drafted[1][2] / src_w
    dw, dh = im.size  # what will be decoded
    pad = math.ceil(max(cw, ch) * scale) ** 2 if regime.name == "prior" else 0
    # a progressive JPEG keeps every DCT coefficient of the full-size image until the last scan
    coefficients = src_w * src_h if jpeg and (im.info.get("progressive") or im.info.get("progression")) else 0
    _check_bounds(regime, limits, ow, oh, dw * dh + pad + coefficients)
    if ";16" in _raw_mode(im):
        raise Quarantine("unsupported-mode", f"16-bit {im.format} ({_raw_mode(im)}, opened as {im.mode}); t2i keeps 8-bit sources only")
    try:
        if jpeg and im.mode in ("RGB", "L"):
            arr = _strict_jpeg(data, "GRAY" if im.mode == "L" else "RGB", min_width=dw, min_height=dh)
            if arr.shape[:2] != (dh, dw):
                raise Quarantine("unreadable-image", f"libjpeg decoded {arr.shape[1]}x{arr.shape[0]}, expected {dw}x{dh}")
            decoded = Image.fromarray(arr[:, :, 0] if im.mode == "L" else arr)
        else:
            if jpeg:
                try:
                    _strict_jpeg(data, "CMYK", min_factor=8)
                except Quarantine as q:
                    if q.kind == "corrupt-image":
                        raise
                    # libjpeg-turbo's TurboJPEG API refuses some CMYK layouts (a 2x2-subsampled first
                    # channel) that Pillow decodes: those keep Pillow's decode, without the strict pass
            elif im.format == "PNG":
                try:
                    Image.open(io.BytesIO(data)).verify()
                    short = png_data_complete(data)
                except Exception as e:  # SyntaxError (bad chunk CRC), OSError / EOFError (truncated), zlib.error
                    raise Quarantine("corrupt-image", f"PNG check failed: {type(e).__name__}: {e}") from None
                if short:
                    raise Quarantine("corrupt-image", f"PNG data incomplete: {short}")
            im.load()
            decoded = im
    except Quarantine:
        raise
    except Exception as e:  # Pillow: OSError (truncated), SyntaxError (bad CRC), ValueError ...
        damaged = any(w in str(e) for w in ("CRC", "truncated", "decompressing", "broken data stream"))
        raise Quarantine("corrupt-image" if damaged else "unreadable-image", f"{type(e).__name__}: {e}") from None
    try:
        rgb = to_rgb(decoded)
    except ValueError as e:
        raise Quarantine("unsupported-mode", str(e)) from None
    region = tuple(v * scale for v in box)
    if orientation != 1:
        region = orient_box(region, rgb.size, orientation)
        rgb = rgb.transpose(ORIENTATION_TRANSPOSE[orientation])
    info["decoded_scale"] = scale
    return Decoded(rgb, region, scale, info)
