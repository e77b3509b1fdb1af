"""The thesis' two augmentation regimes, and ``center`` for pre-encoding at a tokenizer's native
size, each split into a stored deterministic part and a random part.

ae (type 1, autoencoder training): resize shorter side to N+10 → rotate U(−2°, 2°) → random
N×N crop → random horizontal flip. prior (type 2, prior training): mirror-pad to a square →
rotate → resize to (N+20)² → centre N×N crop → random flip. center (DALL·E's pre-encoding of
COCO at 256² with OpenAI's dVAE): shorter side to N by area averaging → centre N×N crop, stored
as it is; views rotate and flip that N×N image (see "The center regime" below).

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

The center regime. The stored image is N×N: the shorter side resized to N (the longer to
``round(L·N/S)``, as ae rounds), then the centre N×N cropped, an odd remainder split with the
smaller half first (``(M − N) // 2`` columns go on the left / rows on top, the rest on the right /
bottom). Both steps are one resampling of the source box that crop keeps (``center_crop_box``).
Downscaling is an exact area average (``area_resize``: each output pixel the mean of the source
area it covers, partial pixels weighted by their overlap, in float64, rounded once). Pillow has
no such filter at a non-integer ratio: its BOX counts a whole pixel in or out by where its
centre falls, and LANCZOS (with or without ``reducing_gap``) is a windowed sinc, not a mean. On
the 66 real COCO / CUB JPEGs of ``realdata`` whose shorter side is >= 256, at N = 256 (480 → 256
is a 1.875 ratio), against a float64 area average of the full decode: ``area_resize`` 0.241/255
mean absolute difference (MAD; at most 0.50/255, the rounding), Pillow BOX 2.155/255 (up to
120/255 at edges), LANCZOS 1.467/255 (up to 52/255); it costs about what LANCZOS does (7 ms
against 6.5 ms for 640×426 → 256², measured here). JPEGs are decoded at the largest DCT scale
that keeps the shorter side >= 8·N: libjpeg's reduced IDCT is no area average (decoding at
>= N, then area averaging, is 1.95/255 MAD at N = 64; at >= 2·N 0.63/255), while at >= 8·N
N = 16 is 0.275/255 MAD (at most 2.4/255) with 66 of the 74 images decoded at 1/2; N >= 64
decodes these images whole. Held by ``tests/test_center_regime.py::
test_area_resize_on_real_jpegs_is_within_rounding_of_float64_area_average`` (N = 256 and 16).
JPEG q95 storage then dominates: view 0 is 1.40/255 MAD from the area average at N = 256.
A source whose shorter side is under N is upscaled with LANCZOS, as ae and prior upscale (no
regime quarantines a small image). The views are the prior regime's machinery: view 0 (the
identity, offset (0, 0)) is the stored image pixel for pixel, and views 1..K−1 (and every online
epoch) draw a rotation in ±2° and a flip from (seed, key, view) / (seed, key, epoch), in
center's own stream, with no crop offset. The stored image has no margin, so a rotated view has
black corner wedges (the prior regime's N+20 margin is there to avoid them): 1.7% of a view's
pixels at 2° (N = 64 and 256). ``scale`` is 1 only: the stored image is the view-0 image itself.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .rng import keyed_u64, stream_id

MAX_ANGLE = 2.0  # degrees, every regime
AE_MARGIN = 10  # ae: shorter side N + 10
PRIOR_MARGIN = 20  # prior: resized to N + 20
CENTER_DRAFT = 8  # center: a DCT-scaled JPEG decode keeps the shorter side >= 8·N (module docstring)
REGIMES = ("ae", "prior", "center")
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


def _area_axis(a: np.ndarray, lo: float, hi: float, n: int, axis: int) -> np.ndarray:
    """Exact area average along ``axis``: output cell i is the mean of the source over
    [lo + i·d, lo + (i+1)·d), d = (hi − lo) / n >= 1, partial pixels by their overlap. The
    integral up to an edge e (pixel i = floor(e), the fraction f = e − i of it) is the running
    sum through pixel i less (1 − f) of pixel i; float64 sums of 8-bit values are exact."""
    d = (hi - lo) / n
    edges = lo + d * np.arange(n + 1)
    i = np.minimum(edges.astype(np.int64), a.shape[axis] - 1)  # edges >= 0, so astype floors
    shape = [1] * a.ndim
    shape[axis] = n + 1
    rest = (1.0 - (edges - i)).reshape(shape)
    running = np.cumsum(a, axis=axis, dtype=np.float64)
    at = np.take(running, i, axis=axis) - rest * np.take(a, i, axis=axis)
    return np.diff(at, axis=axis) * (1.0 / d)


def area_resize(im: Image.Image, box: tuple[float, float, float, float], n: int) -> Image.Image:
    """The region ``box`` (x0, y0, x1, y1; fractional, at least n pixels each way) of an RGB image
    → n×n, each output pixel the float64 area average of the source it covers, rounded once."""
    x0, y0, x1, y1 = box
    if min(x1 - x0, y1 - y0) < n - 1e-6:
        raise ValueError(f"area_resize reduces only: box {x1 - x0:g}x{y1 - y0:g} is smaller than {n}x{n}")
    cx, cy = int(x0), int(y0)  # only the rows and columns the box touches
    arr = np.asarray(im)[cy : math.ceil(y1), cx : math.ceil(x1)]
    out = _area_axis(_area_axis(arr, y0 - cy, y1 - cy, n, 0), x0 - cx, x1 - cx, n, 1)  # (n, n, 3)
    return Image.fromarray(np.rint(np.clip(out, 0, 255)).astype(np.uint8))


def center_crop_box(w: float, h: float, n: int) -> tuple[float, float, float, float]:
    """The region of a w×h source that center keeps, in its pixels: the shorter side resized to n
    and the longer to M = round(L·n/S), then columns (or rows) [(M − n) // 2, (M − n) // 2 + n) of
    that, mapped back through the resize's own scale (L / M)."""
    if w <= h:
        m = max(n, round(h * n / w))
        t = (m - n) // 2
        return (0.0, t * h / m, float(w), (t + n) * h / m)
    m = max(n, round(w * n / h))
    left = (m - n) // 2
    return (left * w / m, 0.0, (left + n) * w / m, float(h))


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
    name: str  # one of REGIMES: "ae", "prior" or "center"
    size: int  # N
    scale: int = 1  # stored pixels per output pixel (1 or 2; see the module docstring); prepare only

    def __post_init__(self) -> None:
        if self.scale not in (1, 2):
            raise ValueError(f"regime scale must be 1 or 2, got {self.scale}")
        if self.name not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {self.name!r}")
        if self.name == "center" and self.scale != 1:
            raise ValueError(f"regime center stores the N×N view-0 image itself, so its scale is 1, got {self.scale}")
        if self.size < 1:
            raise ValueError(f"regime size N must be positive, got {self.size}")

    # -- deterministic part -------------------------------------------------------------
    def target_size(self, w: float, h: float) -> tuple[int, int]:
        """Size of the stored image for a w×h source at output resolution (the thesis' resize:
        shorter side N+10 for ae, (N+20)² for prior; N² for center); ``stored_size`` is this × ``scale``."""
        if self.name == "center":
            return (self.size, self.size)
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
        if w % 2 or h % 2 or self.name == "center":
            return 1
        if self.name == "ae":
            return 2 if min(w, h) == 2 * (self.size + AE_MARGIN) else 1
        return 2 if w == h == 2 * (self.size + PRIOR_MARGIN) else 1

    def draft_request(self, w: int, h: int) -> tuple[int, int]:
        """The smallest decoded size that still holds every output pixel's detail: JPEG DCT
        scaling (``Image.draft``) may decode at 1/2, 1/4 or 1/8 while staying at least this big."""
        if self.name == "center":
            s = CENTER_DRAFT * self.size / min(w, h)
        elif self.name == "ae":
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
        if self.name == "center":
            return self._prepare_center(im, box, scale)
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

    def _prepare_center(self, im: Image.Image, box: tuple[float, float, float, float], scale: float) -> Image.Image:
        """The centre crop of the source, in decoded pixels: ``center_crop_box`` of the source size
        (``round(box / scale)``, as a full decode has it), scaled into ``box``; area-averaged to
        N×N, or LANCZOS-upscaled when the kept region is under N pixels across."""
        bw, bh = box[2] - box[0], box[3] - box[1]
        sw, sh = round(bw / scale), round(bh / scale)
        c = center_crop_box(sw, sh, self.size)
        fx, fy = bw / sw, bh / sh  # decoded pixels per source pixel, per axis
        crop = (box[0] + c[0] * fx, box[1] + c[1] * fy, box[0] + c[2] * fx, box[1] + c[3] * fy)
        n = self.size
        if crop == (0, 0, n, n) and im.size == (n, n):
            return im
        if min(crop[2] - crop[0], crop[3] - crop[1]) < n - 1e-6:  # a source under N pixels across
            return im.resize((n, n), Image.Resampling.LANCZOS, box=crop)
        return area_resize(im, crop, n)

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
