"""Streaming shard sets into training: ranks × dataloader workers, seeded, resumable.

Each epoch, the shards are put in a seeded order and their samples numbered along that order.
Global worker g of G = world_size × num_workers takes the contiguous sample range
[g·M, (g+1)·M) with M = ⌊N / G⌋ (a range may start or end inside a shard: the split is at sample
granularity) and yields ⌊M / batch_size⌋ batches. So every rank gets the same number of batches
(no DDP hang), no sample is seen twice in an epoch, and the N − G·B·⌊M/B⌋ samples left over (fewer
than G·B) differ from epoch to epoch because the order does. Within a worker, a seeded shuffle
buffer mixes samples across its shards.

Resuming at batch b of an epoch replays the same plan and skips, in each worker, the raw samples
of the batches already consumed (before any decoding), so the next batch is exactly the one an
uninterrupted run would have seen. The DataLoader hands out batches round-robin over its workers
starting from worker 0 on every new iterator, so a resume is exact when the number of batches
consumed is a multiple of ``num_workers`` (the trainer checkpoints only there).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .align import check_aligned, merge_aligned
from .errors import T2IError
from .manifest import MANIFEST_NAME, load_manifest
from .rng import stream_id
from .tario import iter_samples


@dataclass(frozen=True)
class Plan:
    ranges: list  # per global worker: [(shard index, first sample, stop sample), ...]
    batches: int  # per global worker


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given (rank, world size) — ranks simulated in tests — else torch.distributed's, else (0, 1)."""
    if world_size is not None:
        return rank or 0, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def plan_epoch(shard_sizes: list[int], world: int, workers: int, batch: int, seed: int, epoch: int) -> Plan:
    g = world * max(workers, 1)
    order = np.random.default_rng([seed, epoch, stream_id("shard-order")]).permutation(len(shard_sizes))
    n = sum(shard_sizes)
    m = n // g
    batches = m // batch
    if batches == 0:
        raise T2IError(f"{n} samples cannot give every one of {g} workers a batch of {batch}; use fewer workers or ranks, or a smaller batch")
    starts = np.cumsum([0] + [shard_sizes[i] for i in order])
    ranges = []
    for w in range(g):
        lo, hi = w * m, w * m + batches * batch
        mine = []
        for k, s in enumerate(order):
            a, b = max(lo, starts[k]), min(hi, starts[k + 1])
            if a < b:
                mine.append((int(s), int(a - starts[k]), int(b - starts[k])))
        ranges.append(mine)
    return Plan(ranges, batches)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class ShardStream(IterableDataset):
    """Batches from one shard set, or from aligned sets zipped by key (the first is the base).

    ``decode(sample, epoch)`` turns a merged sample dict into a dict of tensors (or arrays);
    batches stack them along a new first dimension.
    """

    def __init__(self, dirs, decode: Callable[[dict, int], dict], batch_size: int, seed: int = 0, shuffle_buffer: int = 256,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.dirs = [Path(d) for d in ([dirs] if isinstance(dirs, (str, Path)) else dirs)]
        self.manifests = [load_manifest(d / MANIFEST_NAME) for d in self.dirs]
        for d, m in zip(self.dirs[1:], self.manifests[1:]):
            check_aligned(self.manifests[0], m, str(d))
        self.decode, self.batch_size, self.seed, self.shuffle_buffer = decode, batch_size, seed, shuffle_buffer
        self.sizes = [s["samples"] for s in self.manifests[0]["shards"]]
        self.names = [s["name"] for s in self.manifests[0]["shards"]]
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def _dist(self) -> tuple[int, int]:
        return rank_and_world(self.rank, self.world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0, num_workers: int = 0) -> None:
        """Start ``epoch``, skipping its first ``skip_batches`` batches of this rank (resume)."""
        if num_workers > 1 and skip_batches % num_workers:
            raise T2IError(f"resume at batch {skip_batches} of the epoch is not a multiple of the {num_workers} dataloader workers; "
                           f"checkpoints must be taken at multiples of num_workers batches")
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_per_epoch(self, num_workers: int) -> int:
        """Batches this rank yields per epoch, whatever the rank."""
        _, world = self._dist()
        return plan_epoch(self.sizes, world, num_workers, self.batch_size, self.seed, 0).batches * max(num_workers, 1)

    def _samples(self, ranges) -> Iterator[dict]:
        for shard, a, b in ranges:
            streams = [iter_samples(d / self.names[shard]) for d in self.dirs]
            for i, parts in enumerate(zip(*streams, strict=True)):
                if i >= b:
                    break
                if i < a:
                    continue
                yield merge_aligned(parts, self.names[shard])

    def __iter__(self):
        rank, world = self._dist()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        g = rank * nw + wid
        plan = plan_epoch(self.sizes, world, nw, self.batch_size, self.seed, self.epoch)
        # this rank's batches come round-robin from its workers: worker wid made every nw-th one
        skip = (self.skip_batches - wid + nw - 1) // nw if self.skip_batches > wid else 0
        rng = np.random.default_rng([self.seed, self.epoch, g, stream_id("shuffle")])
        produced, batch = 0, []
        total = plan.batches * self.batch_size
        for sample in shuffled(self._samples(plan.ranges[g]), rng, self.shuffle_buffer):
            produced += 1
            if produced <= skip * self.batch_size:
                continue  # consumed before the checkpoint: skipped before decoding
            batch.append(self.decode(sample, self.epoch))
            if len(batch) == self.batch_size:
                yield _collate(batch)
                batch = []
            if produced == total:
                return

def shuffled(items: Iterator, rng: np.random.Generator, size: int) -> Iterator:
    """A seeded shuffle buffer of ``size`` items (webdataset's ``shuffle``, with an explicit rng)."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], item = item, buf[j]
        yield item
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))


def _collate(items: list[dict]) -> dict:
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals))
        else:
            out[k] = vals
    return out


def image_decoder(regime, seed: int):
    """decode(sample, epoch) for autoencoder training: the regime's random part, drawn from
    (seed, key, epoch), as a float tensor (3, N, N) in [0, 1]; regime None (MD-MNIST): the image."""
    from .augment import stored_image

    def decode(sample: dict, epoch: int) -> dict:
        im = stored_image(sample)
        if regime is None:
            arr = np.array(im)
        else:
            p = regime.draw(seed, sample["__key__"], epoch, im.size, online=True)
            arr = np.array(regime.apply_view(im, p))  # a writable copy for torch
        return {"image": torch.from_numpy(arr).permute(2, 0, 1).float().div_(255), "key": sample["__key__"]}

    return decode
