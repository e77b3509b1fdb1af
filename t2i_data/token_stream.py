"""Streaming aligned image-token and text-token shards into prior training.

Per epoch: shards in a seeded order, samples numbered along it, and global worker g of
G = world × workers takes a contiguous range of ⌊N/G⌋ or ⌈N/G⌉ samples (split at sample
granularity). Every worker yields ⌈⌈N/G⌉ / B⌉ batches of B entries; entries past a worker's
samples are padding with ``valid = False`` (and zero tokens). So in one epoch every sample is
seen exactly once over all ranks, nothing is dropped, and every rank takes the same number of
steps; a trainer weights its loss by ``valid``. One caption (of the sample's C) and one view (of
its K) are picked per (seed, epoch, key). A shard that turns out truncated or corrupt is logged,
the samples it could not give are counted in the batch's ``lost`` field and replaced by padding,
and the epoch goes on. Resume: ``set_epoch(epoch, batches_done)`` as in ``ShardStream``.

Speed: ``.npy`` payloads are viewed straight out of the tar bytes (the header is parsed once per
distinct header), and the caption / view choices are drawn for a whole shard at once.
"""
from __future__ import annotations

import ast
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import T2IError
from .manifest import MANIFEST_NAME, load_manifest
from .rng import keyed_u64, stream_id
from .stream import rank_and_world, shuffled
from .tario import _parse_ustar, split_name

log = logging.getLogger(__name__)
_HEADERS: dict[bytes, tuple] = {}


def npy_view(data: bytes) -> np.ndarray:
    """The array of an .npy payload, without copying; its header is parsed once per distinct header."""
    hlen = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    start = 10 if data[6] == 1 else 12
    head = data[start : start + hlen]
    meta = _HEADERS.get(head)
    if meta is None:
        d = ast.literal_eval(head.decode("latin1"))
        if d["fortran_order"]:
            raise ValueError("fortran-ordered .npy is not supported here")
        meta = _HEADERS[head] = (np.dtype(d["descr"]), d["shape"], int(np.prod(d["shape"])))
    dtype, shape, count = meta
    return np.frombuffer(data, dtype=dtype, offset=start + hlen, count=count).reshape(shape)


def plan_exact(sizes: list[int], world: int, workers: int, batch: int, seed: int, epoch: int):
    """(per global worker [(shard, first, stop)], batches per worker) with every sample once."""
    g = world * max(workers, 1)
    order = np.random.default_rng([seed, epoch, stream_id("token-shard-order")]).permutation(len(sizes))
    n = sum(sizes)
    per, extra = divmod(n, g)
    batches = -(-(per + (extra > 0)) // batch)
    starts = np.cumsum([0] + [sizes[i] for i in order])
    ranges, lo = [], 0
    for w in range(g):
        hi = lo + per + (w < extra)
        ranges.append([(int(s), int(max(lo, starts[k]) - starts[k]), int(min(hi, starts[k + 1]) - starts[k]))
                       for k, s in enumerate(order) if max(lo, starts[k]) < min(hi, starts[k + 1])])
        lo = hi
    return ranges, batches


class TokenStream(IterableDataset):
    def __init__(self, image_tokens: str | Path, text_tokens: str | Path, batch_size: int, seed: int = 0, shuffle_buffer: int = 1024,
                 rank: int | None = None, world_size: int | None = None, expect_tokenizer: str | None = None,
                 expect_autoencoder: str | None = None) -> None:
        self.img_dir, self.txt_dir = Path(image_tokens), Path(text_tokens)
        self.img_m = load_manifest(self.img_dir / MANIFEST_NAME)
        self.txt_m = load_manifest(self.txt_dir / MANIFEST_NAME)
        if self.img_m.get("kind") != "image_tokens" or self.txt_m.get("kind") != "text_tokens":
            raise T2IError(f"expected an image_tokens and a text_tokens set, got {self.img_m.get('kind')} and {self.txt_m.get('kind')}")
        if self.img_m["aligned_to"] != self.txt_m["aligned_to"]:
            raise T2IError(f"image tokens are aligned to image set {self.img_m['aligned_to'][:16]} but text tokens to "
                           f"{self.txt_m['aligned_to'][:16]}; derive both from the same image set")
        if expect_tokenizer and self.txt_m["tokenizer"]["fingerprint"] != expect_tokenizer:
            raise T2IError(f"text tokens made by tokenizer {self.txt_m['tokenizer']['fingerprint'][:16]}, the checkpoint expects {expect_tokenizer[:16]}")
        if expect_autoencoder and self.img_m["autoencoder"]["fingerprint"] != expect_autoencoder:
            raise T2IError(f"image tokens made by autoencoder {self.img_m['autoencoder']['fingerprint'][:16]}, the checkpoint expects {expect_autoencoder[:16]}")
        self.names = [s["name"] for s in self.img_m["shards"]]
        self.sizes = [s["samples"] for s in self.img_m["shards"]]
        self.L = self.txt_m["tokenizer"]["length"]
        self.pad_id = self.txt_m["tokenizer"]["pad_id"]
        grid = self.img_m["autoencoder"]["grid"]
        self.hw = grid * grid
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0, num_workers: int = 0) -> None:
        if num_workers > 1 and skip_batches % num_workers:
            raise T2IError(f"resume at batch {skip_batches} is not a multiple of the {num_workers} dataloader workers")
        self.epoch, self.skip_batches = epoch, skip_batches

    def state_dict(self, batches_done: int) -> dict:
        return {"epoch": self.epoch, "batches_done": batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict, num_workers: int = 0) -> None:
        if state["seed"] != self.seed:
            raise T2IError(f"stream state was saved with seed {state['seed']}, this stream has seed {self.seed}")
        self.set_epoch(state["epoch"], state["batches_done"], num_workers)

    def _dist(self) -> tuple[int, int]:
        return rank_and_world(self.rank, self.world_size)

    def _read(self, path: Path, suffix: str, a: int, b: int) -> tuple[list[str], list[np.ndarray]]:
        """Keys and arrays of samples a..b of one shard: zero-copy views into the file's bytes,
        the .npy header parsed once per distinct header."""
        data = path.read_bytes()
        index = _parse_ustar(data, str(path), offsets=True)
        if index is None:
            raise ValueError("not a plain ustar shard")
        members = [(n, o, z) for n, o, z in index if n.endswith(suffix)][a:b]
        keys, arrays, layouts = [], [], {}
        for name, off, size in members:
            head = data[off : off + 128]  # an .npy header block (version 1: 64-byte aligned, here 128 bytes)
            lay = layouts.get(head)
            if lay is None:
                probe = npy_view(data[off : off + size])
                lay = layouts[head] = (probe.dtype, probe.shape, probe.size, size - probe.nbytes)
            dtype, shape, count, skip = lay
            keys.append(split_name(name)[0])
            arrays.append(np.frombuffer(data, dtype=dtype, count=count, offset=off + skip).reshape(shape))
        return keys, arrays

    def _shard(self, shard: int, a: int, b: int):
        """(text row, image tokens, key) for samples a..b of a shard, and how many were lost."""
        name = self.names[shard]
        try:
            keys, imgs = self._read(self.img_dir / name, ".image_tokens.npy", a, b)
            tkeys, txts = self._read(self.txt_dir / name, ".text_tokens.npy", a, b)
            if keys != tkeys or len(keys) != b - a:
                raise ValueError(f"{len(keys)} image and {len(tkeys)} text samples where {b - a} were expected, or keys differ")
        except Exception as e:  # a truncated or corrupt shard: report, count, go on
            log.warning("%s: unreadable (%s); %d samples lost this epoch", name, e, b - a)
            return [], b - a
        kh = np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys], dtype=np.uint64)
        n_caps = np.array([len(t) for t in txts], dtype=np.uint64)
        n_views = np.array([len(v) for v in imgs], dtype=np.uint64)
        cap = (keyed_u64(self.seed, stream_id("caption"), kh, self.epoch) % np.maximum(n_caps, 1)).tolist()
        view = (keyed_u64(self.seed, stream_id("view"), kh, self.epoch) % n_views).tolist()
        empty = np.full(self.L, self.pad_id, np.uint16)
        return [(t[c] if len(t) else empty, v[w].reshape(-1), k) for t, v, k, c, w in zip(txts, imgs, keys, cap, view)], 0

    def __iter__(self):
        rank, world = self._dist()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        ranges, batches = plan_exact(self.sizes, world, nw, self.batch_size, self.seed, self.epoch)
        skip = (self.skip_batches - wid + nw - 1) // nw if self.skip_batches > wid else 0
        rng = np.random.default_rng([self.seed, self.epoch, rank * nw + wid, stream_id("token-shuffle")])
        B = self.batch_size

        def samples():
            for shard, a, b in ranges[rank * nw + wid]:
                got, lost = self._shard(shard, a, b)
                if lost:
                    yield ("lost", lost)
                yield from got

        it = shuffled(samples(), rng, self.shuffle_buffer)
        pad_text = np.full(self.L, self.pad_id, dtype=np.int64)
        pad_image = np.zeros(self.hw, dtype=np.int64)
        for bi in range(batches):
            texts, images, keys, lost = [], [], [], 0
            while len(texts) < B:
                item = next(it, None)
                if item is None:
                    break
                if isinstance(item[0], str):  # ("lost", count) from an unreadable shard
                    lost += item[1]
                    continue
                texts.append(item[0])
                images.append(item[1])
                keys.append(item[2])
            if bi < skip:
                continue  # consumed before the checkpoint (tokens are cheap: no decoding to save)
            n = len(texts)
            valid = np.zeros(B, dtype=bool)
            valid[:n] = True
            # one stack per batch (C speed), then padding entries after the real ones
            text = np.stack(texts + [pad_text] * (B - n)).astype(np.int64, copy=False)
            image = np.stack(images + [pad_image] * (B - n)).astype(np.int64, copy=False)
            yield {"text": torch.from_numpy(text), "image": torch.from_numpy(image), "valid": torch.from_numpy(valid),
                   "keys": keys + [""] * (B - n), "lost": lost}
