"""Streaming shard sets into training: ranks × dataloader workers, seeded, resumable, checked.

Each epoch, the shards are put in a seeded order and their samples numbered along that order.
Global worker g of G = world_size × num_workers takes the contiguous sample range
[g·M, (g+1)·M) with M = ⌊N / G⌋ (a range may start or end inside a shard: the split is at sample
granularity) and yields ⌊M / batch_size⌋ batches. So every rank gets the same number of batches
(no DDP hang), no sample is seen twice in an epoch, and the N − G·B·⌊M/B⌋ samples left over (fewer
than G·B) differ from epoch to epoch because the order does. Within a worker, a seeded shuffle
buffer mixes samples across its shards.

Trust (DESIGN.md): a shard is checked against its manifest record (size, then sha256) when a
stream first opens it (``verify_shard``), so a replaced, truncated or damaged shard stops the run
with one ``T2IError`` naming it, expected and actual values. A shard that cannot be read at all
(``OSError``: gone, permissions, I/O error) is logged with its name; its samples are counted in
the batch's ``lost`` / ``lost_shards`` and replaced by padding entries (``valid`` False), so every
worker still yields its announced number of batches. ``LostSamples`` is every trainer's account
of them: one ``metrics.jsonl`` row each time, and a stop above ``max_lost`` of an epoch.

Resume (``set_epoch(epoch, batches_done)``) replays the same plan and skips, in each worker, the
raw samples of the batches already consumed (before any decoding). The DataLoader hands out
batches round-robin over its workers starting from worker 0 on every new iterator, so worker
``w`` plays the part of worker ``(w + batches_done) mod num_workers`` of the plan
(``worker_share``): the next batch is exactly the one an uninterrupted run would have seen, for
any ``batches_done``. ``state_dict`` records the plan (batch size, world size, workers, seed,
shuffle buffer, the sets' digests); ``load_state_dict`` refuses to finish an epoch under another.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import tarfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .align import check_aligned, merge_aligned
from .errors import T2IError
from .manifest import MANIFEST_NAME, load_manifest
from .rng import stream_id
from .tario import iter_samples

log = logging.getLogger(__name__)

# (path, device, inode, size, mtime_ns, ctime_ns) -> sha256 of a file this process has hashed.
# Any write to the file changes its ctime (which no user call can set back), so a hit means the
# bytes hashed then are the bytes there now; a stream reopening a shard in a later epoch pays a
# stat instead of a hash. DataLoader workers send what they verified back with their batches
# (``"verified"``, taken out by ``loader``), so the next epoch's workers, forked from the main
# process, start with it.
_VERIFIED: dict[tuple, str] = {}
_NEW: deque = deque()  # (key, sha256) verified in this worker since its last batch (appended by the hashing thread)

def forget_verified() -> None:
    """Drop the cache of verified shards (benchmarks measure the cold cost with it)."""
    _VERIFIED.clear()

def verify_shard(path: Path, record: dict, data=None) -> None:
    """Check a shard file against its manifest record: size, then sha256 of the bytes (``data``:
    the file's bytes or its mapping when the caller has them, so hashing faults in the pages the
    caller reads next).

    Raises ``T2IError`` naming the shard with expected and actual values when they differ;
    ``OSError`` (missing, unreadable) passes through for the caller to count the shard as lost.
    sha256 runs at ~1.4 GB/s here (SHA-NI) with the GIL released, so a stream hashes the next
    shard in a thread while it gathers the current one (``TokenStream``)."""
    expected = record.get("sha256")
    if not expected or "bytes" not in record:
        raise T2IError(f"{path}: the manifest records no sha256 or size for this shard; rebuild the set's manifest")
    st = os.stat(path)
    if st.st_size != record["bytes"]:
        raise T2IError(f"{path}: {st.st_size} bytes where the manifest says {record['bytes']} (sha256 {expected}): the shard "
                       f"is truncated or was replaced; run `t2i verify {path.parent}` and rebuild or re-fetch it")
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _VERIFIED.get(key) == expected:
        return
    if data is not None:  # one call on the whole buffer: hashlib releases the GIL for all of it
        actual = hashlib.sha256(data).hexdigest()
    else:
        with open(path, "rb") as f:
            if st.st_size == 0:
                actual = hashlib.sha256().hexdigest()
            else:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    actual = hashlib.sha256(mm).hexdigest()
    if actual != expected:
        raise T2IError(f"{path}: sha256 {actual}, the manifest says {expected}: the shard is not the one its manifest "
                       f"describes (replaced, damaged or from another set); run `t2i verify {path.parent}` and rebuild or re-fetch it")
    _VERIFIED[key] = expected
    if get_worker_info() is not None:
        _NEW.append((key, expected))


def with_verified(batch: dict) -> dict:
    """``batch`` carrying the shards this DataLoader worker verified since its last batch."""
    new = []
    while _NEW:
        new.append(_NEW.popleft())
    if new:
        batch["verified"] = new
    return batch

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

def dataloader_worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)

def guarded(batches: Iterator[dict]) -> Iterator[dict]:
    """A stream's batches; in a DataLoader worker a ``T2IError`` travels as ``{"error": message}``
    (``loader`` raises it again in the main process), so the run stops with the stream's one
    message instead of a worker traceback."""
    try:
        for batch in batches:
            yield with_verified(batch)
    except T2IError as e:
        if get_worker_info() is None:
            raise
        yield {"error": str(e)}

def loader(ds: IterableDataset, num_workers: int, pin_memory: bool = False) -> Iterator[dict]:
    """The stream's batches through a DataLoader (``batch_size=None``: the stream batches)."""
    for batch in DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory):
        if "error" in batch:
            raise T2IError(batch["error"])
        for key, sha in batch.pop("verified", ()):
            _VERIFIED[tuple(key)] = sha
        yield batch

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

class LostSamples:
    """A trainer's account of the samples its streams could not read in the current epoch.

    ``add(batch, step)`` runs on every rank at every step (one all-reduce of a scalar under DDP);
    when any rank lost samples, rank 0 logs the shards and counts and writes a ``metrics.jsonl``
    row ``{"step", "epoch", "lost", "lost_in_epoch", "lost_shards"}``; above ``max_lost`` × the
    epoch's samples the run stops with one ``T2IError``."""

    def __init__(self, epoch_samples: int, max_lost: float, world: int, rank: int, device, metrics: Path) -> None:
        self.epoch_samples, self.max_lost, self.world, self.rank, self.device, self.metrics = (
            epoch_samples, max_lost, world, rank, device, metrics)
        self.epoch, self.total, self.shards = 0, 0, {}

    def start_epoch(self, epoch: int, already: int = 0) -> None:
        self.epoch, self.total, self.shards = epoch, already, {}

    def add(self, batches: list[dict], step: int) -> None:
        n = sum(int(b.get("lost", 0)) for b in batches)
        shards: dict[str, int] = {}
        for b in batches:
            for name, k in (b.get("lost_shards") or {}).items():
                shards[name] = shards.get(name, 0) + int(k)
        if self.world > 1:
            t = torch.tensor([float(n)], device=self.device)
            torch.distributed.all_reduce(t)
            n = int(t.item())
            if n:  # every rank knows n, so every rank joins the gather
                parts: list = [None] * self.world
                torch.distributed.all_gather_object(parts, shards)
                shards = {}
                for p in parts:
                    for name, k in p.items():
                        shards[name] = shards.get(name, 0) + k
        if not n:
            return
        self.total += n
        for name, k in shards.items():
            self.shards[name] = self.shards.get(name, 0) + k
        limit = self.max_lost * self.epoch_samples
        if self.rank == 0:
            log.warning("step %d: %d samples lost (%s); %d of epoch %d's %d so far (max_lost %g allows %.1f)", step, n,
                        ", ".join(f"{s}: {k}" for s, k in sorted(shards.items())), self.total, self.epoch, self.epoch_samples,
                        self.max_lost, limit)
            with open(self.metrics, "a") as f:
                f.write(json.dumps({"step": step, "epoch": self.epoch, "lost": n, "lost_in_epoch": self.total,
                                    "lost_shards": dict(sorted(shards.items()))}) + "\n")
        if self.total > limit:
            raise T2IError(f"{self.total} of epoch {self.epoch}'s {self.epoch_samples} samples could not be read "
                           f"({', '.join(f'{s}: {k}' for s, k in sorted(self.shards.items()))}), more than max_lost={self.max_lost} "
                           f"of the epoch; fix or re-fetch those shards (t2i verify names them), or raise max_lost to train without them")


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


class ShardStream(IterableDataset):
    """Batches from one shard set, or from aligned sets zipped by key (the first is the base).

    ``decode(sample, epoch)`` turns a merged sample dict into a dict of tensors (or arrays);
    batches stack them along a new first dimension and add ``valid`` (B,) bool, ``lost`` and
    ``lost_shards``. Entries are all valid unless a shard was unreadable: then padding entries
    (zeros shaped like the worker's first decoded sample) keep the batch count.
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
        self.records = [{s["name"]: s for s in m["shards"]} for m in self.manifests]
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def _dist(self) -> tuple[int, int]:
        return rank_and_world(self.rank, self.world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0, num_workers: int = 0) -> None:
        """Start ``epoch``, skipping its first ``skip_batches`` batches of this rank (resume, at any batch)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def plan(self, num_workers: int) -> dict:
        """Everything the sample → (rank, batch) assignment depends on besides the epoch."""
        return {"batch_size": self.batch_size, "world_size": self._dist()[1], "num_workers": max(num_workers, 1), "seed": self.seed,
                "shuffle_buffer": self.shuffle_buffer, "sets": [m["digest"] for m in self.manifests]}

    def state_dict(self, batches_done: int, num_workers: int, lost: int = 0) -> dict:
        return {"epoch": self.epoch, "batches_done": batches_done, "batches_in_epoch": self.batches_per_epoch(num_workers),
                "lost": lost, "plan": self.plan(num_workers)}

    def load_state_dict(self, state: dict, num_workers: int, where: str = "the checkpoint") -> tuple[int, int, int]:
        """Check ``state``'s plan against this stream's (``check_plan``), set its epoch and position;
        returns (epoch, batches done, samples lost so far in that epoch)."""
        epoch, done, lost = check_plan(state, self.plan(num_workers), where)
        self.set_epoch(epoch, done, num_workers)
        return epoch, done, lost

    def batches_per_epoch(self, num_workers: int) -> int:
        """Batches this rank yields per epoch, whatever the rank."""
        _, world = self._dist()
        return plan_epoch(self.sizes, world, num_workers, self.batch_size, self.seed, 0).batches * max(num_workers, 1)

    def epoch_samples(self, num_workers: int) -> int:
        """Samples one epoch uses over all ranks (the planned ones, leftovers excluded)."""
        _, world = self._dist()
        return self.batches_per_epoch(num_workers) * world * self.batch_size

    def _samples(self, ranges, lost: dict) -> Iterator[tuple[str, dict]]:
        """(shard name, merged sample) for each planned sample; an unreadable shard's samples go into ``lost``."""
        for shard, a, b in ranges:
            name = self.names[shard]
            i = 0
            try:
                for d, rec in zip(self.dirs, self.records):
                    if name not in rec:
                        raise T2IError(f"{d}: its manifest lists no shard {name}")
                    verify_shard(d / name, rec[name])
                for parts in zip(*[iter_samples(d / name) for d in self.dirs], strict=True):
                    if i >= b:
                        break
                    if i >= a:
                        merged = merge_aligned(parts, name)
                        merged["__url__"] = str(self.dirs[0] / name)  # names the shard in a decoder's error
                        yield name, merged
                    i += 1
            except OSError as e:  # gone or unreadable since the run started: count, report, go on
                n = b - max(i, a)
                log.warning("%s: unreadable (%s); %d samples of epoch %d lost", name, e, n, self.epoch)
                lost[name] = lost.get(name, 0) + n
                continue
            except (tarfile.ReadError, ValueError) as e:  # the bytes match the manifest: the set itself is malformed
                raise T2IError(f"{name}: {e}; the shard matches its manifest, so the set was written wrong; rebuild it") from None
            if i < b:
                raise T2IError(f"{name}: holds {i} samples, its manifest says {self.sizes[shard]}; rebuild the set's manifest")

    def _decode(self, name: str, sample: dict) -> dict:
        try:
            return self.decode(sample, self.epoch)
        except T2IError:
            raise
        except Exception as e:  # a sample of a verified shard that does not decode: the set is damaged at its source
            raise T2IError(f"{name}: sample {sample.get('__key__')} does not decode ({type(e).__name__}: {e})") from None

    def __iter__(self):
        return guarded(self._batches())

    def _batches(self) -> Iterator[dict]:
        rank, world = self._dist()
        wid, nw = dataloader_worker()
        me, skip = worker_share(self.skip_batches, wid, nw)
        g = rank * nw + me
        plan = plan_epoch(self.sizes, world, nw, self.batch_size, self.seed, self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch, g, stream_id("shuffle")])
        B, lost, bi, count, items, template = self.batch_size, {}, 0, 0, [], None
        for name, sample in shuffled(self._samples(plan.ranges[g], lost), rng, self.shuffle_buffer):
            if bi >= skip:  # batches consumed before the checkpoint are skipped before decoding
                items.append(self._decode(name, sample))
                template = template or items[0]
            count += 1
            if count == B:
                if bi >= skip:
                    yield _collate(items, B, template, lost)
                    lost = {}
                elif lost:
                    lost = {}  # reported by the run that consumed this batch
                bi, count, items = bi + 1, 0, []
        while bi < plan.batches:  # samples were lost: padding keeps this worker's announced batch count
            if bi >= skip:
                if template is None:
                    raise T2IError(f"epoch {self.epoch}: none of global worker {g}'s samples could be read "
                                   f"({', '.join(sorted(lost))}); there is nothing to train on")
                yield _collate(items, B, template, lost)
                lost = {}
            bi, items = bi + 1, []


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


def _padding(value):
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, np.ndarray):
        return np.zeros_like(value)
    return "" if isinstance(value, str) else None


def _collate(items: list[dict], size: int, template: dict, lost: dict) -> dict:
    """``items`` stacked, then padding entries up to ``size``; ``valid`` marks the real ones."""
    n = len(items)
    items = items + [{k: _padding(v) for k, v in template.items()}] * (size - n)
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals))
        else:
            out[k] = vals
    valid = torch.zeros(size, dtype=torch.bool)
    valid[:n] = True
    out.update(valid=valid, lost=sum(lost.values()), lost_shards=dict(lost))
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
