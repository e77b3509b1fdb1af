"""What every benchmark here shares: torch's thread count pinned and printed, and the sides of a
comparison timed in alternation in one process, best of N.

Why: on a small machine torch's default threads plus a loader worker oversubscribe the cores (a
prior ran 4× slower with 2 torch threads and a worker than with 1 thread), and a comparison whose
sides run at different moments measures the machine's load as much as the code. Alternating
A, B, A, B, ... and keeping each side's best (its least disturbed run) compares like with like.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable


def add_args(ap: argparse.ArgumentParser, repeats: int = 3, threads: int = 1) -> None:
    """``--repeats`` (rounds; the best of each side counts) and ``--threads`` (torch's threads)."""
    ap.add_argument("--repeats", type=int, default=repeats, help="rounds, sides alternating; each side's best counts")
    ap.add_argument("--threads", type=int, default=threads, help="torch threads (torch.set_num_threads), printed")


def pin_threads(n: int) -> int:
    """Set torch's intra-op threads to ``n`` (>= 1) when torch is installed; returns ``n``."""
    try:
        import torch
    except ImportError:  # a data-only install: nothing to pin
        return n
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each side once per round, in order, for ``repeats`` rounds; each call returns seconds
    (or any figure). Returns every side's figures in round order."""
    out: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(max(1, repeats)):
        for k, fn in sides.items():
            out[k].append(fn())
    return out


def best(times: list[float]) -> float:
    """The least disturbed run: the shortest time."""
    return min(times)


def rounds(values: list[float], spec: str = ".2f") -> str:
    return ", ".join(format(v, spec) for v in values)
