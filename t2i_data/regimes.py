"""The thesis' two augmentation regimes, split into a stored deterministic part and a random part.

ae (type 1, autoencoder training): resize shorter side to N+10 → rotate U(−2°, 2°) → random
N×N crop → random horizontal flip. prior (type 2, prior training): mirror-pad to a square →
rotate → resize to (N+20)² → centre N×N crop → random flip.

The deterministic part (``prepare``) is written into the shards once; the random part
(``apply_view``) runs online in training streams or is materialised as K views for
pre-encoding. Its parameters are a pure function of (seed, key, epoch) online, or
(seed, key, view) for views, and view 0 is the identity (no rotation, centred crop, no flip).

Stored resolution (``scale``). The thesis rotates the full-size image and resizes after; rotating
the final-size image instead differs by 1.6-1.9/255 mean absolute difference (MAD) on real CUB /
COCO JPEGs at N = 128, whatever the interpolation (Lanczos-4 still 1.4-1.7/255): the two orders
alias different detail into the final grid, and what the final-size image aliased is gone. JPEG
q95 storage of a final-size image adds 1.6/255 of its own, so ``scale = 1`` (the default: stored
image N+10 / N+20, crop offsets in its pixels) lands at 2.3-3.2/255 from the thesis order.
``scale = 2`` stores the image at twice that size; a view rotates there and LANCZOS-reduces to
N×N, which brings both errors under the final grid's Nyquist: 0.94-1.11/255 with q95 storage
(``bench/bench_preprocess.py``; ``tests/test_regimes.py::test_scale_2_views_are_within_2_255_of_the_thesis_order``),
for 3.1-3.3× the stored bytes and about 4× the work per view (measured here: a scale-2 view runs
at 0.8-1.4× the speed of the naive full-decode chain, a scale-1 view at 3-7×). Views infer the scale from the stored size (an exact multiple of
N+10 / N+20), so readers need no setting; crop offsets are always in output pixels.

The rotation, crop and flip are one affine resampling (bicubic, black outside the image), so
only the output pixels (plus a LANCZOS margin at ``scale > 1``) are computed. Prior pads with
mirrored source pixels and resizes from the exact box the padded square occupies in a
DCT-scaled decode (``prepare``).
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
    x: int  # crop offset in the stored image, in output pixels (stored pixels / scale)
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
    scale: int = 1  # stored pixels per output pixel (1 or 2; see the module docstring); prepare only

    def __post_init__(self) -> None:
        if self.scale not in (1, 2):
            raise ValueError(f"regime scale must be 1 or 2, got {self.scale}")
        if self.name not in ("ae", "prior"):
            raise ValueError(f"regime must be 'ae' or 'prior', got {self.name!r}")
        if self.size < 1:
            raise ValueError(f"regime size N must be positive, got {self.size}")

    # -- deterministic part -------------------------------------------------------------
    def target_size(self, w: float, h: float) -> tuple[int, int]:
        """Size of the stored image for a w×h source at output resolution (the thesis' resize:
        shorter side N+10 for ae, (N+20)² for prior); ``stored_size`` is this × ``scale``."""
        if self.name == "ae":
            s = self.size + AE_MARGIN
            return (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
        return (self.size + PRIOR_MARGIN,) * 2

    def stored_size(self, w: float, h: float) -> tuple[int, int]:
        tw, th = self.target_size(w, h)
        return tw * self.scale, th * self.scale

    def stored_scale(self, stored: tuple[int, int]) -> int:
        """The scale a stored image was prepared at, from its size: 2 when it is exactly twice a
        size this regime stores at output resolution, else 1."""
        w, h = stored
        if w % 2 or h % 2:
            return 1
        if self.name == "ae":
            return 2 if min(w, h) == 2 * (self.size + AE_MARGIN) else 1
        return 2 if w == h == 2 * (self.size + PRIOR_MARGIN) else 1

    def draft_request(self, w: int, h: int) -> tuple[int, int]:
        """The smallest decoded size that still holds every output pixel's detail: JPEG DCT
        scaling (``Image.draft``) may decode at 1/2, 1/4 or 1/8 while staying at least this big."""
        if self.name == "ae":
            s = self.scale * (self.size + AE_MARGIN) / min(w, h)
        else:
            s = self.scale * (self.size + PRIOR_MARGIN) / max(w, h)
        return max(1, math.ceil(w * s)), max(1, math.ceil(h * s))

    def prepare(self, im: Image.Image, box: tuple[float, float, float, float] | None = None, scale: float = 1.0) -> Image.Image:
        """RGB image → the stored image, with the geometry of a full-resolution decode.

        ``box`` is the region of ``im`` holding the source (or its crop) and ``scale`` the decoded
        pixels per source pixel: a JPEG decoded at 1/2 from 375 rows is 188 rows tall but holds
        187.5 rows of source, and resizing from that exact box (not from the 188 rows) keeps the
        output where a full decode would put it. prior pads with whole mirrored pixels and then
        resizes from the fractional box the full-resolution padded square occupies, so the pad
        split (in source pixels, as the thesis pads) lands where it would at full resolution.
        """
        box = box or (0.0, 0.0, float(im.width), float(im.height))
        bw, bh = box[2] - box[0], box[3] - box[1]
        if self.name == "ae":
            size = self.stored_size(bw / scale, bh / scale)
            if im.size == size and box == (0, 0, im.width, im.height):
                return im
            # reducing_gap: box-reduce by an integer factor first, then LANCZOS the rest of the way
            return im.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        sw, sh = round(bw / scale), round(bh / scale)  # the source (crop) size in source pixels
        before = (abs(sw - sh) // 2) * scale  # mirror pad before the content, in decoded pixels
        side = max(sw, sh) * scale
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        region = im.crop((x0, y0, math.ceil(box[2]), math.ceil(box[3])))
        qx0, qy0 = box[0] - x0, box[1] - y0  # the content box inside the region
        if sw >= sh:
            sq = (qx0, qy0 - before, qx0 + bw, qy0 - before + side)
        else:
            sq = (qx0 - before, qy0, qx0 - before + side, qy0 + bh)
        pads = (max(0, math.ceil(-sq[0])), max(0, math.ceil(-sq[1])),
                max(0, math.ceil(sq[2] - region.width)), max(0, math.ceil(sq[3] - region.height)))
        if any(pads):
            arr = np.pad(np.asarray(region), ((pads[1], pads[3]), (pads[0], pads[2]), (0, 0)), mode="symmetric")
            region = Image.fromarray(arr)
            sq = (sq[0] + pads[0], sq[1] + pads[1], sq[2] + pads[0], sq[3] + pads[1])
        n = (self.size + PRIOR_MARGIN) * self.scale
        return region.resize((n, n), Image.Resampling.LANCZOS, box=sq, reducing_gap=3.0)

    # -- random part ----------------------------------------------------------------------
    def draw(self, seed: int, key: str, index: int, stored: tuple[int, int], online: bool) -> ViewParams:
        """View ``index`` (or epoch ``index`` when ``online``) of the sample ``key``; ``stored`` is
        the stored image's size (w, h) in its own pixels. Raises ``ValueError`` when the crop does
        not fit."""
        k = self.stored_scale(stored)
        w, h = stored[0] // k, stored[1] // k
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
        k = self.stored_scale(stored)
        w, h = stored[0] // k, stored[1] // k
        return ViewParams(0.0, (w - self.size) // 2, (h - self.size) // 2, False)

    def apply_view(self, im: Image.Image, p: ViewParams) -> Image.Image:
        """Rotate about the centre, crop N×N at (x, y), flip → an N×N RGB image.

        At scale 1 one bicubic affine resampling, equal up to rounding to
        ``im.rotate(angle, BICUBIC).crop(...)`` then a mirror. At scale 2 the rotation (bicubic)
        is computed on the stored grid for the crop and a 3-output-pixel margin, clipped to the
        image as a full-size rotate would be, and LANCZOS-reduced to N×N: the thesis order
        (rotate, then resize) on a stored image of twice the output resolution."""
        n = self.size
        if self.stored_scale(im.size) == 2:
            return self._view_scaled(im, p)
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
        return im.transform((n, n), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))

    def _view_scaled(self, im: Image.Image, p: ViewParams, k: int = 2) -> Image.Image:
        n, w, h = self.size, im.width, im.height
        m = 3 * k  # LANCZOS' support when reducing by k: 3 output pixels
        box = (k * p.x, k * p.y, k * (p.x + n), k * (p.y + n))  # the crop, in stored pixels
        x0, y0 = max(0, box[0] - m), max(0, box[1] - m)
        x1, y1 = min(w, box[2] + m), min(h, box[3] + m)
        if p.angle == 0.0:
            region = im.crop((x0, y0, x1, y1))
        else:
            a = -math.radians(p.angle)  # as in apply_view: output -> input is the inverse rotation
            ca, sa = math.cos(a), math.sin(a)
            rx, ry = x0 - w / 2, y0 - h / 2
            coeffs = (ca, sa, ca * rx + sa * ry + w / 2, -sa, ca, -sa * rx + ca * ry + h / 2)
            region = im.transform((x1 - x0, y1 - y0), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC,
                                  fillcolor=(0, 0, 0))
        inner = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        out = region.resize((n, n), Image.Resampling.LANCZOS, box=inner)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if p.flip else out


def to_rgb(im: Image.Image) -> Image.Image:
    """Any 8-bit image → RGB.

    Grayscale, bilevel, palette, CMYK (Pillow's JPEG decoder already undoes Adobe's inverted
    CMYK) and YCbCr are converted. Transparency (RGBA, LA, PA, and palette or RGB/L images with
    a ``transparency`` entry) is composited onto white with img2dataset's formula,
    ``rint(a/255 · rgb + 255 − a)``, so a transparent pixel is white whatever colour it hides.
    Other modes (16-bit ``I;16``, 32-bit ``I``, float ``F``) raise ``ValueError``: they have no
    faithful 8-bit RGB form."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode not in CONVERTIBLE_MODES:
        raise ValueError(f"unsupported image mode {im.mode} (t2i converts {', '.join(CONVERTIBLE_MODES)} to RGB)")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        out = Image.new("RGB", im.size)
        for y in range(0, im.height, ALPHA_ROWS):  # in bands: whole-image float copies would cost 32 B/px
            band = np.asarray(rgba.crop((0, y, im.width, min(y + ALPHA_ROWS, im.height))), dtype=np.float64)
            alpha = band[:, :, 3:]
            out.paste(Image.fromarray(np.rint(np.clip(alpha / 255 * band[:, :, :3] + 255 - alpha, 0, 255)).astype(np.uint8)), (0, y))
        return out
    return im.convert("RGB")


ALPHA_ROWS = 256
CONVERTIBLE_MODES = ("RGB", "L", "LA", "P", "PA", "CMYK", "YCbCr", "RGBA", "RGBX", "1")
