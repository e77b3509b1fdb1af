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

Reading: every image read back from a shard goes through ``load_image`` (or ``decode_image``),
which reads the header first and refuses an image over ``MAX_SHARD_PIXELS`` before any pixel is
decoded, with one ``T2IError`` naming the shard and key. Shards are input (DESIGN.md, "Trust"):
a 140 KB PNG can declare 12,000 × 12,000 pixels, which Pillow decodes without complaint (its own
limit is 179 Mpx) into 1.3-2.85 GB per reading process.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np

from .decode import ImageLimits
from .errors import T2IError

# No stored image of this project is larger: preprocessing quarantines any image whose stored
# form would exceed ImageLimits.max_target_pixels (2**24, 16.8 Mpx: 50 MB as RGB, 67 MB as RGBA).
MAX_SHARD_PIXELS = ImageLimits().max_target_pixels

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


def load_image(data: bytes, where: str = "image", max_pixels: int = MAX_SHARD_PIXELS):
    """PNG/JPEG bytes read from a shard → a loaded ``PIL.Image`` in its stored mode, after the
    header's size is checked against ``max_pixels``; ``where`` (``"<shard>: <key>.<ext>"``) names
    the image in the one ``T2IError`` raised for an image too large, or not decodable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow warns above 89 Mpx; the bound below decides, with a message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise T2IError(f"{where}: the image is {w}x{h} = {w * h:,} pixels, above the {max_pixels:,}-pixel limit for images "
                               f"read from shards (t2i_data.pngio.MAX_SHARD_PIXELS); no t2i build stores one, so the shard set "
                               f"is damaged or hostile: rebuild it or get it again from its source")
            im.load()
    except T2IError:
        raise
    except Image.DecompressionBombError as e:
        raise T2IError(f"{where}: {e}; the shard set is damaged or hostile") from None
    except Image.UnidentifiedImageError:  # its message holds the address of the BytesIO: not deterministic
        raise T2IError(f"{where}: not an image Pillow reads (starts with {data[:8]!r}); the shard is damaged") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError ... on damaged data
        raise T2IError(f"{where}: the image does not decode ({type(e).__name__}: {e}); the shard is damaged") from None
    return im


def decode_image(data: bytes, where: str = "image", max_pixels: int = MAX_SHARD_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes to an (H, W, C) uint8 array with Pillow, keeping its mode's channels;
    bounded as ``load_image``."""
    with load_image(data, where, max_pixels) as im:
        arr = np.asarray(im)
    return arr if arr.ndim == 3 else arr[:, :, None]
