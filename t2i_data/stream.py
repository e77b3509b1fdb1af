"""Streaming shard sets into training: ranks × dataloader workers, seeded, resumable, checked.

The epoch plan is ``plan.plan_epoch``: global worker g of G = world_size × num_workers takes
⌊⌊N/G⌋ / batch_size⌋ whole batches of a contiguous range of the epoch's seeded sample order, so
every rank gets the same number of batches (no DDP hang), no sample is seen twice in an epoch,
and the fewer than G·B samples left over differ from epoch to epoch. Within a worker, a seeded
shuffle buffer mixes samples across its shards.

Trust (DESIGN.md): a shard is checked against its manifest record (size, then sha256) when a
stream first opens it (``check_shard_cached``), so a replaced, truncated or damaged shard stops the run
with one ``T2IError`` naming it, expected and actual values. A shard that cannot be read at all
(``OSError``: gone, permissions, I/O error) is logged with its name; its samples are counted in
the batch's ``lost`` / ``lost_shards`` and replaced by padding entries (``valid`` False), so every
worker still yields its announced number of batches. ``LostSamples`` is every trainer's account
of them: one ``metrics.jsonl`` row each time, and a stop above ``max_lost`` of an epoch.

Resume (``set_epoch(epoch, batches_done)``) replays the same plan and skips, in each worker, the
raw samples of the batches already consumed (before any decoding). The DataLoader hands out
batches round-robin over its workers starting from worker 0 on every new iterator, so worker
``w`` plays the part of worker ``(w + batches_done) mod num_workers`` of the plan
(``plan.worker_share``): the next batch is exactly the one an uninterrupted run would have seen,
for any ``batches_done``. ``state_dict`` records the plan (batch size, world size, workers, seed,
shuffle buffer, the sets' digests); ``load_state_dict`` refuses to finish an epoch under another
(``plan.PlannedStream``, which ``TokenStream`` shares).

By URL (``remote.py``): a set given as ``s3://``, ``gs://``, ``https://`` (any fsspec protocol) is
read shard by shard from the local cache (``shard_cache.ShardCache``, ``cache=``): each worker
starts downloading the next ``prefetch`` shards of its plan while it reads one, and holds the
shard it reads against eviction; the checks above apply to the cached copy. A shard the store
lacks or does not serve counts as lost, like a local one gone; a download whose sha256 differs
stops the run. ``file://`` is the local folder.

Speed: ``loader`` keeps one DataLoader per stream with its workers alive across epochs (the
epoch and resume position travel through shared memory, not by re-pickling the stream), and
``decode_and_augment`` ships uint8 images, a quarter of float32's bytes through the workers'
queues; ``bench/bench_loader.py`` measures the share of an autoencoder step spent waiting.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import mmap
import os
import tarfile
import weakref
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .align import check_aligned, check_same_image_set, image_set_of, merge_aligned
from .errors import T2IError
from .manifest import _VERIFIED, check_shard_file, open_split, stat_key
from .plan import PlannedStream, plan_epoch
from .remote import DEFAULT_PREFETCH
from .tario import iter_samples

log = logging.getLogger(__name__)

# manifest._VERIFIED: (path, device, inode, size, mtime_ns, ctime_ns) -> sha256 of a file this
# process has hashed (any write changes the ctime, so a hit means the bytes are the ones hashed);
# a stream reopening a shard in a later epoch pays a stat instead of a hash. DataLoader workers send what they verified back with their batches
# (``"verified"``, taken out by ``loader``), so workers forked later from the main process (another
# stream, or a DataLoader started again after an error) start with it; ``loader``'s persistent
# workers keep their own.
_NEW: deque = deque()  # (key, sha256) verified in this worker since its last batch (appended by the hashing thread)

def forget_verified() -> None:
    """Drop the cache of verified shards (benchmarks measure the cold cost with it)."""
    _VERIFIED.clear()

def _tag(key: tuple, sha: str) -> int:
    """A nonzero int64 naming one verified version of a file (its stat key and sha256)."""
    t = int.from_bytes(hashlib.blake2b(repr((key, sha)).encode(), digest_size=8).digest(), "little", signed=True)
    return t or 1


def check_shard_cached(path: Path, record: dict, data=None, slot=None) -> None:
    """``manifest.check_shard_file`` (size, then sha256) once per version of a file in this process:
    a file whose path, inode, size and times are unchanged since it passed is not hashed again.
    ``data``: the file's bytes or its mapping when the caller has them, so hashing faults in the
    pages the caller reads next; without it the file is mapped and hashed in one call.

    Raises ``T2IError`` naming the shard with expected and actual values when they differ;
    ``OSError`` (missing, unreadable) passes through for the caller to count the shard as lost.
    sha256 runs at ~1.4 GB/s here (SHA-NI) with the GIL released, so a stream hashes the next
    shard in a thread while it gathers the current one (``TokenStream``).

    ``slot``: (int64 tensor in shared memory, row, column) from ``PlannedStream.verified_slot``:
    a version verified by any worker of the stream's DataLoader (persistent workers, which no
    later fork refreshes) counts as verified in every other one. Two workers opening the same
    unverified shard at the same moment may both hash it: there is no lock between them, so the
    cost of that race is one extra hash, never a skipped one."""
    st = os.stat(path)
    expected = record.get("sha256")
    key = stat_key(path, st)
    if expected and st.st_size == record.get("bytes"):
        if _VERIFIED.get(key) == expected:
            return
        if slot is not None and int(slot[0][slot[1], slot[2]]) == _tag(key, expected):
            _VERIFIED[key] = expected
            return
    if data is None and st.st_size and st.st_size == record.get("bytes"):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            check_shard_file(path, record, mm)
    else:
        check_shard_file(path, record, data)
    _VERIFIED[key] = expected
    if slot is not None and expected:
        slot[0][slot[1], slot[2]] = _tag(key, expected)
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

def _worker_init(worker_id: int) -> None:
    """One torch thread per loader worker: the trainer's threads and the workers share the cores."""
    torch.set_num_threads(1)


def loader(ds: IterableDataset, num_workers: int, pin_memory: bool = False) -> Iterator[dict]:
    """The stream's batches of its current epoch (``set_epoch``) through a DataLoader
    (``batch_size=None``: the stream batches).

    One DataLoader per (stream, ``num_workers``, ``pin_memory``), kept on the stream, with
    ``persistent_workers``: the worker processes start on the first call and serve every later
    epoch, which reads its epoch and resume position from the stream's shared-memory position
    (``PlannedStream.share_position``), so ``set_epoch`` then ``loader`` every epoch gives the
    batches a new DataLoader per epoch would, in the same order. A ``T2IError`` in a worker is
    raised here with its one message; after any error the DataLoader is dropped (its workers
    shut down) and the next call starts fresh ones."""
    dl = None
    if num_workers > 0:
        if hasattr(ds, "share_position"):
            ds.share_position()
        loaders = ds.__dict__.setdefault("_loaders", {})
        key = (num_workers, bool(pin_memory))
        dl = loaders.get(key)
        _WITH_LOADERS.add(ds)
        if dl is None:
            dl = loaders[key] = DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                           persistent_workers=True, worker_init_fn=_worker_init)
    else:
        dl = DataLoader(ds, batch_size=None, num_workers=0, pin_memory=pin_memory)
    try:
        for batch in dl:
            if "error" in batch:
                raise T2IError(batch["error"])
            for key_, sha in batch.pop("verified", ()):
                _VERIFIED[tuple(key_)] = sha
            yield batch
    except Exception:
        if num_workers > 0:  # shut the failed DataLoader's workers down now, not whenever the garbage collector reaches it
            failed = ds.__dict__.get("_loaders", {}).pop(key, None)
            it = failed.__dict__.pop("_iterator", None) if failed is not None else None
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
        raise

_WITH_LOADERS: "weakref.WeakSet[IterableDataset]" = weakref.WeakSet()  # streams holding a persistent DataLoader


def close_all_loaders() -> None:
    """``close_loaders`` on every stream that still holds one (run at interpreter exit, and by the
    test suite after each test). A stream and its DataLoader refer to each other, so only the cyclic
    garbage collector frees them; by the time the DataLoader iterator's ``__del__`` runs there, the
    weakref finalizers of its queues have closed them, the workers never get the message to stop,
    and each is joined for ``MP_STATUS_CHECK_INTERVAL`` (5 s) before it is killed: a 10 s stall at a
    random moment with 2 workers (measured here: 10.3 s in ``gc.collect()`` after one epoch, 0.03 s
    through ``close_loaders``)."""
    for ds in list(_WITH_LOADERS):
        close_loaders(ds)


atexit.register(close_all_loaders)


def close_loaders(ds: IterableDataset) -> None:
    """Shut down the persistent loader workers ``loader`` keeps on ``ds``, now rather than when the
    garbage collector reaches the stream (the DataLoader and the stream refer to each other, so
    their worker processes would otherwise outlive a trainer, e.g. through every later stage of
    ``t2i run``). Uses the DataLoader iterator's ``_shutdown_workers``, the call its own
    ``__del__`` makes. A later ``loader`` call on ``ds`` starts fresh workers."""
    _WITH_LOADERS.discard(ds)
    for dl in ds.__dict__.pop("_loaders", {}).values():
        it = dl.__dict__.pop("_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


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


class ShardStream(PlannedStream, IterableDataset):
    """Batches from one shard set, or from aligned sets zipped by key (the first is the base).
    With an image set first, every other set must be derived from it (``align.check_aligned``);
    with a derived set first (image tokens + text embeddings, say: no pixels read), all must be
    derived from one image set (``align.check_same_image_set``).

    ``decode(sample, epoch)`` turns a merged sample dict into a dict of tensors (or arrays);
    batches stack them along a new first dimension and add ``valid`` (B,) bool, ``lost`` and
    ``lost_shards``. Entries are all valid unless a shard was unreadable: then padding entries
    (zeros shaped like the worker's first decoded sample) keep the batch count. Epoch, resume
    and plan: ``plan.PlannedStream`` with ``plan_epoch`` (whole batches, leftovers dropped).
    """

    planner = staticmethod(plan_epoch)

    def __init__(self, dirs, decode: Callable[[dict, int], dict], batch_size: int, seed: int = 0, shuffle_buffer: int = 256,
                 rank: int | None = None, world_size: int | None = None, cache=None, prefetch: int | None = None) -> None:
        locations = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        # a folder, or a URL (remote.py): s3://, gs://, https:// fetched into ``cache`` (shard_cache.ShardCache), file:// read in place
        self.shard_sets = [open_split(d, cache) for d in locations]
        self.dirs = [ss.dir for ss in self.shard_sets]  # a remote set's: the cache folder its shards are fetched into
        self.manifests = [ss.manifest for ss in self.shard_sets]
        where = [ss.location for ss in self.shard_sets]
        if self.manifests[0].get("kind") == "images":  # an image set and sets derived from it
            for d, m in zip(where[1:], self.manifests[1:]):
                check_aligned(self.manifests[0], m, d)
        elif len(self.dirs) > 1:  # derived sets only (e.g. image tokens + text embeddings): all of one image set, no pixels read
            for d, m in zip(where, self.manifests):
                if image_set_of(m) is None:
                    raise T2IError(f"{d}: a {m.get('kind')} set whose manifest names no image set (aligned_to); rebuild it")
            for d, m in zip(where[1:], self.manifests[1:]):
                check_same_image_set(self.manifests[0], m, where[0], d)
        self.decode = decode
        self.prefetch = DEFAULT_PREFETCH if prefetch is None else int(prefetch)  # shards ahead, for sets read by URL
        self.names = [s["name"] for s in self.manifests[0]["shards"]]
        self.records = [{s["name"]: s for s in m["shards"]} for m in self.manifests]
        super().__init__([s["samples"] for s in self.manifests[0]["shards"]], [m["digest"] for m in self.manifests],
                         batch_size, seed, shuffle_buffer, rank, world_size)

    def _prefetch(self, ranges) -> None:
        """Start downloading the shards of ``ranges`` (the next ones of this worker's plan) of every set read by URL."""
        names = [self.names[shard] for shard, _, _ in ranges]
        for ss in self.shard_sets:
            if ss.remote is not None and names:
                ss.remote.prefetch(names)

    def _samples(self, ranges, lost: dict) -> Iterator[tuple[str, dict]]:
        """(shard name, merged sample) for each planned sample; an unreadable shard's samples go into ``lost``.
        A shard of a set read by URL is fetched into the cache (the next ``prefetch`` shards of the
        plan download meanwhile) and held against eviction while its samples are read."""
        for k, (shard, a, b) in enumerate(ranges):
            name = self.names[shard]
            if self.prefetch:
                self._prefetch(ranges[k + 1 : k + 1 + self.prefetch])
            i = 0
            try:
                with ExitStack() as pins:
                    paths = []
                    for j, (ss, rec) in enumerate(zip(self.shard_sets, self.records)):
                        if name not in rec:
                            raise T2IError(f"{ss.location}: its manifest lists no shard {name}")
                        path = pins.enter_context(ss.pinned(name)) if ss.remote is not None else ss.dir / name
                        check_shard_cached(path, rec[name], slot=self.verified_slot(j, shard))
                        paths.append(path)
                    for parts in zip(*[iter_samples(p) for p in paths], strict=True):
                        if i >= b:
                            break
                        if i >= a:
                            merged = merge_aligned(parts, name)
                            merged["__url__"] = self.shard_sets[0].where(name)  # names the shard in a decoder's error
                            yield name, merged
                        i += 1
            except OSError as e:  # gone or unreadable since the run started (or not in the store): count, report, go on
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
        mine = self.share(*dataloader_worker(), "shuffle")
        skip = mine.skip
        B, lost, bi, count, items, template = self.batch_size, {}, 0, 0, [], None
        for name, sample in shuffled(self._samples(mine.ranges, lost), mine.rng, self.shuffle_buffer):
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
        while bi < mine.batches:  # samples were lost: padding keeps this worker's announced batch count
            if bi >= skip:
                if template is None:
                    raise T2IError(f"epoch {self.epoch}: none of global worker {mine.worker}'s samples could be read "
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


def decode_and_augment(regime, seed: int):
    """decode(sample, epoch) for autoencoder training: decodes the stored image, then applies the
    regime's random part (augmentation), drawn from (seed, key, epoch); returns ``{"image": uint8
    tensor (3, N, N), the pixel values 0..255, "key": str}``. Regime None (MD-MNIST): the stored
    image as it is. uint8 is a quarter of float32's bytes through the DataLoader workers' queues
    (and to the GPU); the trainer scales to [0, 1] floats on its device (``x.float().div_(255)``)."""
    from .augment import stored_image

    def decode(sample: dict, epoch: int) -> dict:
        im = stored_image(sample)
        if regime is None:
            arr = np.array(im)
        else:
            p = regime.draw(seed, sample["__key__"], epoch, im.size, online=True)
            arr = np.array(regime.apply_view(im, p))  # a writable copy for torch
        return {"image": torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), "key": sample["__key__"]}

    return decode
