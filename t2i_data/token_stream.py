"""Streaming aligned image-token and text-token shards into prior training.

Per epoch: shards in a seeded order, samples numbered along it, and global worker g of
G = world × workers takes a contiguous range of ⌊N/G⌋ or ⌈N/G⌉ samples (split at sample
granularity). Every worker yields ⌈⌈N/G⌉ / B⌉ batches of B entries; entries past a worker's
samples are padding with ``valid = False`` (and zero tokens). So in one epoch every sample is
seen exactly once over all ranks, nothing is dropped, and every rank takes the same number of
steps; a trainer weights its loss by ``valid``. One caption (of the sample's C) and one view (of
its K) are picked per (seed, epoch, key).

Checks (DESIGN.md, "Trust"): each shard file is checked against its manifest record (size and
sha256, ``stream.check_shard_cached``) when the stream first opens it, the next shard hashed in a
thread while the current one is gathered; a shard holds the manifest's sample count and first
and last key; every gathered caption and view row is range-checked against the tokenizer's and
the autoencoder's vocabulary (one vectorised max per shard chunk). Any of these failing stops
the run with one ``T2IError`` naming the shard (and key). A shard that cannot be read at all
(``OSError``) is logged; its samples are counted in the batch's ``lost`` / ``lost_shards``,
become padding, and the epoch goes on: the trainer's ``stream.LostSamples`` stops it above
``max_lost``. Resume at any batch: ``set_epoch(epoch, batches_done)`` / ``load_state_dict``, as
in ``ShardStream`` (both are ``plan.PlannedStream``s; this one plans with ``plan.plan_exact``).
Through ``stream.loader`` the DataLoader workers stay alive across epochs (epoch, resume position
and the shards already verified in shared memory), as for ``ShardStream``.

Sets given by URL (``remote.py``: s3://, gs://, https://, any fsspec protocol) are read as
``stream.ShardStream`` reads them: whole shards fetched into the local cache (``cache=``), the next
``prefetch`` shards of the worker's plan downloading meanwhile, memory-mapped there and pinned
against eviction until their rows are gathered. ``file://`` is the local folder.

Batches hold ``text`` (B, L) and ``image`` (B, H·W) as int32 tensors (half the bytes of int64
to copy and to send to a GPU; a trainer casts them there), ``valid`` (B,) bool, ``keys``,
``lost`` and ``lost_shards``.

Speed (no Python per sample but one pass over the keys): a shard's members come from its offset
index (``tario.member_table``); the .npy headers of a shard's samples are compared in one
vectorised pass, and all samples of one layout have their chosen caption / view rows copied out
of the file's bytes in one gather; the shuffle buffer moves row numbers, and each batch is
gathered once from the shard chunks into its tensors.
"""
from __future__ import annotations

import logging
import mmap
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .align import check_autoencoder, check_same_image_set, check_tokenizer
from .errors import T2IError
from .manifest import open_split
from .npyio import npy_meta
from .plan import PlannedStream, plan_exact
from .remote import DEFAULT_PREFETCH
from .rng import key_ids, keyed_u64, stream_id
from .schema import levels_of
from .stream import check_shard_cached, dataloader_worker, guarded
from .tario import member_table

log = logging.getLogger(__name__)


def windows(a: np.ndarray, width: int) -> np.ndarray:
    """Every run of ``width`` consecutive items of a 1-D array as a row, without copying:
    ``windows(a, w)[starts]`` copies the rows that begin at ``starts`` in one C loop."""
    return np.lib.stride_tricks.sliding_window_view(a, width)


class TokenStream(PlannedStream, IterableDataset):
    """Batches of one caption row and one view row per sample of an aligned image-token /
    text-token pair (the module docstring has the layout and the checks). Epoch, resume and plan:
    ``plan.PlannedStream`` with ``plan_exact`` (every sample once, padded batches). Raises
    ``T2IError`` when the sets are not such a pair, belong to other image sets, or were made by
    a tokenizer / autoencoder other than ``expect_tokenizer`` / ``expect_autoencoder``.

    ``level`` names the token level of a multi-level image-token set (VQ-VAE-2: "top" or
    "bottom", ``schema.levels_of``): its ``<key>.image_tokens.<level>.npy`` rows, its grid and its
    vocabulary. Such a set without a level, a level it does not have, or a level for a single-grid
    set stops with one ``T2IError`` naming the levels there. The view of a sample is drawn from
    (seed, epoch, key) whatever the level, so two streams of one set with the same seed pair the
    top and bottom grids of the same view."""

    planner = staticmethod(plan_exact)

    def __init__(self, image_tokens: str | Path, text_tokens: str | Path, batch_size: int, seed: int = 0, shuffle_buffer: int = 1024,
                 rank: int | None = None, world_size: int | None = None, expect_tokenizer: str | None = None,
                 expect_autoencoder: str | None = None, level: str | None = None, cache=None, prefetch: int | None = None) -> None:
        # folders, or URLs (remote.py): s3://, gs://, https:// fetched whole into ``cache`` (a shard_cache.ShardCache) and
        # memory-mapped there, the next ``prefetch`` shards of the plan downloading meanwhile; file:// read in place
        self.img_set, self.txt_set = open_split(image_tokens, cache), open_split(text_tokens, cache)
        self.img_dir, self.txt_dir = self.img_set.dir, self.txt_set.dir  # a remote set's: its cache folder
        self.img_m, self.txt_m = self.img_set.manifest, self.txt_set.manifest
        self.prefetch = DEFAULT_PREFETCH if prefetch is None else int(prefetch)
        if self.img_m.get("kind") != "image_tokens" or self.txt_m.get("kind") != "text_tokens":
            raise T2IError(f"expected an image_tokens and a text_tokens set, got {self.img_m.get('kind')} and {self.txt_m.get('kind')}")
        check_same_image_set(self.img_m, self.txt_m, self.img_set.location, self.txt_set.location)
        if expect_tokenizer:
            check_tokenizer(self.txt_m, expect_tokenizer, "the checkpoint")
        if expect_autoencoder:
            check_autoencoder(self.img_m, expect_autoencoder, "the checkpoint")
        self.names = [s["name"] for s in self.img_m["shards"]]
        self.img_rec, self.txt_rec = list(self.img_m["shards"]), list(self.txt_m["shards"])
        tok, ae = self.txt_m["tokenizer"], self.img_m["autoencoder"]
        self.L = tok["length"]
        self.pad_id = tok["pad_id"]
        if "vocab_size" not in tok or "vocab_size" not in ae:
            raise T2IError(f"{self.txt_set.location} / {self.img_set.location}: the manifests record no tokenizer vocab_size or autoencoder vocab; "
                           f"without them token ids cannot be checked; rebuild the sets with this t2i")
        self.text_vocab, self.image_vocab = int(tok["vocab_size"]), int(ae["vocab_size"])
        grid = ae["grid"]
        self.level, self.member, self.whose = level, ".image_tokens.npy", "the autoencoder's"
        levels = levels_of(self.img_m)
        if level is not None or levels:  # a multi-level set (VQ-VAE-2): one named level's grid, ids and member
            if level not in levels:
                have = f"its levels are {', '.join(levels)}" if levels else "it is a single-grid set (image_tokens.npy, no levels)"
                fix = "name one with level=" if levels else "drop level"
                raise T2IError(f"{self.img_set.location}: {'level=' + repr(level) if level is not None else 'no level named'}, but {have}; {fix}")
            self.image_vocab, grid = int(levels[level]["vocab_size"]), levels[level]["grid"]
            self.member, self.whose = f".image_tokens.{level}.npy", f"the {level} level's"
        self.grid, self.hw = grid, grid * grid
        super().__init__([s["samples"] for s in self.img_m["shards"]], [self.img_m["digest"], self.txt_m["digest"]],
                         batch_size, seed, shuffle_buffer, rank, world_size)

    def _rows(self, path: Path, data, suffix: str, a: int, b: int, rec: dict, row: int, stream: str, kh=None, empty: int = 0):
        """Keys, one chosen row per sample (caption or view, drawn from (seed, stream, epoch, key))
        of the ``suffix`` arrays of samples a..b of a shard as an (n, row) array, and the key hashes.

        Members come from the shard's offset index (``tario.member_table``); samples whose .npy
        headers are identical (all of them, in a shard of fixed shapes) are gathered in one
        vectorised copy out of the file's bytes, so no Python runs per sample but the key list."""
        names, offsets, sizes = member_table(path, data, rec["sha256"])
        cut = len(suffix)
        every = [i for i, n in enumerate(names) if n.endswith(suffix)]
        if len(every) != rec["samples"] or (every and (names[every[0]][:-cut], names[every[-1]][:-cut]) != (rec["first_key"], rec["last_key"])):
            raise ValueError(f"{len(every)} {suffix} members from {names[every[0]][:-cut] if every else None} to "
                             f"{names[every[-1]][:-cut] if every else None}; the manifest says {rec['samples']} samples from "
                             f"{rec['first_key']} to {rec['last_key']}")
        pick = every[a:b]
        if len(pick) != b - a:
            raise ValueError(f"{len(pick)} {suffix} members where samples {a}..{b} were expected")
        keys = [names[i][:-cut] for i in pick]
        if kh is None:
            kh = key_ids(keys)
        if not pick:
            return keys, np.zeros((0, row), np.uint16), kh
        offs, sizes = offsets[pick], sizes[pick]
        if (offs + sizes).max() > len(data):
            raise ValueError("a member runs past the end of the file")
        buf = np.frombuffer(data, dtype=np.uint8)
        # samples are grouped by their whole .npy header (magic, version, length, dict, padding)
        width = npy_meta(data[offs[0] : offs[0] + min(int(sizes[0]), 4096)])[3]
        if (sizes < width).any():
            raise ValueError("a member shorter than its .npy header")
        heads = windows(buf, width)[offs]
        groups = [np.arange(len(offs))] if (heads == heads[:1]).all() else list(_group_rows(heads))
        draws = keyed_u64(self.seed, stream_id(stream), kh, self.epoch)
        out = None
        for g in groups:
            first = int(g[0])
            dtype, shape, count, skip = npy_meta(data[offs[first] : offs[first] + min(int(sizes[first]), 4096)])
            if (sizes[g] != sizes[first]).any():
                raise ValueError(f"members with the same .npy header but different sizes near {names[pick[first]]}")
            if len(shape) < 2 or int(np.prod(shape[1:])) != row:
                raise ValueError(f"{names[pick[first]]}: shape {shape}, expected (n, {row}) rows")
            if dtype.kind not in "iu":
                raise ValueError(f"{names[pick[first]]}: dtype {dtype}, token ids are integers")
            item = dtype.itemsize
            if skip + count * item != sizes[first]:
                raise ValueError(f"{names[pick[first]]}: {int(sizes[first])} bytes, its .npy header says {skip + count * item}")
            if out is None:
                out = np.empty((len(keys), row), dtype)
            elif out.dtype != dtype:
                out = out.astype(np.int64)
            if shape[0] == 0:  # a sample without captions: a row of padding
                out[g] = empty
                continue
            start = offs[g] + skip + (draws[g] % np.uint64(shape[0])).astype(np.int64) * (row * item)
            if (start % item).any():  # not aligned for a typed view: copy bytes, then view them
                out[g] = windows(buf, row * item)[start].view(dtype)
            else:
                out[g] = windows(np.frombuffer(data, dtype=dtype, count=len(data) // item), row)[start // item]
        return keys, out, kh

    def _read(self, path: Path):
        """The file's bytes, memory-mapped: only the pages holding headers and chosen rows are touched."""
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _open(self, shard: int):
        """The shard's two files, mapped and checked against their manifest records (in the
        hashing thread: the hash also faults in the pages the gather reads next), and the pins
        (an ``ExitStack``) holding a remote set's cached copies against eviction until ``_shard``
        has gathered them. A remote shard is fetched first (or its prefetch waited for)."""
        name = self.names[shard]
        with ExitStack() as pins:
            paths = [pins.enter_context(ss.pinned(name)) if ss.remote is not None else ss.dir / name for ss in (self.img_set, self.txt_set)]
            img, txt = self._read(paths[0]), self._read(paths[1])
            check_shard_cached(paths[0], self.img_rec[shard], img, self.verified_slot(0, shard))
            check_shard_cached(paths[1], self.txt_rec[shard], txt, self.verified_slot(1, shard))
            return img, txt, paths, pins.pop_all()

    def _shard(self, shard: int, a: int, b: int, opened):
        """(texts (n, L), images (n, H·W), keys) for samples a..b of a shard, and how many were lost.

        ``opened`` is the future of the shard's mapping and check (``_open``): a mismatch raises
        ``T2IError``; an ``OSError`` (the shard gone or unreadable, or missing from the store)
        counts its samples as lost."""
        name = self.names[shard]
        pins = None
        try:
            img, txt, (img_path, txt_path), pins = opened.result()
            keys, imgs, kh = self._rows(img_path, img, self.member, a, b, self.img_rec[shard], self.hw, "view")
            tkeys, txts, _ = self._rows(txt_path, txt, ".text_tokens.npy", a, b, self.txt_rec[shard], self.L, "caption",
                                        kh, self.pad_id)
        except OSError as e:  # gone or unreadable since the run started: report, count, go on
            log.warning("%s: unreadable (%s); %d samples of epoch %d lost", name, e, b - a, self.epoch)
            return None, b - a
        except ValueError as e:  # the bytes match the manifest: the set was written wrong
            raise T2IError(f"{name}: {e}; the shard matches its manifest, so the set itself is malformed; rebuild it") from None
        finally:
            if pins is not None:
                pins.close()  # the rows are copied out: the cached copies may be evicted now
        if keys != tkeys:
            raise T2IError(f"{name}: the image-token and text-token shards hold different keys; derive both from the same image set")
        _check_ids(txts, self.text_vocab, keys, self.txt_set.where(name), "text token", "the tokenizer's")
        _check_ids(imgs, self.image_vocab, keys, self.img_set.where(name), "image token", self.whose)
        return (txts, imgs, np.array(keys, dtype=object)), 0

    def _prefetch(self, shards: list[int]) -> None:
        """Start downloading ``shards`` of both sets, where read by URL."""
        names = [self.names[s] for s in shards]
        for ss in (self.img_set, self.txt_set):
            if ss.remote is not None and names:
                ss.remote.prefetch(names)

    def __iter__(self):
        return guarded(self._batches())

    def _batches(self):
        mine = self.share(*dataloader_worker(), "token-shuffle")
        B, skip, ranges_here = self.batch_size, mine.skip, mine.ranges
        pool = _RowPool(mine.rng, self.shuffle_buffer)
        lost, bi = {}, 0
        # the next shards are mapped and hashed in a thread (sha256 releases the GIL) while this one is gathered;
        # for sets read by URL that thread also waits for their download, which the prefetch pool starts
        # ``self.prefetch`` shards ahead (0: fetched when needed, nothing ahead: the baseline of bench_remote.py)
        remote = self.img_set.remote is not None or self.txt_set.remote is not None
        lead = min(2, self.prefetch) if remote else 2
        hasher = ThreadPoolExecutor(1, thread_name_prefix="t2i-verify")
        ahead = deque(hasher.submit(self._open, s) for s, _, _ in ranges_here[:lead])
        try:
            for k, (shard, a, b) in enumerate(ranges_here):
                if remote and self.prefetch:
                    self._prefetch([s for s, _, _ in ranges_here[k + 1 : k + 1 + self.prefetch]])
                if k + lead < len(ranges_here):
                    ahead.append(hasher.submit(self._open, ranges_here[k + lead][0]))
                chunk, n_lost = self._shard(shard, a, b, ahead.popleft())
                if n_lost:
                    lost[self.names[shard]] = n_lost
                if chunk is not None:
                    pool.add(*chunk)
                if k == len(ranges_here) - 1:
                    pool.finish()
                while pool.ready() >= B or (k == len(ranges_here) - 1 and pool.ready()):
                    if bi >= skip:  # batches before the checkpoint are dropped (tokens need no decoding)
                        yield pool.take(B, self.L, self.hw, self.pad_id, lost)
                    else:
                        pool.take(B, self.L, self.hw, self.pad_id, {})
                    lost = {}  # (reported with the batch that took them; before the checkpoint, by the first run)
                    bi += 1
        finally:
            hasher.shutdown(wait=True, cancel_futures=True)
            for f in ahead:  # opened but never gathered (the consumer stopped early): release their pins
                if f.done() and not f.cancelled() and f.exception() is None:
                    f.result()[3].close()
        for i in range(bi, mine.batches):  # this worker's share is used up: padding-only batches
            if i >= skip:
                yield pool.take(B, self.L, self.hw, self.pad_id, lost)
            lost = {}


def _check_ids(rows: np.ndarray, vocab: int, keys: list, where: str, what: str, whose: str) -> None:
    """Refuse ids outside 0..vocab-1: one vectorised max (and min for signed dtypes) per chunk."""
    if not rows.size:
        return
    hi = int(rows.max())
    lo = int(rows.min()) if rows.dtype.kind == "i" else 0
    if hi < vocab and lo >= 0:
        return
    r, c = np.argwhere((rows >= vocab) | (rows < 0))[0]
    raise T2IError(f"{where}: sample {keys[r]} has {what} id {int(rows[r, c])} (position {c}), outside {whose} vocabulary of "
                   f"{vocab} ids (0..{vocab - 1}) that the manifest records; the shard or its manifest is damaged: "
                   f"run `t2i verify` on the set and rebuild it")


class _RowPool:
    """A seeded shuffle buffer over shard chunks that moves row numbers, not rows.

    Each chunk's rows join the buffer; whenever it holds more than ``size`` rows, all but
    ``size`` of them leave in a uniformly random order (what as many one-at-a-time buffer steps
    do, vectorised) and queue for batching; ``finish`` lets the rest leave, shuffled. A batch is
    gathered straight from the chunks' arrays into its int32 tensors: every token is copied once
    from the file into its chunk and once into its batch."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng, self.size = rng, size
        self.chunks: dict[int, tuple] = {}  # first row id -> (text, image, keys)
        self.firsts = np.zeros(0, np.int64)
        self.next = 0
        self.waiting = np.zeros(0, np.int64)  # row ids in the buffer
        self.queue = np.zeros(0, np.int64)  # row ids that left it, in order

    def add(self, text: np.ndarray, image: np.ndarray, keys: np.ndarray) -> None:
        n = len(keys)
        if self.chunks:  # forget chunks of which no row is left to batch
            live = np.unique(np.searchsorted(self.firsts, np.concatenate([self.waiting, self.queue]), side="right") - 1)
            self.chunks = {int(self.firsts[c]): self.chunks[int(self.firsts[c])] for c in live}
        self.chunks[self.next] = (text, image, keys)
        self.firsts = np.fromiter(self.chunks, np.int64, len(self.chunks))  # increasing: insertion order
        self.waiting = np.concatenate([self.waiting, np.arange(self.next, self.next + n)])
        self.next += n
        if self.size <= 1:
            self.queue, self.waiting = np.concatenate([self.queue, self.waiting]), self.waiting[:0]
        elif len(self.waiting) > self.size:
            perm = self.rng.permutation(len(self.waiting))
            leave = len(self.waiting) - self.size
            self.queue = np.concatenate([self.queue, self.waiting[perm[:leave]]])
            self.waiting = self.waiting[perm[leave:]]

    def finish(self) -> None:
        self.queue = np.concatenate([self.queue, self.waiting[self.rng.permutation(len(self.waiting))]])
        self.waiting = self.waiting[:0]

    def ready(self) -> int:
        return len(self.queue)

    def take(self, B: int, L: int, hw: int, pad_id: int, lost: dict) -> dict:
        """The next batch of B entries: up to B queued rows, then padding entries (``valid`` False)."""
        ids, self.queue = self.queue[:B], self.queue[B:]
        n = len(ids)
        text = np.full((B, L), pad_id, np.int32)
        image = np.zeros((B, hw), np.int32)
        keys = np.full(B, "", dtype=object)
        if n:
            firsts = self.firsts
            which = np.searchsorted(firsts, ids, side="right") - 1
            for c in np.unique(which):
                pos = np.flatnonzero(which == c)
                t, im, k = self.chunks[int(firsts[c])]
                rows = ids[pos] - firsts[c]
                text[pos], image[pos], keys[pos] = t[rows], im[rows], k[rows]
        valid = np.zeros(B, dtype=bool)
        valid[:n] = True
        return {"text": torch.from_numpy(text), "image": torch.from_numpy(image), "valid": torch.from_numpy(valid),
                "keys": keys.tolist(), "lost": sum(lost.values()), "lost_shards": dict(lost)}


def _group_rows(heads: np.ndarray):
    """Indices of the rows of ``heads`` grouped by identical content, groups in first-seen order."""
    _, first, inverse = np.unique(heads, axis=0, return_index=True, return_inverse=True)
    for g in np.argsort(first, kind="stable"):
        yield np.flatnonzero(inverse.reshape(-1) == g)
