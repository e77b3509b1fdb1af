"""Charts as PNG, drawn with Pillow alone (matplotlib is not a dependency); every chart the
project writes comes from here.

- ``bar_chart``: grouped bars, one group per category and one bar per series, with a y axis of
  round ticks and a grid, a legend and an optional log-scaled count axis (the CTRS table of the
  MD-MNIST evaluation). The other two draw through it:
- ``histogram_png``: counts over consecutive integer values (caption and token lengths, code
  usage), labelled at round values. Values wider than the plot are grouped into equal bins, and
  the title says how many values a bar covers.
- ``value_histogram`` bins real values (per-sample losses).

The bytes depend on the values and labels only (Pillow's default font, no clock, no metadata), so
reruns write the same file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 900, 460  # histograms
CHART_W, CHART_H = 900, 480  # grouped bar charts
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 50, 70  # plot margins
BAR, GRID, TEXT = (52, 101, 164), (225, 225, 225), (20, 20, 20)
SERIES_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def font(size: int):
    """Pillow's default font at ``size`` px (FreeType), or its fixed bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def nice_step(span: float, target: int) -> float:
    """A 1, 2 or 5 × 10^k step giving about ``target`` intervals over ``span``."""
    raw = max(span, 1e-12) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _vertical_label(im: Image.Image, text: str, fnt, x: int, y_center: int) -> None:
    """``text`` rotated 90° (read bottom to top), its left edge at x, centred on y_center."""
    band = Image.new("RGB", (int(ImageDraw.Draw(im).textlength(text, font=fnt)) + 4, 22), (255, 255, 255))
    ImageDraw.Draw(band).text((2, 2), text, fill=TEXT, font=fnt)
    band = band.rotate(90, expand=True)
    im.paste(band, (x, max(0, y_center - band.height // 2)))


def _label(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def dense_counts(hist: Mapping[int, int] | Sequence[int], start: int | None = None) -> tuple[int, np.ndarray]:
    """(first value, counts for first..last value) from {value: count} or a list indexed from 0."""
    if isinstance(hist, Mapping):
        if not hist:
            return 0, np.zeros(1, np.int64)
        keys = sorted(int(k) for k in hist)
        lo = keys[0] if start is None else min(start, keys[0])
        out = np.zeros(keys[-1] - lo + 1, np.int64)
        for k, v in hist.items():
            out[int(k) - lo] += int(v)
        return lo, out
    return (start or 0), np.asarray(hist, dtype=np.int64)


def histogram_png(path: str | Path, hist: Mapping[int, int] | Sequence[int], title: str, xlabel: str,
                  ylabel: str = "count", start: int | None = None) -> Path:
    """Draw counts over consecutive integer values (a dict {value: count} or a list from 0): a
    one-series ``bar_chart`` whose x labels sit under the bars holding round values."""
    x0, counts = dense_counts(hist, start)
    nvals = len(counts)
    per_bar = max(1, math.ceil(nvals / (WIDTH - LEFT - RIGHT)))  # values per bar when there are more values than pixels
    if per_bar > 1:
        counts = np.pad(counts, (0, -len(counts) % per_bar)).reshape(-1, per_bar).sum(axis=1)
        title += f" ({per_bar} values per bar)"
    xstep = max(1, int(nice_step(nvals, 10)))
    labels = []
    for i in range(len(counts)):  # the first multiple of xstep among the values of bar i, if any
        lo = x0 + i * per_bar
        v = lo + (-lo % xstep)
        labels.append(_label(v) if v < min(lo + per_bar, x0 + nvals) else "")
    im = bar_chart([("", counts.tolist())], labels, title, xlabel, ylabel, size=(WIDTH, HEIGHT), colors=(BAR,))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=False)
    return path


def _nice_ticks(top: float, n: int = 5, integer: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``top``; with ``integer``, steps of at least 1 (counts)."""
    if top <= 0:
        return [0.0, 1.0]
    step = max(1, nice_step(top, n)) if integer else nice_step(top, n)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"


def bar_chart(series: list[tuple[str, list[float]]], categories: list[str], title: str, xlabel: str, ylabel: str,
              log_y: bool = False, label_every: int = 1, size: tuple[int, int] = (CHART_W, CHART_H),
              colors: Sequence[tuple[int, int, int]] = SERIES_COLORS) -> Image.Image:
    """One group of bars per category, one bar per series in it; an empty category name draws no
    label, an empty series name no legend entry. ``log_y``: bar heights on a log10(1 + count)
    scale with ticks at 1, 10, 100, ... (for counts). Integer data get integer ticks."""
    width, height_px = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    big, small = font(16), font(12)
    x0, x1, y0, y1 = LEFT, width - RIGHT, height_px - BOTTOM, TOP  # plot area; y grows downwards
    peak = max([max(v) if v else 0 for _, v in series] + [0])
    if log_y:  # heights ∝ log10(1 + count); the axis ends at the power of ten above the peak
        top_value = 10 ** math.ceil(math.log10(max(peak, 1)))
        top_value = top_value * 10 if top_value <= peak else top_value
        top = math.log10(1 + top_value)
        height = lambda v: math.log10(1 + max(v, 0)) / top  # noqa: E731
        marks = [m * 10**k for k in range(int(math.log10(top_value)) + 1) for m in (1, 2, 5) if m * 10**k <= top_value]
        if len(marks) > 8:
            marks = [10**k for k in range(int(math.log10(top_value)) + 1)]
        tick_pos = [(0, 0.0)] + [(v, height(v)) for v in marks]
    else:
        vals = _nice_ticks(peak, integer=all(float(v).is_integer() for _, vs in series for v in vs))
        top = vals[-1] or 1.0
        height = lambda v: max(v, 0) / top  # noqa: E731
        tick_pos = [(v, v / top) for v in vals]
    # axes, grid lines and y ticks
    for lab, f in tick_pos:
        y = y0 - f * (y0 - y1)
        d.line([(x0, y), (x1, y)], fill=GRID)
        d.line([(x0 - 5, y), (x0, y)], fill=TEXT)
        text = _fmt(lab)
        d.text((x0 - 8 - d.textlength(text, font=small), y - 7), text, fill=TEXT, font=small)
    d.line([(x0, y0), (x1, y0)], fill=TEXT, width=2)
    d.line([(x0, y0), (x0, y1)], fill=TEXT, width=2)
    # bars
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group = (x1 - x0) / n_cat
    bar = max(1.0, group * 0.8 / n_ser)
    for c, name in enumerate(categories):
        gx = x0 + c * group + group * 0.1
        for s, (_, values) in enumerate(series):
            v = values[c] if c < len(values) else 0
            if v > 0:
                top_y = min(y0 - height(v) * (y0 - y1), y0 - 1)  # at least one pixel for any count
                d.rectangle([gx + s * bar, top_y, gx + (s + 1) * bar - (1 if bar > 3 else 0), y0 - 1], fill=colors[s % len(colors)])
        if name and c % max(label_every, 1) == 0:
            cx = x0 + (c + 0.5) * group
            d.line([(cx, y0), (cx, y0 + 4)], fill=TEXT)
            d.text((cx - d.textlength(name, font=small) / 2, y0 + 6), name, fill=TEXT, font=small)
    # labels, title, legend
    d.text(((x0 + x1 - d.textlength(xlabel, font=big)) / 2, height_px - 30), xlabel, fill=TEXT, font=big)
    _vertical_label(img, ylabel + (" (log scale)" if log_y else ""), big, 6, (y0 + y1) // 2)
    d.text(((width - d.textlength(title, font=big)) / 2, 12), title, fill=TEXT, font=big)
    lx = x1 - 10
    for s, (label, _) in reversed(list(enumerate(series))):
        if not label:
            continue
        lx -= d.textlength(label, font=small) + 26
        d.rectangle([lx, 36, lx + 14, 46], fill=colors[s % len(colors)])
        d.text((lx + 18, 34), label, fill=TEXT, font=small)
    return img


def value_histogram(series: list[tuple[str, list[float]]], bins: int, title: str, xlabel: str, log_y: bool = True):
    """Counts of each series over ``bins`` equal-width bins spanning all values: (image, edges, counts)."""
    values = [v for _, vs in series for v in vs]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins + 1)]
    counts = []
    for _, vs in series:
        c = [0] * bins
        for v in vs:
            c[min(int((v - lo) / width), bins - 1)] += 1
        counts.append(c)
    cats = [f"{(edges[i] + edges[i + 1]) / 2:.3g}" for i in range(bins)]
    img = bar_chart([(label, c) for (label, _), c in zip(series, counts)], cats, title, xlabel, "samples", log_y=log_y,
                    label_every=max(1, bins // 8))
    return img, edges, counts


CLASS_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))  # matplotlib's tab10


def scatter_chart(points: np.ndarray, groups: Sequence[int], names: Sequence[str], title: str, xlabel: str, ylabel: str,
                  size: tuple[int, int] = (900, 640)) -> Image.Image:
    """Points (N, 2) as dots coloured by group (``groups[i]`` indexes ``names``; colours cycle
    through ``CLASS_COLORS``), with round ticks on both axes and a legend of ``names`` on the right
    (the latent-space figures of ``t2i train cvae``). Later points are drawn over earlier ones."""
    width, height_px = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    big, small = font(16), font(12)
    legend_w = int(max([d.textlength(n, font=small) for n in names] + [0])) + 40
    x0, x1, y0, y1 = LEFT, width - RIGHT - legend_w, height_px - BOTTOM, TOP
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lo = pts.min(0) if len(pts) else np.zeros(2)
    hi = pts.max(0) if len(pts) else np.ones(2)
    hi = np.where(hi > lo, hi, lo + 1)
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    px = lambda v: x0 + (v - lo[0]) / (hi[0] - lo[0]) * (x1 - x0)  # noqa: E731
    py = lambda v: y0 - (v - lo[1]) / (hi[1] - lo[1]) * (y0 - y1)  # noqa: E731
    for axis in (0, 1):
        step = nice_step(hi[axis] - lo[axis], 6)
        v = math.ceil(lo[axis] / step) * step
        while v <= hi[axis]:
            text = _fmt(v) if abs(v) >= 1 or v == 0 else f"{v:.2g}"
            if axis == 0:
                d.line([(px(v), y0), (px(v), y1)], fill=GRID)
                d.text((px(v) - d.textlength(text, font=small) / 2, y0 + 6), text, fill=TEXT, font=small)
            else:
                d.line([(x0, py(v)), (x1, py(v))], fill=GRID)
                d.text((x0 - 8 - d.textlength(text, font=small), py(v) - 7), text, fill=TEXT, font=small)
            v += step
    for (x, y), g in zip(pts, groups):
        c = CLASS_COLORS[int(g) % len(CLASS_COLORS)]
        d.ellipse([px(x) - 2.5, py(y) - 2.5, px(x) + 2.5, py(y) + 2.5], fill=c)
    d.rectangle([x0, y1, x1, y0], outline=TEXT, width=1)
    d.text(((x0 + x1 - d.textlength(xlabel, font=big)) / 2, height_px - 30), xlabel, fill=TEXT, font=big)
    _vertical_label(img, ylabel, big, 6, (y0 + y1) // 2)
    d.text(((width - d.textlength(title, font=big)) / 2, 12), title, fill=TEXT, font=big)
    for i, name in enumerate(names):
        y = y1 + 4 + i * 20
        d.rectangle([x1 + 16, y + 2, x1 + 28, y + 14], fill=CLASS_COLORS[i % len(CLASS_COLORS)])
        d.text((x1 + 34, y), name, fill=TEXT, font=small)
    return img
