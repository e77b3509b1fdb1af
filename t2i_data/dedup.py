"""Duplicate images inside a split, and the same image in two splits (train/test leakage).

Every preprocessed sample records two digests (``preprocess.py``):

- ``source_sha256``: sha256 of the source file's bytes. Catches the same file listed twice,
  under any name or id (COCO's id 12 pointing at id 10's file).
- ``pixel_digest``: XXH3-128 of the stored pixels. Catches a copy whose bytes differ but whose
  pixels do not: EXIF or other metadata stripped or changed, the same JPEG coefficients written
  again (``jpegtran -copy none``), a PNG saved again with other compression.

A copy re-encoded lossily has other pixels and is not an exact duplicate; finding near
duplicates (perceptual hashes) is not done here.

Inside a split the first sample in key order is kept and each later copy is quarantined as
``duplicate-image: same source bytes as <key>`` (or ``same stored pixels as <key>``). The
check needs every shard's digests, so it runs after all shards are written: the shards that
hold a copy are rewritten without it (a filter over the tar, nothing decoded again), which is
deterministic for any worker count, and a rerun reuses the rewritten shards. Across the splits
of one build, a sample whose digest is also in another split is listed in both manifests'
``leakage`` and kept (which split should lose it is the user's call); ``--strict`` refuses it.

Cost at COCO's scale, ``python bench/bench_dedup.py`` (123,287 samples): see the README.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from .digest import canonical_json
from .manifest import atomic_write
from .build import STATS_DIR, merge_stats
from .tario import TarWriter, iter_samples

log = logging.getLogger(__name__)
DUPLICATE = "duplicate-image"


def find_duplicates(rows: list[list[str]]) -> dict[str, str]:
    """``[key, file digest, pixel digest]`` rows in key order → {later key: reason} for every
    row whose file or pixel digest an earlier row already has."""
    by_file: dict[str, str] = {}
    by_pixels: dict[str, str] = {}
    dups = {}
    for key, file, pixels in rows:
        if file in by_file:
            dups[key] = f"{DUPLICATE}: same source bytes as {by_file[file]} (sha256 {file[:16]})"
        elif pixels in by_pixels:
            dups[key] = f"{DUPLICATE}: same stored pixels as {by_pixels[pixels]}"
        else:
            by_file[file] = key
            by_pixels.setdefault(pixels, key)
    return dups


def find_leakage(rows_by_split: dict[str, list[list[str]]]) -> dict[str, list[dict]]:
    """For each split, its samples whose file or pixel digest is also in another split:
    ``{"key", "other_split", "other_key", "by": "file" | "pixels"}``, in key order."""
    first: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, digest) -> (split, key), first split wins
    for split in sorted(rows_by_split):
        for key, file, pixels in rows_by_split[split]:
            first.setdefault(("file", file), (split, key))
            first.setdefault(("pixels", pixels), (split, key))
    out: dict[str, list[dict]] = {s: [] for s in rows_by_split}
    for split, rows in rows_by_split.items():
        for key, file, pixels in rows:
            for by, digest in (("file", file), ("pixels", pixels)):
                other_split, other_key = first[(by, digest)]
                if other_split != split:
                    entry = {"key": key, "other_split": other_split, "other_key": other_key, "by": by}
                    out[split].append(entry)
                    out[other_split].append({"key": other_key, "other_split": split, "other_key": key, "by": by})
                    break
    return {s: sorted(v, key=lambda e: (e["key"], e["other_split"], e["other_key"])) for s, v in out.items()}


def drop_samples(out_dir: Path, record: dict, drop: dict[str, str], stats_of: Callable[[dict], dict]) -> dict:
    """Rewrite one shard without the samples in ``drop`` ({key: reason}); they join its
    quarantined inputs, and ``stats_of(sample)`` of each is taken off the shard's stats."""
    path = Path(out_dir) / record["name"]
    kept_stats = dict(record.get("stats", {}))
    with TarWriter(path) as writer:
        for sample in list(iter_samples(path)):
            if sample["__key__"] in drop:
                kept_stats = merge_stats(kept_stats, {k: -v for k, v in stats_of(sample).items()})
            else:
                writer.write(sample)
        new = writer.close()
    quarantined = record["quarantined"] + [{"key": k, "reason": r} for k, r in drop.items()]
    rec = {k: v for k, v in record.items() if k != "skipped"}
    rec.update(new, quarantined=sorted(quarantined, key=lambda r: r["key"]),
               digests=[row for row in record.get("digests", []) if row[0] not in drop])
    if "stats" in record:
        rec["stats"] = kept_stats
    atomic_write(Path(out_dir) / STATS_DIR / f"{record['name']}.json", canonical_json(rec))
    return dict(rec, skipped=record["skipped"])


def deduplicate(out_dirs: dict[str, Path], records: dict[str, list[dict]], stats_of: Callable[[dict], dict],
                strict: bool = False) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Quarantine the later copies inside each split (rewriting their shards) and find the
    leakage across splits. Returns (records per split, leakage per split). With ``strict``, the
    first duplicate or leaked sample raises ``T2IError``."""
    from .errors import T2IError

    rows = {s: [row for r in recs for row in r.get("digests", [])] for s, recs in records.items()}
    out = {}
    for split, recs in records.items():
        dups = find_duplicates(rows[split])
        if dups and strict:
            key, reason = next(iter(dups.items()))
            raise T2IError(f"{key}: {reason} (without --strict it would be quarantined and the run would go on)")
        if dups:
            log.warning("%s: %d duplicate images quarantined", split, len(dups))
        out[split] = [drop_samples(out_dirs[split], r, {k: dups[k] for k in (row[0] for row in r.get("digests", [])) if k in dups}, stats_of)
                      if any(row[0] in dups for row in r.get("digests", [])) else r for r in recs]
        rows[split] = [row for row in rows[split] if row[0] not in dups]
    leakage = find_leakage(rows) if len(rows) > 1 else {s: [] for s in rows}
    if strict and any(leakage.values()):
        split, entries = next((s, e) for s, e in sorted(leakage.items()) if e)
        e = entries[0]
        raise T2IError(f"{e['key']} ({split}) has the same {'source bytes' if e['by'] == 'file' else 'stored pixels'} as "
                       f"{e['other_key']} ({e['other_split']}): train/test leakage; {sum(map(len, leakage.values())) // 2} pairs in all")
    for split, entries in leakage.items():
        if entries:
            log.warning("%s: %d samples also in another split (leakage), listed in its manifest", split, len(entries))
    return out, leakage
