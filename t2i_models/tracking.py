"""Runs you can watch: an optional TensorBoard or wandb writer beside a trainer's ``metrics.jsonl``.

Every trainer config has ``tracker`` (``TRACKERS``): "none" (the default: ``metrics.jsonl`` and the
PNGs only), "tensorboard" (event files in ``<out>/tensorboard``, read by ``tensorboard --logdir
<out>``) or "wandb" (a wandb run; its local files go into ``<out>/wandb``). ``t2i train ...
--tracker tensorboard`` or ``tracker=tensorboard`` sets it; so does ``tracker = "tensorboard"`` in a
pipeline's ``[train_*]`` table (``t2i run`` leaves it out of a stage's identity: watching a run
changes nothing in its outputs).

What is logged, and where it comes from, so the tracker and ``metrics.jsonl`` never disagree:

- every row ``train_common.append_metrics`` writes (train rows with ``lr``, the held-out rows of
  every trainer, the CVAE's held-out row), at the row's ``step``, each number as the scalar
  ``<split>/<key>`` (``train/loss``, ``train/lr``, ``test/psnr``; a nested dict's numbers as
  ``<split>/<key>/<sub>``); strings, lists and None are not scalars and are left out. The row
  goes to the tracker before a non-finite loss stops the run, so the divergence is visible there too;
- the image grids and figures the trainers already write as PNGs (the autoencoder's
  ``grid-*.png``; the CVAE's ``samples.png``, latent and loss figures; the regression's
  ``histograms.png`` and ``decoded.png``), the PNG's pixels as written;
- the resolved config, once, as text (TensorBoard) or the run's config (wandb).

The prior and CLIP trainers write no figures, so they log scalars only. Rows the stream's
``LostSamples`` appends (``t2i_data.stream``, lost samples) bypass ``append_metrics`` and are not
logged; every train row carries ``lost_in_epoch``.

Only rank 0 writes under DDP (it is the only rank that calls ``append_metrics``); every rank checks
that the tracker's package is installed, so a missing one stops all ranks at once. A package asked
for and not installed is one ``T2IError`` naming it (``t2i_data.extras.require``); never a silent
fallback to "none".

The writer opens at the first value logged. TensorBoard's opens with ``purge_step`` = that step: a
run resumed from ``last.pt`` hides the events an interrupted run wrote at or after the step the
resume logs first (those the resumed run writes again), as ``metrics.jsonl`` readers take the last
row of a step. wandb starts a new wandb run each time (``WANDB_RUN_ID`` with ``WANDB_RESUME=allow``
continues one, wandb's own settings); its project is ``WANDB_PROJECT`` (default "t2i-data"), its mode
``WANDB_MODE`` ("offline" for no account), both wandb's own environment variables.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from t2i_data.errors import T2IError
from t2i_data.extras import require

log = logging.getLogger(__name__)
TRACKERS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"  # under the run's out folder
WANDB_DIR = "wandb"
DEFAULT_PROJECT = "t2i-data"
_ACTIVE: dict[str, "Tracker"] = {}  # abspath of a metrics.jsonl -> the tracker its rows also go to


class Tracker:
    """The interface, and the null tracker (``tracker = "none"``): every call does nothing."""

    name = "none"

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """``values``: {tag: number} at optimizer step ``step`` (an int >= 0)."""

    def log_image(self, tag: str, step: int, image) -> None:
        """``image``: a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), or the path of a PNG
        (any mode; stored as RGB, or RGBA when it has alpha)."""

    def close(self) -> None:
        """Flush and close; safe to call twice, and when nothing was logged."""


NullTracker = Tracker


def check_tracker(name: str) -> None:
    """``T2IError`` unless ``name`` is one of ``TRACKERS`` (a config's ``__post_init__`` calls it)."""
    if name not in TRACKERS:
        raise T2IError(f"tracker must be one of {', '.join(TRACKERS)}, got {name!r}")


def image_array(image) -> np.ndarray:
    """``image`` (``Tracker.log_image``) as a uint8 (H, W, C) array, C in 1, 3, 4. ``ValueError``
    for an array of another dtype or shape (a caller's bug, not a user's)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            return np.asarray(im)
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image to log is uint8 (H, W[, 1|3|4]); got {a.dtype} {a.shape}")
    return a


def _folder_or_nothing(path: Path, what: str) -> None:
    """``T2IError`` before training starts when ``path``, the tracker's folder, is there and not a folder."""
    if path.exists() and not path.is_dir():
        raise T2IError(f"{path}: a file where {what} writes its folder; move it away or choose another out")


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter`` (module
    docstring: opened at the first value, with ``purge_step``). Scalars are stored as float32
    (TensorBoard's format); images as the PNG TensorBoard encodes from the uint8 pixels, unscaled."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, config: dict | None = None) -> None:
        require("tensorboard", "tracker=tensorboard")
        self.log_dir, self.config, self.writer = Path(log_dir), config, None
        _folder_or_nothing(self.log_dir, "tracker=tensorboard")

    def _writer(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=step)
            if self.config is not None:
                self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=1, sort_keys=True, default=str) + "\n```", step)
        return self.writer

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        w = self._writer(step)
        for tag, v in values.items():
            w.add_scalar(tag, v, step)

    def log_image(self, tag: str, step: int, image) -> None:
        self._writer(step).add_image(tag, image_array(image), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker(Tracker):
    """A wandb run (module docstring), started at the first value: ``wandb.init(project=WANDB_PROJECT
    or "t2i-data", name=<out folder's name>, dir=<out>/wandb, config=<the resolved config>)``; its
    mode and account are wandb's own settings (``WANDB_MODE``, ``wandb login``). ``T2IError`` when
    wandb is not installed, or when ``wandb.init`` fails (its first line, and what to do)."""

    name = "wandb"

    def __init__(self, out: Path, config: dict | None = None) -> None:
        self.wandb = require("wandb", "tracker=wandb")
        self.out, self.config, self.run = Path(out), config, None
        _folder_or_nothing(self.out / WANDB_DIR, "tracker=wandb")

    def _run(self):
        if self.run is None:
            d = self.out / WANDB_DIR
            d.mkdir(parents=True, exist_ok=True)
            try:
                self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, name=self.out.name, dir=str(d),
                                           config=self.config)
            except Exception as e:  # wandb's own errors (no account, no network) have no common base class
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise T2IError(f"tracker=wandb: wandb.init failed: {first}; run 'wandb login', or set WANDB_MODE=offline") from None
        return self.run

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self._run().log(dict(values), step=step)

    def log_image(self, tag: str, step: int, image) -> None:
        self._run().log({tag: self.wandb.Image(image_array(image))}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def open_tracker(name: str, out: Path, config: dict | None = None) -> Tracker:
    """The tracker ``name`` (``TRACKERS``) for a run writing into ``out``. ``T2IError`` for an
    unknown name or a package that is not installed."""
    check_tracker(name)
    if name == "tensorboard":
        return TensorBoardTracker(Path(out) / TENSORBOARD_DIR, config)
    if name == "wandb":
        return WandbTracker(Path(out), config)
    return NullTracker()


def row_scalars(row: dict) -> dict[str, float]:
    """The scalars of a ``metrics.jsonl`` row (module docstring): {"<split>/<key>": float} for every
    int or float value except ``step`` and ``split`` (bools left out), nested dicts flattened with
    "/". A row without ``split`` is a "train" row."""
    split = row.get("split", "train")
    out: dict[str, float] = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}/{k}", v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}/{k}"] = float(v)

    walk(split, {k: v for k, v in row.items() if k not in ("step", "split")})
    return out


def _key(metrics_path) -> str:
    return os.path.abspath(os.fspath(metrics_path))


def log_row(metrics_path, row: dict) -> None:
    """Send a row just appended to ``metrics_path`` to the tracker attached to that file, if any
    (``train_common.append_metrics`` calls this for every row)."""
    tracker = _ACTIVE.get(_key(metrics_path))
    if tracker is not None and isinstance(row.get("step"), int):
        values = row_scalars(row)
        if values:
            tracker.log_scalars(row["step"], values)


def log_figures(tracker: Tracker, step: int, paths, prefix: str = "figures") -> None:
    """Each PNG of ``paths`` as the image ``<prefix>/<file stem>`` at ``step`` (files that are not
    there, or not PNGs, are skipped: a figure a run did not make)."""
    for p in paths:
        p = Path(p)
        if p.suffix.lower() == ".png" and p.is_file():
            tracker.log_image(f"{prefix}/{p.stem}", step, p)


@contextlib.contextmanager
def tracked(cfg, rank: int) -> Iterator[Tracker]:
    """Around one training run of ``cfg`` (a trainer config with ``out`` and ``tracker``): the
    tracker of ``cfg.tracker`` on rank 0 (the null tracker elsewhere, after the same package
    check), attached to ``<out>/metrics.jsonl`` so ``append_metrics`` rows reach it; detached and
    closed at the end, also when the run fails."""
    name = getattr(cfg, "tracker", "none")
    config = json.loads(json.dumps(dataclasses.asdict(cfg), default=str)) if dataclasses.is_dataclass(cfg) else None
    tracker = open_tracker(name, Path(cfg.out), config)
    if rank != 0:
        tracker = NullTracker()
    key = _key(Path(cfg.out) / "metrics.jsonl")
    if name != "none":
        _ACTIVE[key] = tracker
        log.info("tracker %s: %s", name, Path(cfg.out) / (TENSORBOARD_DIR if name == "tensorboard" else WANDB_DIR))
    try:
        yield tracker
    finally:
        if _ACTIVE.get(key) is tracker:
            del _ACTIVE[key]
        tracker.close()

