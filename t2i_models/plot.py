"""Training and held-out curves of one or more runs as PNG, drawn with Pillow (``t2i plot``).

Each run folder holds the ``metrics.jsonl`` its trainer appends to: one JSON object per line with
an integer ``step``, ``"split": "test"`` on held-out rows (autoencoder: mse, psnr, bce, codes_used,
perplexity; prior: test_loss) and ``"train"`` or no split on training rows (loss, lr, tau, lambda,
used, perplexity, ...). ``plot_runs`` writes one figure per quantity that any run logged
(``QUANTITIES``: loss, reconstruction and KL terms, learning rate, tau, KL weight, codes used,
perplexity, held-out MSE / PSNR / BCE, CLIP's batch accuracy), the runs overlaid in their own
colours with a legend of their folder names; training curves are solid, held-out ones dashed with
a dot at every evaluation. Noisy training terms (the losses) are drawn raw and faint under their
moving average over a window of ``MA_WINDOW`` = 100 training steps, as the thesis' Figure 19
(the values logged in the last 100 steps; at log_every >= 100 the curve is the raw one). A step logged twice (a run resumed from an
earlier checkpoint) keeps its last row. The learning rate gets a log axis when it spans a factor
of 10 or more (step schedules). The bytes depend on the rows only (no clock, no metadata).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from t2i_data.build import out_folder
from t2i_data.errors import T2IError
from t2i_data.figures import GRID, TEXT, _label, _vertical_label, font, nice_step

MA_WINDOW = 100  # thesis Figure 19: loss curves smoothed by a moving average of window 100
WIDTH, HEIGHT = 960, 480
LEFT, RIGHT, TOP, BOTTOM = 90, 230, 44, 60  # the plot area's margins; the legend sits in the right one
RAW_ALPHA = 70  # of 255: the raw curve under a moving average
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


@dataclass(frozen=True)
class Quantity:
    name: str  # the PNG's file name stem
    title: str
    ylabel: str  # with the unit
    train: tuple[str, ...] = ()  # keys read from training rows, first present wins
    test: tuple[str, ...] = ()  # keys read from held-out rows
    smooth: bool = False  # moving average over the faint raw curve
    log_y: bool = False  # log axis when the values span a factor of 10 or more


QUANTITIES = (
    Quantity("loss", "Loss", "loss (nats per pixel / token; VQ-VAE: MSE)", ("loss",), ("test_loss",), smooth=True),
    Quantity("rec", "Reconstruction term", "per pixel value (BCE nats; VQ-VAE: MSE)", ("rec",), smooth=True),
    Quantity("kl", "KL(code usage || uniform)", "KL divergence (nats)", ("kl",), smooth=True),
    Quantity("commit", "VQ-VAE commitment term", "MSE of encoder outputs to codewords", ("commit",), smooth=True),
    Quantity("lr", "Learning rate", "learning rate", ("lr",), log_y=True),
    Quantity("tau", "Gumbel-softmax temperature tau", "tau (dimensionless)", ("tau",)),
    Quantity("kl_weight", "KL weight", "KL weight lambda (dimensionless)", ("lambda", "kl_weight")),
    Quantity("codes_used", "Codes used", "codes used (share of the V codes)", ("used", "codes_used"), ("codes_used",)),
    Quantity("perplexity", "Code perplexity (train: per batch; held-out: whole set)", "perplexity (codes, at most V)",
             ("perplexity",), ("perplexity",)),
    Quantity("mse", "Reconstruction MSE", "MSE per pixel value (pixels in [0, 1])", ("mse",), ("mse",)),
    Quantity("psnr", "Reconstruction PSNR (mean over images)", "PSNR (dB)", ("psnr",), ("psnr",)),
    Quantity("bce", "Reconstruction BCE", "BCE per pixel value (nats)", ("bce",), ("bce",)),
    Quantity("batch_acc", "CLIP in-batch accuracy", "share of the batch matched", ("batch_acc",), smooth=True),
)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``; ``T2IError`` naming the folder when there is none or
    it has no rows, naming the file and line for a line that is not a JSON object with an integer step."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise T2IError(f"{run_dir}: no such folder; give the out= folders of t2i training runs")
    if not path.is_file():
        raise T2IError(f"{run_dir}: no metrics.jsonl; give the out= folder of a t2i training run")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise T2IError(f"{path}, line {i}: not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
                raise T2IError(f"{path}, line {i}: not a metrics row (a JSON object with an integer step)")
            rows.append(row)
    if not rows:
        raise T2IError(f"{run_dir}: metrics.jsonl is empty; the run has not logged a step yet")
    return rows


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def series(rows: list[dict], keys: tuple[str, ...], held_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the first of ``keys`` present in each training (or held-out) row, by
    step, the last row winning for a step logged twice; non-finite values are left out."""
    by_step: dict[int, float] = {}
    for row in rows:
        if (row.get("split", "train") != "train") != held_out:
            continue
        v = next((_number(row[k]) for k in keys if k in row), None)
        if v is not None:
            by_step[row["step"]] = v
    steps = sorted(by_step)
    return np.array(steps, dtype=np.float64), np.array([by_step[s] for s in steps], dtype=np.float64)


def moving_average(steps: np.ndarray, v: np.ndarray, window: int = MA_WINDOW) -> np.ndarray:
    """Trailing mean of the values ``v`` logged at ``steps`` (increasing) whose step lies in
    (s - window, s] for each logged step s: a window of ``window`` training steps, as the thesis'
    Figure 19 ("window size of 100 iterations"), whatever ``log_every`` was (a window of logged
    rows would average over 5,000 steps at log_every 50). Shapes (n,) float64 -> (n,)."""
    c = np.cumsum(np.concatenate([[0.0], v]))
    hi = np.arange(1, len(v) + 1)
    lo = np.searchsorted(steps, steps - window, side="right")
    return (c[hi] - c[lo]) / (hi - lo)


def _ticks(lo: float, hi: float, n: int = 6) -> tuple[list[float], float]:
    step = nice_step(hi - lo, n)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, max(last, first + 1) + 1)], step


def _tick_text(v: float) -> str:
    return "0" if v == 0 else f"{v:.6g}"


def _dashed(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], color, dash: float = 7, gap: float = 5, width: int = 2) -> None:
    """A dashed polyline; the dash pattern runs on across vertices."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        seg = math.hypot(x1 - x0, y1 - y0)
        t = 0.0
        while t < seg:
            u = min(seg, t + left)
            if on:
                a, b = t / seg, u / seg
                d.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=color, width=width)
            left -= u - t
            t = u
            if left <= 1e-9:
                on = not on
                left = dash if on else gap


def _fit(d: ImageDraw.ImageDraw, text: str, fnt, width: float) -> str:
    """``text`` shortened from the left with '...' to fit ``width`` px (run names end in what differs)."""
    if d.textlength(text, font=fnt) <= width:
        return text
    while text and d.textlength("..." + text, font=fnt) > width:
        text = text[1:]
    return "..." + text


def line_chart(runs: list[tuple[str, dict]], q: Quantity) -> Image.Image:
    """One figure: ``runs`` = [(name, {"train": (steps, values), "test": (steps, values)})]."""
    img = Image.new("RGBA", (WIDTH, HEIGHT), (255, 255, 255, 255))
    d = ImageDraw.Draw(img)
    big, small = font(16), font(12)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP  # plot area; y grows downwards
    curves = [s for _, parts in runs for s in parts.values() if len(s[0])]
    steps = np.concatenate([s for s, _ in curves])
    values = np.concatenate([v for _, v in curves])
    smax = max(float(steps.max()), 1.0)
    lo, hi = float(values.min()), float(values.max())
    log_y = q.log_y and lo > 0 and hi / lo >= 10
    if log_y:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        yticks = [10.0**k for k in range(a, b + 1)]
        ylo, yhi = math.log10(yticks[0]), math.log10(yticks[-1])
        ypos = lambda v: y0 - (np.log10(v) - ylo) / (yhi - ylo) * (y0 - y1)  # noqa: E731
    else:
        if hi - lo < 1e-12 * max(1.0, abs(hi)):  # a constant: a band around it
            pad = abs(hi) * 0.05 or 0.5
            lo, hi = lo - pad, hi + pad
        yticks, _ = _ticks(lo, hi)
        ylo, yhi = yticks[0], yticks[-1]
        ypos = lambda v: y0 - (np.asarray(v) - ylo) / (yhi - ylo) * (y0 - y1)  # noqa: E731
    xticks, _ = _ticks(0.0, smax, 8)
    xmax = xticks[-1]
    xpos = lambda s: x0 + np.asarray(s) / xmax * (x1 - x0)  # noqa: E731
    for v in yticks:  # grid and y ticks
        y = float(ypos(v))
        d.line([(x0, y), (x1, y)], fill=GRID)
        text = _tick_text(v)
        d.text((x0 - 8 - d.textlength(text, font=small), y - 7), text, fill=TEXT, font=small)
    for v in xticks:
        x = float(xpos(v))
        d.line([(x, y0), (x, y1)], fill=GRID)
        text = _label(v)
        d.text((x - d.textlength(text, font=small) / 2, y0 + 6), text, fill=TEXT, font=small)
    # curves: faint raw ones first, then moving averages and unsmoothed training curves, then held-out
    raw = Image.new("RGBA", img.size, (0, 0, 0, 0))
    rd = ImageDraw.Draw(raw)
    for i, (_, parts) in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        s, v = parts.get("train", ((), ()))
        if len(s) and q.smooth:
            rd.line(list(zip(xpos(s).tolist(), ypos(v).tolist())), fill=color + (RAW_ALPHA,), width=1)
    img = Image.alpha_composite(img, raw)
    d = ImageDraw.Draw(img)
    for i, (_, parts) in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        s, v = parts.get("train", ((), ()))
        if len(s):
            pts = list(zip(xpos(s).tolist(), ypos(moving_average(s, v) if q.smooth else v).tolist()))
            d.line(pts, fill=color, width=2) if len(pts) > 1 else d.ellipse(_dot(pts[0], 2), fill=color)
        s, v = parts.get("test", ((), ()))
        if len(s):
            pts = list(zip(xpos(s).tolist(), ypos(v).tolist()))
            _dashed(d, pts, color)
            for p in pts:
                d.ellipse(_dot(p, 3), fill=color)
    d.line([(x0, y0), (x1, y0)], fill=TEXT, width=2)
    d.line([(x0, y0), (x0, y1)], fill=TEXT, width=2)
    # labels, title, legend
    xlabel = "step (optimizer updates)"
    d.text(((x0 + x1 - d.textlength(xlabel, font=big)) / 2, HEIGHT - 30), xlabel, fill=TEXT, font=big)
    _vertical_label(img, q.ylabel + (" (log scale)" if log_y else ""), font(14), 4, (y0 + y1) // 2)
    d.text(((x0 + x1 - d.textlength(q.title, font=big)) / 2, 12), q.title, fill=TEXT, font=big)
    _legend(d, runs, q, x1 + 16, y1, small)
    return img.convert("RGB")


def _dot(p: tuple[float, float], r: float) -> list[float]:
    return [p[0] - r, p[1] - r, p[0] + r, p[1] + r]


def _legend(d: ImageDraw.ImageDraw, runs, q: Quantity, x: float, y: float, fnt) -> None:
    width = WIDTH - x - 8
    for i, (name, parts) in enumerate(runs):
        if not parts:  # this run did not log the quantity; its colour stays its own in every figure
            continue
        d.line([(x, y + 8), (x + 22, y + 8)], fill=COLORS[i % len(COLORS)], width=3)
        d.text((x + 28, y), _fit(d, name, fnt, width - 28), fill=TEXT, font=fnt)
        y += 18
    y += 10
    has_train = any(len(p.get("train", ((),))[0]) for _, p in runs)
    has_test = any(len(p.get("test", ((),))[0]) for _, p in runs)
    keys = []
    if has_train:
        keys.append(("solid", f"training, moving average over {MA_WINDOW} steps" if q.smooth else "training"))
        if q.smooth:
            keys.append(("faint", "training, raw"))
    if has_test:
        keys.append(("dashed", "held-out (test split)"))
    for style, text in keys:
        if style == "dashed":
            _dashed(d, [(x, y + 8), (x + 22, y + 8)], TEXT, dash=5, gap=3)
            d.ellipse(_dot((x + 11, y + 8), 3), fill=TEXT)
        else:
            d.line([(x, y + 8), (x + 22, y + 8)], fill=TEXT if style == "solid" else (200, 200, 200), width=2 if style == "solid" else 1)
        d.text((x + 28, y), _fit(d, text, fnt, width - 28), fill=TEXT, font=fnt)
        y += 18


def run_names(run_dirs: list[str]) -> list[str]:
    """Each run's folder name, with its parent where two runs share a name."""
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def plot_runs(run_dirs: list[str], out: str) -> list[Path]:
    """One PNG (``WIDTH`` × ``HEIGHT``) per quantity of ``QUANTITIES`` that any of the runs logged,
    written as ``out/<quantity>.png``; returns their paths in ``QUANTITIES`` order. ``T2IError``
    for no runs, a run without rows (naming the folder), a malformed line (naming file and line),
    or runs that logged none of the quantities."""
    if not run_dirs:
        raise T2IError("give at least one run folder to plot")
    rows = [read_metrics(r) for r in run_dirs]
    names = run_names(run_dirs)
    outdir = Path(out)
    written = []
    for q in QUANTITIES:
        runs = []
        for name, r in zip(names, rows):
            parts = {"train": series(r, q.train, False), "test": series(r, q.test, True)}
            runs.append((name, {k: v for k, v in parts.items() if len(v[0])}))
        if not any(parts for _, parts in runs):
            continue
        out_folder(outdir, "the figures")
        path = outdir / f"{q.name}.png"
        line_chart(runs, q).save(path, format="PNG", optimize=False)
        written.append(path)
    if not written:
        found = sorted({k for r in rows for row in r for k in row} - {"step", "epoch", "split"})
        raise T2IError(f"{', '.join(map(str, run_dirs))}: none of the plotted quantities ({', '.join(q.name for q in QUANTITIES)}) "
                       f"in metrics.jsonl; found {', '.join(found) or 'only steps'}")
    return written
