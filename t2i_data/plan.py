"""The epoch plan both streams follow: which samples each rank × dataloader worker takes, and how
a resumed run finds its place in it.

Each epoch, the shards are put in a seeded order and their samples numbered along that order;
global worker g of G = world_size × num_workers takes one contiguous range of that numbering (a
range may start or end inside a shard: the split is at sample granularity). Two policies share
this cut (``_cut``) and differ only in the ranges' bounds:

- ``plan_epoch`` (``ShardStream``): ranges of M = ⌊N / G⌋ samples cut down to ⌊M / B⌋ whole
  batches; the N − G·B·⌊M/B⌋ samples left over (fewer than G·B) differ from epoch to epoch
  because the order does.
- ``plan_exact`` (``TokenStream``): ranges of ⌊N/G⌋ or ⌈N/G⌉ samples, every sample once, and
  every worker yields ⌈⌈N/G⌉ / B⌉ batches, the last ones padded.

Either way every worker yields the same number of batches, so every rank takes the same number
of steps (no DDP hang). ``PlannedStream`` is the bookkeeping both streams share on top of it:
the plan a resume state records (``plan``, ``state_dict``), the check that refuses to finish an
epoch under another (``check_plan``), and the worker's share of a resumed epoch
(``worker_share``). Nothing here imports torch at module level (``rank_and_world`` asks
torch.distributed only when called).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from .errors import T2IError
from .rng import stream_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    ranges: list  # per global worker: [(shard index, first sample, stop sample), ...]
    batches: int  # per global worker

    @property
    def samples(self) -> int:
        """Samples the plan hands out over all workers (padding and leftovers excluded)."""
        return sum(b - a for mine in self.ranges for _, a, b in mine)


class Share(NamedTuple):
    """One DataLoader worker's part of an epoch (``PlannedStream.share``)."""

    worker: int  # the global worker it plays: rank × workers + plan worker
    ranges: list  # [(shard, first, stop), ...] in the epoch's order
    batches: int  # batches every worker yields this epoch
    skip: int  # of them, consumed before a resume
    rng: np.random.Generator  # its shuffle generator, from (seed, epoch, global worker, stream)


def _cut(sizes: list[int], order: np.ndarray, bounds: list[tuple[int, int]]) -> list:
    """Per (lo, hi) of ``bounds``: the pieces [(shard, first, stop), ...] of samples lo..hi of the
    numbering along ``order``, in that order."""
    starts = np.cumsum([0] + [sizes[i] for i in order])
    return [[(int(s), int(max(lo, starts[k]) - starts[k]), int(min(hi, starts[k + 1]) - starts[k]))
             for k, s in enumerate(order) if max(lo, starts[k]) < min(hi, starts[k + 1])] for lo, hi in bounds]


def _order(n: int, seed: int, epoch: int, stream: str) -> np.ndarray:
    return np.random.default_rng([seed, epoch, stream_id(stream)]).permutation(n)


def plan_epoch(shard_sizes: list[int], world: int, workers: int, batch: int, seed: int, epoch: int) -> Plan:
    """Whole batches only: global worker w takes samples [w·M, w·M + B·⌊M/B⌋) with M = ⌊N/G⌋.

    ``shard_sizes``: samples per shard, in manifest order; ``workers`` 0 counts as 1. Raises
    ``T2IError`` when a worker would get no batch at all (N < G·B)."""
    g = world * max(workers, 1)
    order = _order(len(shard_sizes), seed, epoch, "shard-order")
    n = sum(shard_sizes)
    m = n // g
    batches = m // batch
    if batches == 0:
        raise T2IError(f"{n} samples cannot give every one of {g} workers a batch of {batch}; use fewer workers or ranks, or a smaller batch")
    return Plan(_cut(shard_sizes, order, [(w * m, w * m + batches * batch) for w in range(g)]), batches)


def plan_exact(sizes: list[int], world: int, workers: int, batch: int, seed: int, epoch: int) -> Plan:
    """Every sample once: the first N mod G workers take ⌈N/G⌉ samples, the rest ⌊N/G⌋, and every
    worker yields ⌈⌈N/G⌉ / B⌉ batches (the consumer pads the short ones). Never raises."""
    g = world * max(workers, 1)
    order = _order(len(sizes), seed, epoch, "token-shard-order")
    per, extra = divmod(sum(sizes), g)
    bounds = [(w * per + min(w, extra), (w + 1) * per + min(w + 1, extra)) for w in range(g)]
    return Plan(_cut(sizes, order, bounds), -(-(per + (extra > 0)) // batch))


def worker_share(batches_done: int, worker: int, workers: int) -> tuple[int, int]:
    """(the plan's worker this DataLoader worker plays, how many of its batches were consumed).

    A fresh DataLoader iterator asks worker 0 first, then round-robin; after ``batches_done``
    batches the plan's next batch belongs to plan worker ``batches_done mod W``, so DataLoader
    worker w plays plan worker (w + batches_done) mod W. Every plan worker yields the same number
    of batches, so the round-robin order holds to the end of the epoch."""
    w = max(workers, 1)
    plan_worker = (worker + batches_done) % w
    consumed = (batches_done - plan_worker + w - 1) // w if batches_done > plan_worker else 0
    return plan_worker, consumed


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given (rank, world size) — ranks simulated in tests — else torch.distributed's, else (0, 1)."""
    if world_size is not None:
        return rank or 0, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


PLAN_LABELS = {"batch_size": "batch_size", "world_size": "world size (ranks)", "num_workers": "num_workers (dataloader workers)",
               "seed": "seed", "shuffle_buffer": "shuffle_buffer", "sets": "shard set digests"}


def _show(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return value[:16] if isinstance(value, str) and len(value) == 64 else repr(value)


def check_plan(saved: dict, plan: dict, where: str) -> tuple[int, int, int]:
    """(epoch, batches done, samples lost so far) of a saved stream state, refusing to finish an
    epoch under a plan other than the one it started with.

    Mid-epoch, another batch size, world size, worker count, seed, shuffle buffer or data set
    would put other samples into the rest of the epoch (some never seen, some twice), so the
    resume stops naming each changed setting, old and new; at an epoch boundary the next epoch
    simply follows the new plan (a warning says so), as after an epoch's last batch. A state saved before plans were recorded
    (``{epoch, batches_done, seed}``) is checked on what it has."""
    epoch, done = int(saved["epoch"]), int(saved["batches_done"])
    if done and done >= saved.get("batches_in_epoch", done + 1):  # saved after the epoch's last batch: the next one starts
        epoch, done, saved = epoch + 1, 0, dict(saved, lost=0)
    old = saved.get("plan", {k: saved[k] for k in ("seed",) if k in saved})
    changed = [f"{PLAN_LABELS.get(k, k)} {_show(old[k])} → {_show(v)}" for k, v in plan.items() if k in old and old[k] != v]
    if changed and done:
        raise T2IError(f"{where} stopped at batch {done} of epoch {epoch}; this run changes the stream plan: {'; '.join(changed)}. "
                       f"Finishing that epoch under another plan would skip some samples and repeat others. Resume with the old "
                       f"value(s) (at least to the end of the epoch), or start fresh with another out= (or remove {where})")
    if changed:
        log.warning("%s: the stream plan changes at the start of epoch %d: %s", where, epoch, "; ".join(changed))
    return epoch, done, int(saved.get("lost", 0))


class PlannedStream:
    """What both streams share besides reading: the epoch plan, the resume position and its check.

    A stream sets ``planner`` (``plan_epoch`` or ``plan_exact``) and calls ``__init__`` with its
    base set's shard sizes and the digests of the sets it reads; ``share`` then gives each
    DataLoader worker its part of the current epoch. ``num_workers`` 0 (no worker processes)
    plans as 1 worker, so 0 and 1 are the same plan."""

    planner: Callable[..., Plan]

    def __init__(self, sizes: list[int], sets: list[str], batch_size: int, seed: int, shuffle_buffer: int,
                 rank: int | None, world_size: int | None) -> None:
        self.sizes, self.sets = sizes, sets
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self._position = np.zeros(2, np.int64)  # (epoch, skip_batches); shared with the workers by ``share_position``
        self._verified = None  # (sets, shards) int64 tags of verified shard versions, once shared (``verified_slot``)

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._position[0] = value

    @property
    def skip_batches(self) -> int:
        return int(self._position[1])

    @skip_batches.setter
    def skip_batches(self, value: int) -> None:
        self._position[1] = value

    def share_position(self) -> None:
        """Keep (epoch, skip_batches) in shared memory (an int64 torch tensor), so DataLoader workers
        kept alive across epochs (``persistent_workers``) read what ``set_epoch`` writes later in the
        main process: a persistent worker's copy of the stream is made once, when it starts, and
        never again. Idempotent; ``stream.loader`` calls it before the workers start."""
        import torch

        if not isinstance(self._position, torch.Tensor):
            self._position = torch.from_numpy(self._position.copy()).share_memory_()
            self._verified = torch.zeros((len(self.sets), len(self.sizes)), dtype=torch.int64).share_memory_()

    def verified_slot(self, set_index: int, shard: int):
        """Where the workers of a shared stream record the shard versions they verified
        (``stream.check_shard_cached``'s ``slot``), so a persistent worker handed another worker's
        shard in a later epoch does not hash it again; None before ``share_position``."""
        return None if self._verified is None else (self._verified, set_index, shard)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_loaders", None)  # the DataLoaders ``stream.loader`` keeps: never sent to a worker
        return state

    def _dist(self) -> tuple[int, int]:
        return rank_and_world(self.rank, self.world_size)

    def _plan(self, num_workers: int, epoch: int) -> Plan:
        return self.planner(self.sizes, self._dist()[1], num_workers, self.batch_size, self.seed, epoch)

    def set_epoch(self, epoch: int, skip_batches: int = 0, num_workers: int = 0) -> None:
        """Start ``epoch`` with its first ``skip_batches`` batches of this rank already consumed
        (resume, at any batch). Call it before iterating; with ``share_position`` the workers of a
        DataLoader already running see it when its next iterator starts."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def plan(self, num_workers: int) -> dict:
        """Everything the sample → (rank, batch) assignment depends on besides the epoch."""
        return {"batch_size": self.batch_size, "world_size": self._dist()[1], "num_workers": max(num_workers, 1), "seed": self.seed,
                "shuffle_buffer": self.shuffle_buffer, "sets": list(self.sets)}

    def state_dict(self, batches_done: int, num_workers: int = 0, lost: int = 0) -> dict:
        """{epoch, batches_done, batches_in_epoch, lost, plan}: what ``load_state_dict`` resumes from."""
        return {"epoch": self.epoch, "batches_done": batches_done, "batches_in_epoch": self.batches_per_epoch(num_workers),
                "lost": lost, "plan": self.plan(num_workers)}

    def load_state_dict(self, state: dict, num_workers: int = 0, where: str = "the checkpoint") -> tuple[int, int, int]:
        """Check ``state``'s plan against this stream's (``check_plan``: ``T2IError`` mid-epoch
        under another plan), set its epoch and position; returns (epoch, batches done, samples
        lost so far in that epoch)."""
        epoch, done, lost = check_plan(state, self.plan(num_workers), where)
        self.set_epoch(epoch, done, num_workers)
        return epoch, done, lost

    def batches_per_epoch(self, num_workers: int) -> int:
        """Batches this rank yields per epoch, whatever the rank and the epoch."""
        return self._plan(num_workers, 0).batches * max(num_workers, 1)

    def epoch_samples(self, num_workers: int = 0) -> int:
        """Samples one epoch uses over all ranks (leftovers and padding excluded)."""
        return self._plan(num_workers, 0).samples

    def share(self, worker: int, workers: int, shuffle: str) -> Share:
        """DataLoader worker ``worker`` of ``workers``'s part of the current epoch; ``shuffle``
        names its shuffle generator's stream (``rng.stream_id``)."""
        rank, _ = self._dist()
        me, skip = worker_share(self.skip_batches, worker, workers)
        g = rank * workers + me
        plan = self._plan(workers, self.epoch)
        return Share(g, plan.ranges[g], plan.batches, skip, np.random.default_rng([self.seed, self.epoch, g, stream_id(shuffle)]))
