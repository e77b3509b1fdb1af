"""The thesis' two augmentation regimes, split into a stored deterministic part and a random part.

ae (type 1, autoencoder training): resize shorter side to N+10 → rotate U(−2°, 2°) → random
N×N crop → random horizontal flip. prior (type 2, prior training): mirror-pad to a square →
rotate → resize to (N+20)² → centre N×N crop → random flip.

The deterministic part (``prepare``) is written into the shards once; the random part
(``apply_view``) runs online in training streams or is materialised as K views for
pre-encoding. Its parameters are a pure function of (seed, key, epoch) online, or
(seed, key, view) for views, and view 0 is the identity (no rotation, centred crop, no flip).

One deviation from the thesis order, for speed: prior rotates the (N+20)² image instead of the
full-size padded square before resizing (rotation and isotropic resizing commute up to
interpolation). ``bench/bench_preprocess.py`` measures the resulting pixel difference. The
rotation, crop and flip are one affine resampling (bilinear, black outside the image), so only
the N×N output pixels are computed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .rng import keyed_u64, stream_id

MAX_ANGLE = 2.0  # degrees, both regimes
AE_MARGIN = 10  # ae: shorter side N + 10
PRIOR_MARGIN = 20  # prior: resized to N + 20
_SLOT_ANGLE, _SLOT_X, _SLOT_Y, _SLOT_FLIP = range(4)


@dataclass(frozen=True)
class ViewParams:
    angle: float  # degrees, counter-clockwise, about the stored image's centre
    x: int  # crop offset in the stored image
    y: int
    flip: bool  # horizontal flip after the crop

    def to_json(self) -> dict:
        return asdict(self)


def _unit(seed: int, stream: int, index: int, slot: int) -> float:
    return float(keyed_u64(seed, stream, index, slot) >> np.uint64(11)) * 2.0**-53


def _mirror_pad_square(im: Image.Image) -> Image.Image:
    """Symmetric (edge-including mirror) padding of the shorter side, split evenly, as
    ``np.pad(mode="symmetric")`` and torchvision's ``Pad(padding_mode="symmetric")`` do."""
    w, h = im.size
    if w == h:
        return im
    arr = np.asarray(im)
    d = abs(w - h)
    before, after = d // 2, d - d // 2
    pad = ((before, after), (0, 0), (0, 0)) if h < w else ((0, 0), (before, after), (0, 0))
    # a pad wider than the image (aspect > 3:1) repeats the mirrored image, as np.pad does
    return Image.fromarray(np.pad(arr, pad, mode="symmetric"))


@dataclass(frozen=True)
class Regime:
    name: str  # "ae" or "prior"
    size: int  # N

    def __post_init__(self) -> None:
        if self.name not in ("ae", "prior"):
            raise ValueError(f"regime must be 'ae' or 'prior', got {self.name!r}")
        if self.size < 1:
            raise ValueError(f"regime size N must be positive, got {self.size}")

    # -- deterministic part -------------------------------------------------------------
    def target_size(self, w: int, h: int) -> tuple[int, int]:
        """Size of the stored image for a w×h source."""
        if self.name == "ae":
            s = self.size + AE_MARGIN
            return (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
        return (self.size + PRIOR_MARGIN,) * 2

    def draft_request(self, w: int, h: int) -> tuple[int, int]:
        """The smallest decoded size that still holds every output pixel's detail: JPEG DCT
        scaling (``Image.draft``) may decode at 1/2, 1/4 or 1/8 while staying at least this big."""
        if self.name == "ae":
            s = (self.size + AE_MARGIN) / min(w, h)
        else:
            s = (self.size + PRIOR_MARGIN) / max(w, h)
        return max(1, math.ceil(w * s)), max(1, math.ceil(h * s))

    def prepare(self, im: Image.Image, source_size: tuple[int, int] | None = None) -> Image.Image:
        """RGB image (possibly decoded at a DCT-scaled size) → the stored image.

        ``source_size`` is the full-resolution size the target is computed from, so that the
        rounding of a scaled decode never changes the stored size."""
        tw, th = self.target_size(*(source_size or im.size))
        if self.name == "prior":
            im = _mirror_pad_square(im)
        if im.size == (tw, th):
            return im
        # reducing_gap: box-reduce by an integer factor first, then LANCZOS the rest of the way
        return im.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=3.0)

    # -- random part ----------------------------------------------------------------------
    def draw(self, seed: int, key: str, index: int, stored: tuple[int, int], online: bool) -> ViewParams:
        """View ``index`` (or epoch ``index`` when ``online``) of the sample ``key``."""
        w, h = stored
        n = self.size
        if w < n or h < n:
            raise ValueError(f"{key}: stored image {w}x{h} is smaller than the {n}x{n} crop")
        if not online and index == 0:
            return self.identity(stored)
        stream = stream_id("online" if online else "view", self.name, n, key)
        angle = (2 * _unit(seed, stream, index, _SLOT_ANGLE) - 1) * MAX_ANGLE
        if self.name == "ae":
            x = int(_unit(seed, stream, index, _SLOT_X) * (w - n + 1))
            y = int(_unit(seed, stream, index, _SLOT_Y) * (h - n + 1))
        else:
            x, y = (w - n) // 2, (h - n) // 2
        flip = _unit(seed, stream, index, _SLOT_FLIP) < 0.5
        return ViewParams(round(angle, 6), x, y, flip)

    def identity(self, stored: tuple[int, int]) -> ViewParams:
        w, h = stored
        return ViewParams(0.0, (w - self.size) // 2, (h - self.size) // 2, False)

    def apply_view(self, im: Image.Image, p: ViewParams) -> Image.Image:
        """Rotate about the centre, crop N×N at (x, y), flip: one bilinear affine resampling.

        Equal, up to rounding, to ``im.rotate(angle, BILINEAR).crop(...)`` then a mirror."""
        n = self.size
        if p.angle == 0.0:
            out = im.crop((p.x, p.y, p.x + n, p.y + n))
            return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if p.flip else out
        w, h = im.size
        cx, cy = w / 2, h / 2
        a = -math.radians(p.angle)  # Pillow's rotate maps output to input with the inverse rotation
        ca, sa = math.cos(a), math.sin(a)
        # output (u, v) -> rotated-image coords (s·u + t + x, v + y) -> source via the rotation
        s, t = (-1.0, float(n)) if p.flip else (1.0, 0.0)
        rx, ry = t + p.x - cx, p.y - cy
        coeffs = (ca * s, sa, ca * rx + sa * ry + cx, -sa * s, ca, -sa * rx + ca * ry + cy)
        return im.transform((n, n), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def to_rgb(im: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK, YCbCr and alpha images → RGB (alpha dropped, as img2dataset
    does; Pillow's JPEG decoder already undoes Adobe's inverted CMYK). Other modes (16-bit,
    32-bit, float) raise ``ValueError``: they have no faithful 8-bit RGB form."""
    if im.mode == "RGB":
        return im
    if im.mode in CONVERTIBLE_MODES:
        return im.convert("RGB")
    raise ValueError(f"unsupported image mode {im.mode} (t2i converts {', '.join(CONVERTIBLE_MODES)} to RGB)")


CONVERTIBLE_MODES = ("L", "LA", "P", "PA", "CMYK", "YCbCr", "RGBA", "RGBX", "1")
