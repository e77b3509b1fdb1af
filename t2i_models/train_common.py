"""What the three trainers (``train_autoencoder``, ``train_prior``, ``train_clip``) share besides
checkpoints (``checkpoint``) and processes (``distributed``): the checks of the config fields they
all have, the run's length and learning-rate schedule, the optimizer, gradient clipping, the
torch settings for the device (TF32, CPU threads), progress lines, and the row format of
``metrics.jsonl``. One copy each, so a changed rule (say, a new schedule) reaches every trainer
at once.

Schedule (issue 17; the thesis' Tables 5-8 give Adam, a base rate and "×0.1 at epochs 5 and 10"
or "at 20"): ``lr(step, epoch) = lr × shape(step, epoch) × warmup(step)`` with
``warmup(step) = min(1, (step + 1) / warmup)`` (1 when ``warmup`` = 0) and ``shape``:

- ``multistep``: ``lr_gamma`` to the number of ``milestones`` (in epochs) at or below the current
  epoch, exactly ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch (the rate is
  multiplied by one ``lr_gamma`` at a time, as MultiStepLR does, so the floats are equal);
- ``cosine``: after warmup, a half cosine from 1 down to 0.1 at the run's last step (the prior's
  schedule before issue 17);
- ``constant``: 1;
- ``linear``: after warmup, a straight line from the peak down to 0 at the next of ``restarts``
  or, after the last, at the run's end. ``restarts`` = [[step, rate], ...] start a new peak
  ``rate`` at that optimizer step (for the ``lr`` group; a group with another base rate scales
  it by its base / ``lr``): the DALL·E reproduction's "10 warm-up steps to ... 0.003 and ... a
  linear schedule until 10.000 steps, from where we increased the learning rate to 0.0018 until
  25.000 steps where it was increased to 0.0015 again, still applying the linear schedule" (seed
  004, §2.2.2) is ``lr = 3e-3, warmup = 10, restarts = [[10000, 1.8e-3], [25000, 1.5e-3]]``. The
  seed does not say where each line ends; "increased" at step 10,000 fits a line that reached 0
  there (a line to 0 at step 50,000 would still be at 2.4e-3, above the new 1.8e-3), so each
  segment ends at the next restart. After warmup the line is transformers' linear schedule
  (``get_linear_schedule_with_warmup``: ``(end - step) / (end - start)``); its warmup is
  ``step / warmup`` (0 at the first step), this module's ``(step + 1) / warmup`` for every schedule.
"""
from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch

from t2i_data.errors import T2IError

from .tracking import check_tracker, log_row

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("multistep", "cosine", "constant", "linear")
COSINE_FLOOR = 0.1  # the cosine schedule ends at 10% of lr


def check_train_config(cfg, archs: dict, needed: tuple[str, ...], needed_message: str, at_least_one: tuple[str, ...]) -> None:
    """The checks every trainer's config shares, in this order: ``max_lost`` a share 0..1, ``arch``
    one of ``archs``, every field in ``needed`` (input and output folders) given, ``precision``
    one of ``PRECISIONS``, ``tracker`` one of ``tracking.TRACKERS``, the counts in
    ``at_least_one`` >= 1, then the length and schedule (``check_schedule``). Raises ``T2IError`` at the first that fails, naming the value and what
    is allowed (``needed_message`` for a missing folder)."""
    if not 0 <= cfg.max_lost <= 1:
        raise T2IError(f"max_lost is a share of an epoch's samples, 0..1, got {cfg.max_lost}")
    if cfg.arch not in archs:
        raise T2IError(f"arch must be one of {', '.join(archs)}, got {cfg.arch!r}")
    if not all(getattr(cfg, name) for name in needed):
        raise T2IError(needed_message)
    if cfg.precision not in PRECISIONS:
        raise T2IError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    check_tracker(getattr(cfg, "tracker", "none"))
    for name in at_least_one:
        if getattr(cfg, name) < 1:
            raise T2IError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    check_schedule(cfg)


def check_schedule(cfg) -> None:
    """``T2IError`` for a length or schedule a trainer cannot run: neither ``steps`` nor ``epochs``
    (> 0), a negative count, an ``optimizer`` or ``lr_schedule`` that is not known, ``milestones``
    that are not whole numbers >= 0 in increasing order, a rate or ``lr_gamma`` that is not > 0,
    a negative ``weight_decay``, ``warmup`` or ``grad_clip``, an ``eval_every`` < 0, or
    ``restarts`` that the linear schedule cannot take (``check_restarts``)."""
    for name in ("steps", "epochs", "warmup", "eval_every"):
        if getattr(cfg, name, 0) < 0:
            raise T2IError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.steps <= 0 and cfg.epochs <= 0:
        raise T2IError("steps=N or epochs=N needed: the run's length in optimizer steps, or in epochs of the train split "
                       "(steps wins when both are given)")
    if cfg.optimizer not in OPTIMIZERS:
        raise T2IError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise T2IError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    ms = list(cfg.milestones)
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in ms):
        raise T2IError(f"milestones are epochs, whole numbers >= 0, got {ms}")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise T2IError(f"milestones must increase (epochs at which the rate is multiplied by lr_gamma), got {ms}")
    for name in ("lr", "lr_gamma"):
        if not getattr(cfg, name) > 0:
            raise T2IError(f"{name} must be > 0, got {getattr(cfg, name)}")
    check_restarts(cfg)
    for name in ("weight_decay", "grad_clip"):
        if getattr(cfg, name) < 0:
            raise T2IError(f"{name} must be >= 0 (0 = off), got {getattr(cfg, name)}")


def check_restarts(cfg) -> None:
    """``restarts`` (trainers without the field have none): [step, rate] pairs for
    ``lr_schedule = "linear"`` only, steps whole numbers after the warmup, increasing, before the
    run's end when ``steps`` gives it; rates finite and > 0. ``T2IError`` naming the value."""
    restarts = list(getattr(cfg, "restarts", ()))
    if not restarts:
        return
    if cfg.lr_schedule != "linear":
        raise T2IError(f"restarts are for lr_schedule=linear (a new peak of the linear decay), got lr_schedule={cfg.lr_schedule!r}")
    for r in restarts:
        if not isinstance(r, (list, tuple)) or len(r) != 2:
            raise T2IError(f"restarts are [step, rate] pairs, e.g. [[10000, 1.8e-3], [25000, 1.5e-3]], got {restarts}")
        step, rate = r
        if isinstance(step, bool) or not isinstance(step, int) or step <= cfg.warmup:
            raise T2IError(f"a restart's step must be a whole optimizer step after the warmup's first line "
                           f"(warmup {cfg.warmup}: at least step {cfg.warmup + 1}), got {step!r}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise T2IError(f"a restart's rate must be > 0, got {rate!r} at step {step}")
    steps = [r[0] for r in restarts]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise T2IError(f"restarts must come in increasing steps, got steps {steps}")
    if cfg.steps > 0 and steps[-1] >= cfg.steps:
        raise T2IError(f"restarts: the restart at step {steps[-1]} is not before the run's end (steps={cfg.steps}); "
                       f"a shorter run needs its own restarts (restarts=[] for none)")


def normal_restarts(restarts) -> list[list]:
    """``restarts`` as [[int step, float rate], ...] (a TOML or JSON list of pairs)."""
    return [[int(step), float(rate)] for step, rate in restarts]


def total_steps(cfg, steps_per_epoch: int) -> int:
    """The run's length in optimizer steps: ``steps`` when > 0, else ``epochs × steps_per_epoch``
    (for the prior, an epoch's micro-batches divided by ``grad_accum``, rounded up: the last
    window of an epoch may be short)."""
    return cfg.steps if cfg.steps > 0 else cfg.epochs * steps_per_epoch


def lr_at(cfg, step: int, epoch: int, total: int, base: float | None = None) -> float:
    """The learning rate of the optimizer step ``step`` (0-based) taken in epoch ``epoch`` of a
    run of ``total`` steps (module docstring), for the base rate ``base`` (default ``cfg.lr``).
    The step schedule multiplies ``lr_gamma`` in one milestone at a time, in MultiStepLR's order,
    so the values are equal to torch's to the last bit."""
    lr = cfg.lr if base is None else base
    if cfg.lr_schedule == "multistep":
        for _ in range(bisect.bisect_right(list(cfg.milestones), epoch)):
            lr = lr * cfg.lr_gamma
    elif cfg.lr_schedule == "cosine":
        t = min(1.0, max(0, step - cfg.warmup) / max(1, total - cfg.warmup))
        lr = lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))
    elif cfg.lr_schedule == "linear":
        lr = _linear(cfg, step, total, lr)
    if cfg.warmup and step < cfg.warmup:
        lr = lr * (step + 1) / cfg.warmup
    return lr


def _linear(cfg, step: int, total: int, base: float) -> float:
    """The linear schedule's rate at ``step`` before warmup (module docstring): the segment that
    holds ``step`` starts at the warmup's end or at a restart, with its peak, and ends at the next
    restart or at ``total``."""
    restarts = getattr(cfg, "restarts", ())
    k = bisect.bisect_right([s for s, _ in restarts], step)  # restarts at or before this step
    if k == 0:
        start, peak = cfg.warmup, base
    else:
        start, rate = restarts[k - 1]
        peak = rate if base == cfg.lr else rate * (base / cfg.lr)
    end = restarts[k][0] if k < len(restarts) else total
    return peak * max(0, end - max(step, start)) / max(1, end - start)


def make_optimizer(cfg, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW (``cfg.optimizer``) over ``groups`` (torch param groups, each with its own
    base ``lr``), ``weight_decay`` from the config; the fused CUDA kernel on a GPU (one launch for
    all parameters instead of a loop over them)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    opt = cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    opt.base_lrs = [g["lr"] for g in opt.param_groups]
    return opt


def after_restore(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """A restored optimizer's groups carry the flags of the machine that saved them: set ``fused``
    for this one (a GPU checkpoint resumed on a CPU would fail, a CPU one on a GPU run unfused).
    The base rates stay this run's (``set_lr`` reads them from ``make_optimizer``, not the groups)."""
    for g in opt.param_groups:
        g["fused"] = device.type == "cuda"
        if g["fused"]:
            g["foreach"] = None


def set_lr(opt: torch.optim.Optimizer, cfg, step: int, epoch: int, total: int) -> list[float]:
    """Every param group's rate for this step: ``lr_at`` from the group's own base rate (the one
    ``make_optimizer`` was given; a restored optimizer keeps this run's). Returns the rates."""
    rates = [lr_at(cfg, step, epoch, total, base) for base in opt.base_lrs]
    for g, lr in zip(opt.param_groups, rates):
        g["lr"] = lr
    return rates


def clip_gradients(params, max_norm: float) -> torch.Tensor | None:
    """``clip_grad_norm_`` when ``max_norm`` > 0: the global gradient norm before clipping, as a
    device tensor (read it on logging steps only: reading it is a host-device sync); None when off."""
    if max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def torch_threads(num_workers: int, local_world: int = 1, cores: int | None = None) -> int:
    """Torch's intra-op threads for a trainer on CPU: the cores this process may use, shared with
    its ``num_workers`` loader processes (one thread each, ``stream._worker_init``) and the other
    ``local_world`` trainer processes of this machine: ``max(1, cores // local_world - num_workers)``.
    On the 2-core machine of issue 17, torch's default 2 threads plus a loader worker ran a small
    prior 4× slower than 1 thread."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_world) - num_workers)


@contextlib.contextmanager
def torch_settings(device: torch.device, num_workers: int):
    """Around a training run: on CUDA, TF32 for fp32 matmuls and convolutions (bf16 autocast
    covers most of the work; what stays fp32 — losses, the CLIP's fp32 reconstructions — runs
    on the tensor cores); on CPU, ``torch_threads`` threads unless OMP_NUM_THREADS says otherwise.
    The previous values come back at the end (tests and notebooks call several trainers)."""
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        elif not os.environ.get("OMP_NUM_THREADS"):
            n = torch_threads(num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            torch.set_num_threads(n)
            log.debug("torch threads: %d (%d loader workers)", n, num_workers)
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


def compiled(module: torch.nn.Module, enabled: bool):
    """``torch.compile(module)`` when ``enabled`` (config ``compile = true``), else ``module``.
    Only the training forward goes through it: checkpoints, grids and evaluation use the plain
    model, so state-dict names stay free of ``_orig_mod.``."""
    return torch.compile(module) if enabled else module


class Progress:
    """A trainer's progress: a tqdm bar on a terminal; elsewhere (Slurm, nohup, a pipe) no bar but
    one plain log line per logging step, ``step S/T (P%) name value ...``."""

    def __init__(self, total: int, initial: int, rank: int, desc: str = "") -> None:
        from tqdm.auto import tqdm

        self.total, self.rank, self.desc = total, rank, desc
        self.plain = rank == 0 and not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="step", desc=desc or None, disable=True if (rank or self.plain) else None)

    def update(self) -> None:
        self.bar.update(1)

    def show(self, step: int, **values) -> None:
        """On a logging step: the bar's postfix, or one log line off a terminal."""
        text = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()}
        if self.plain:
            log.info("%sstep %d/%d (%.0f%%) %s", f"{self.desc}: " if self.desc else "", step, self.total,
                     100 * step / max(1, self.total), " ".join(f"{k} {v}" for k, v in text.items()))
        elif self.rank == 0:
            self.bar.set_postfix(**text)

    def close(self) -> None:
        self.bar.close()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: always for "bf16", for "auto" on a GPU
    only (fp32 on CPU), never for "fp32"."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def append_metrics(path: Path, row: dict) -> None:
    """Append ``row`` as one JSON line to a trainer's ``metrics.jsonl``; a resumed run appends to
    the same file, after the rows of the run it continues. Every trainer logs through here, so a
    row whose ``loss`` is NaN or infinite is written (the record of where it diverged) and then
    stops the run with one ``T2IError`` naming the step, before the next checkpoint would save
    non-finite weights over ``last.pt``. The row also goes to the run's tracker (``tracking``:
    TensorBoard or wandb, when ``tracker`` asks for one), before that stop."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    log_row(path, row)
    loss = row.get("loss")
    if isinstance(loss, float) and not math.isfinite(loss):
        raise T2IError(f"step {row.get('step')}: the {row.get('split', 'train')} loss is {loss} ({path}); training diverged or its "
                       f"inputs hold NaN (weights files, data): lower lr, check them, and resume from the last checkpoint")


def warn_if_not_heldout(flag: str, path: str, split: str | None, train_split: str | None) -> None:
    """Log a warning when the held-out set ``flag=path`` is a training split (its name starts with
    "train", or it is the split being trained on): its figures then measure memorisation. A test or
    validation split (MD-MNIST and CUB ``test``, COCO ``val2017``) passes silently."""
    if split is None:
        return
    if split == train_split or split.startswith("train"):
        log.warning("%s=%s is the %s split, a training split; held-out figures need the test or validation split",
                    flag, path, split)
