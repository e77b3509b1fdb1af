"""What the three trainers (``train_autoencoder``, ``train_prior``, ``train_clip``) share besides
checkpoints (``checkpoint``) and processes (``distributed``): the checks of the config fields they
all have, the precision choice, and the row format of ``metrics.jsonl``. One copy each, so a
changed rule (say, a new precision) reaches every trainer at once."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from t2i_data.errors import T2IError

PRECISIONS = ("auto", "fp32", "bf16")


def check_train_config(cfg, archs: dict, needed: tuple[str, ...], needed_message: str, at_least_one: tuple[str, ...]) -> None:
    """The checks every trainer's config shares, in this order: ``max_lost`` a share 0..1, ``arch``
    one of ``archs``, every field in ``needed`` (input and output folders) given, ``precision``
    one of ``PRECISIONS``, and the counts in ``at_least_one`` >= 1. Raises ``T2IError`` at the first
    that fails, naming the value and what is allowed (``needed_message`` for a missing folder)."""
    if not 0 <= cfg.max_lost <= 1:
        raise T2IError(f"max_lost is a share of an epoch's samples, 0..1, got {cfg.max_lost}")
    if cfg.arch not in archs:
        raise T2IError(f"arch must be one of {', '.join(archs)}, got {cfg.arch!r}")
    if not all(getattr(cfg, name) for name in needed):
        raise T2IError(needed_message)
    if cfg.precision not in PRECISIONS:
        raise T2IError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    for name in at_least_one:
        if getattr(cfg, name) < 1:
            raise T2IError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: always for "bf16", for "auto" on a GPU
    only (fp32 on CPU), never for "fp32"."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def append_metrics(path: Path, row: dict) -> None:
    """Append ``row`` as one JSON line to a trainer's ``metrics.jsonl``; a resumed run appends to
    the same file, after the rows of the run it continues."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
