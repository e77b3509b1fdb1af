"""A seeded subset of a shard set's samples, streamed as ``ShardStream`` streams the whole set.

The CVAE study trains its COCO model "on .30 of the dataset" (seed 002, §4.2); its code draws the
subset with ``random.sample`` from an unseeded generator, so no two runs see the same images. Here
sample ``key`` is kept iff ``u(seed, key) < fraction``, with ``u`` = 53 random bits of
``rng.keyed_u64(seed, stream_id("fraction"), xxh3(key), 0)`` as a float in [0, 1): a pure
function of the seed and the key, so the subset is the same whatever the shard layout, the
number of ranks or dataloader workers, the epoch, or the order the samples are read in; it is no
"first N", and ``fraction = 1`` keeps every sample. The count kept is binomial around
``fraction · N`` (not exactly ``round(fraction · N)``: an exact count would make each key's fate
depend on the others).

``SubsetShardStream`` reads the keys of every base shard once when it is made (from the offset
index when it matches, after the shard's sha256 is checked as every read is; a base set read by
URL has every shard fetched into the shard cache for that), plans its epochs
over the kept samples only (``plan_epoch`` over the kept counts per shard), and records the subset
(fraction and seed) beside the sets' digests in its plan, so a resume under another subset is
refused mid-epoch as any other change of plan is. Derived sets zipped with the base (text
embeddings, tokens) are aligned to it key for key, so the same positions are kept in each.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from .errors import T2IError
from .rng import key_ids, stream_id, uniform_float
from .stream import ShardStream, check_shard_cached
from .tario import member_table, split_name

SUBSET_STREAM = "fraction"


def check_fraction(fraction: float, what: str = "fraction") -> float:
    """``fraction`` as a float in (0, 1]; ``T2IError`` naming ``what`` otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise T2IError(f"{what} must be a share of the samples in (0, 1] (1 = all of them), got {fraction!r}")
    return float(fraction)


def kept_mask(keys: list[str], seed: int, fraction: float) -> np.ndarray:
    """(len(keys),) bool: which of ``keys`` the subset (seed, fraction) keeps (module docstring)."""
    if not keys:
        return np.zeros(0, dtype=bool)
    return uniform_float(seed, stream_id(SUBSET_STREAM), key_ids(list(keys)), 0) < fraction


def shard_keys(path: Path, record: dict) -> list[str]:
    """The sample keys of one shard in order, after its size and sha256 are checked against its
    manifest ``record`` (``T2IError`` naming it when they differ)."""
    check_shard_cached(path, record)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            names: list[str] = []
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                names = member_table(path, mm, record.get("sha256"))[0]
    keys: list[str] = []
    for name in names:
        key = split_name(name)[0]
        if not keys or keys[-1] != key:
            keys.append(key)
    if len(keys) != record.get("samples"):
        raise T2IError(f"{path}: holds {len(keys)} samples, its manifest says {record.get('samples')}; rebuild the set's manifest")
    return keys


class SubsetShardStream(ShardStream):
    """``ShardStream`` over the samples the subset (``subset_seed``, ``fraction``) keeps. Besides
    ``ShardStream``'s: ``total`` (samples in the base set), ``kept`` (samples in the subset),
    ``kept_keys()``. ``T2IError`` for a fraction outside (0, 1] or a subset with no sample."""

    def __init__(self, dirs, decode, batch_size: int, seed: int = 0, shuffle_buffer: int = 256, rank: int | None = None,
                 world_size: int | None = None, fraction: float = 1.0, subset_seed: int | None = None) -> None:
        super().__init__(dirs, decode, batch_size, seed, shuffle_buffer, rank, world_size)
        self.fraction = check_fraction(fraction)
        self.subset_seed = seed if subset_seed is None else subset_seed
        self.positions, self._keys = [], []
        for name in self.names:
            with self.shard_sets[0].pinned(name) as path:  # a set read by URL: each base shard fetched once into the cache
                keys = shard_keys(path, self.records[0][name])
            mask = kept_mask(keys, self.subset_seed, self.fraction)
            self.positions.append(np.flatnonzero(mask))
            self._keys.append([k for k, m in zip(keys, mask) if m])
        self.total = sum(self.sizes)
        self.sizes = [len(p) for p in self.positions]
        self.kept = sum(self.sizes)
        if self.kept == 0:
            raise T2IError(f"{self.shard_sets[0].location}: fraction={self.fraction} (seed {self.subset_seed}) keeps none of its {self.total} samples; "
                           f"raise the fraction")
        self.sets = list(self.sets) + [f"subset fraction={self.fraction!r} seed={self.subset_seed}"]

    def kept_keys(self) -> list[str]:
        """The subset's keys, shard by shard in manifest order."""
        return [k for keys in self._keys for k in keys]

    def _samples(self, ranges, lost: dict):
        """``ShardStream._samples`` over the raw positions the kept range spans, the others dropped
        before decoding; an unreadable shard counts only its kept samples as lost."""
        for shard, a, b in ranges:
            if b <= a:
                continue
            pos = self.positions[shard]
            first, stop = int(pos[a]), int(pos[b - 1]) + 1
            want = set(pos[a:b].tolist())
            inner: dict = {}
            got, j = 0, first
            for name, sample in super()._samples([(shard, first, stop)], inner):
                if j in want:
                    got += 1
                    yield name, sample
                j += 1
            for name in inner:
                lost[name] = lost.get(name, 0) + (b - a - got)
