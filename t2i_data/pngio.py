"""A minimal, deterministic PNG encoder for 8-bit RGB and grayscale arrays.

Pillow's encoder at compress_level=1 costs ~250 µs for a 128×128 MD-MNIST image; writing the
scanlines with filter type 0 and one zlib call (strategy Z_RLE, as libpng offers for images)
costs ~85 µs and gives smaller files on these mostly-black images, where adaptive filtering
buys nothing. The output is a standard PNG (IHDR, one IDAT, IEND) that any decoder reads; its
bytes depend only on the pixels, the level and the zlib version, which ``encoder_id`` names and
the manifest records.

ISA-L's deflate (package ``isal``) compresses these scanlines 3x faster, but its output for the
same input differed between fresh processes here (1 run in 6; intel/isa-l issue #140), which
would break "same seed, same bytes whatever the workers", so it is not used.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_COLOR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type (0 gray, 2 RGB)


def encoder_id(level: int) -> str:
    """Names everything the PNG bytes depend on besides the pixels."""
    return f"t2i-png/1 filter=0 strategy=rle level={level} zlib-{zlib.ZLIB_RUNTIME_VERSION}"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _deflate(data: bytes, level: int) -> bytes:
    # Z_RLE finds only runs (distance-1 matches): on MD-MNIST scanlines it is 15% faster than the
    # default strategy at level 1 and its files are 18% smaller (1,623 vs 1,979 bytes on average).
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return c.compress(data) + c.flush()


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 array."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {pixels.dtype}")
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    h, w, c = arr.shape
    if c not in _COLOR_TYPE:
        raise ValueError(f"encode_png needs 1 or 3 channels, got shape {pixels.shape}")
    raw = np.zeros((h, w * c + 1), np.uint8)  # column 0 is each scanline's filter byte (0 = None)
    raw[:, 1:] = arr.reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", _deflate(raw.tobytes(), level)) + _IEND


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes to an (H, W, C) uint8 array with Pillow, keeping its mode's channels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        arr = np.asarray(im)
    return arr if arr.ndim == 3 else arr[:, :, None]
