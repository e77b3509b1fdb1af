"""Build a shard set: one task per shard, resumable, identical bytes for any worker count.

Every pipeline hands this module a ``produce(payload)`` function that yields the samples of one
shard (or ``Quarantined`` records for inputs it quarantined); a shard's payload is its index, or
what the pipeline passes for it (its slice of source records), so a task ships only its own. A task writes its shard under a
temporary name, renames it, then writes a small record in ``.stats/``, last, as img2dataset
writes its ``_stats.json``. A rerun skips a shard whose record names the same config digest and
whose file still has the recorded sha256, so a build killed at any moment (even ``kill -9``)
resumes with only the missing shards and ends with the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from .card import refuse_foreign_card, write_card
from .digest import canonical_json, file_sha256
from .errors import DISK_FULL, T2IError
from .manifest import FORMAT_VERSION, MANIFEST_NAME, atomic_write, write_manifest
from .quarantine import Quarantined
from .runner import sample_done
from .tario import PARTIAL_SUFFIX, TarWriter, ensure_index, index_path

log = logging.getLogger(__name__)
STATS_DIR = ".stats"
LOCK_NAME = ".t2i-build.lock"


class ShardStats(dict):
    """Yielded by a producer (last) to add counts to its shard's record; the manifest's ``stats``
    sums them over shards (numbers added, nested dicts added key by key)."""


def merge_stats(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_stats(out.get(k, {}), v) if isinstance(v, dict) else out.get(k, 0) + v
    return out


SHARD_FORMAT = 1  # what a shard holds; manifest format 2 only renamed manifest fields, so format-1 shards are reused


def config_digest(identity: dict) -> str:
    """The digest that decides whether an existing shard is reused: the set's identity and the
    shard format (``SHARD_FORMAT``, not the manifest's ``FORMAT_VERSION``: renaming a manifest field
    must not rebuild shards whose bytes would not change)."""
    return hashlib.sha256(canonical_json(dict(identity, format_version=SHARD_FORMAT))).hexdigest()


def out_folder(out: str | Path, what: str) -> Path:
    """``out`` made (with its parents) as the folder a command writes ``what`` into (a shard set,
    figures and a report); ``T2IError`` in one line when it is a file or cannot be made (a file on
    the way, no permission)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise T2IError(f"--out {out}: a file, not a folder; give a folder for {what}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise T2IError(f"--out {out}: cannot make the folder ({e.strerror})") from None
    return out


@contextmanager
def build_lock(out: str | Path):
    """Hold ``out/.t2i-build.lock`` (pid, host, start time) for the length of a build.

    A second build into the same folder stops at once with one message naming the owner, instead
    of deleting the first's partial files under it; so does a build into a folder holding a
    README.md or LICENSE.md that t2i did not write (``card.refuse_foreign_card``), which its card
    would replace. A lock left by a process that is gone (same
    host, pid not running) is taken over with a warning; one from another host is not, since
    its pid cannot be checked from here.
    """
    out = out_folder(out, "the shard set")
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_bytes())
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                log.warning("%s: taking over the lock of build pid %d, which is no longer running", out, owner["pid"])
                path.unlink(missing_ok=True)
                continue
            raise T2IError(f"{out}: another build is writing here (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
                           f"since {owner.get('started', '?')}); wait for it to finish, or delete {path} if that build is gone") from None
        except PermissionError as e:  # an existing folder this user cannot write in
            raise T2IError(f"{out}: cannot write here ({e.strerror}); give an --out folder you can write to") from None
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            raise T2IError(f"{out}: cannot write here ({e.strerror}); give an --out folder on a writable file system") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        refuse_foreign_card(out)  # the build ends by writing its card there: never over the user's own README.md
        yield
    finally:
        path.unlink(missing_ok=True)


def locks_out(fn):
    """Decorator for a build function with an ``out`` parameter: it runs holding ``build_lock(out)``."""
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with build_lock(sig.bind(*args, **kwargs).arguments["out"]):
            return fn(*args, **kwargs)

    return wrapper


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def disk_errors(path: str | Path):
    """A full disk or quota while writing ``path`` → one ``T2IError`` naming it. Complete shards
    stay (their ``.stats`` record marks them done) and partial files are removed or overwritten
    by the rerun, so the same command, rerun with space freed, goes on where it stopped."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise T2IError(f"{path}: {os.strerror(e.errno)}; free space (or raise the quota) and rerun the same command: "
                       "complete shards are kept") from None


def derived_dir(source: str | Path, manifest_path: Path, out: str | Path) -> Path:
    """Where a set derived from one split of ``source`` goes: the output mirrors the input's
    layout, whatever the number of splits. A split folder (or its manifest file) gives ``out``
    itself; a build folder of split subfolders gives ``out/<split folder>`` for each, even when
    it holds a single split."""
    source = Path(source)
    single = source.is_file() or (source / MANIFEST_NAME).is_file()
    return Path(out) if single else Path(out) / manifest_path.parent.name


def refuse_overwrite(source_dir: Path, target: Path) -> None:
    """A derived set written into its own source folder would replace the source's shards (same
    names): refuse it with one message."""
    if Path(target).resolve() == Path(source_dir).resolve():
        raise T2IError(f"--out {target}: that is the input set's own folder, whose shards the output would replace; "
                       "give another folder")


def refuse_other_set(out: Path, identity: dict) -> None:
    """A folder holds one shard set. When ``out`` already holds the manifest of another set
    (another kind, dataset or split), writing this one there would replace that manifest and
    leave its shards behind, listed nowhere: ``T2IError`` naming both sets. The same set
    (a rerun, or a rebuild under a changed config) is rebuilt in place as before. A manifest that
    cannot be read is left to the build, which replaces it."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        there = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(there, dict):
        return
    fields = ("kind", "dataset", "split")
    old, new = (tuple(str(d.get(f)) for f in fields) for d in (there, identity))
    if old != new:
        raise T2IError(f"--out {out}: holds the {old[0]} set of {old[1]} {old[2]}; writing the {new[0]} set of {new[1]} {new[2]} there "
                       f"would replace its manifest and orphan its shards; give each set a folder of its own (a build folder of "
                       f"splits as input gives --out/<split>/)")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_shard(produce: Callable, out_dir: str, digest: str, item: tuple, stamp: Callable | None = None) -> dict:
    """One task: write shard ``item = (index, name, payload)`` unless an identical one is there.

    ``stamp(payload)``, when given, says what the shard's inputs look like now (file sizes and
    times); a shard whose record holds another stamp is written again.

    A sample may carry ``"__digests__": {"file": ..., "pixels": ...}`` (never written to the
    tar): the record keeps them as ``digests`` rows ``[key, file, pixels]`` for the duplicate
    check that runs over the whole set (``dedup.py``)."""
    index, name, payload = item
    out = Path(out_dir)
    final, stats_path = out / name, out / STATS_DIR / f"{name}.json"
    now = stamp(payload) if stamp is not None else None
    if final.exists() and stats_path.exists():
        rec = json.loads(stats_path.read_bytes())
        if rec.get("config_digest") == digest and rec.get("input_stamp") == now and rec.get("bytes") == final.stat().st_size:
            if file_sha256(final) == rec["sha256"]:
                ensure_index(final, rec["sha256"])
                return dict(rec, skipped=True)
    quarantined, stats, digests = [], {}, []
    with disk_errors(final), TarWriter(final) as writer:
        for sample in produce(payload):
            if isinstance(sample, Quarantined):
                quarantined.append({"key": sample.key, "reason": sample.reason})
            elif isinstance(sample, ShardStats):
                stats = merge_stats(stats, sample)
            else:
                writer.write(sample)
                sample_done()  # the runner's bar, and AutoRunner's timing, within the shard
                if "__digests__" in sample:
                    digests.append([sample["__key__"], sample["__digests__"]["file"], sample["__digests__"]["pixels"]])
        rec = writer.close()
    rec.update(index=index, config_digest=digest, quarantined=quarantined)
    if now is not None:
        rec["input_stamp"] = now
    if stats:
        rec["stats"] = stats
    if digests:
        rec["digests"] = digests
    with disk_errors(stats_path):
        atomic_write(stats_path, canonical_json(rec))
    return dict(rec, skipped=False)


def build_shard_set(
    produce: Callable[..., Iterable],
    out_dir: str | Path,
    prefix: str,
    shard_samples: list[int],
    identity: dict,
    runner,
    desc: str = "",
    payloads: list | None = None,
) -> dict:
    """Write ``len(shard_samples)`` shards and their manifest; ``identity`` goes into the manifest.

    Shard i is ``produce(payloads[i])``, or ``produce(i)`` without payloads.

    ``identity`` holds every manifest field that decides the bytes (kind, dataset, split,
    config, seed, sources, encoder, ...); its digest decides which existing shards are reused.
    """
    records = write_shards(produce, out_dir, prefix, shard_samples, identity, runner, desc, payloads)
    return finish_shard_set(out_dir, identity, records)


@dataclass(frozen=True)
class ShardJob:
    """One shard set's tasks, ready for a runner: ``task(item)`` writes one shard (``write_shard``)."""

    out: Path
    task: Callable
    items: list
    weights: list[int]
    desc: str
    prepare: Callable | None = None  # makes the folder and drops stale shards: run by run_shard_jobs once every job is planned


def _prepare_out(out: Path, prefix: str, names: list[str]) -> None:
    (out / STATS_DIR).mkdir(parents=True, exist_ok=True)
    _remove_stale(out, prefix, set(names))


def plan_shards(produce: Callable[..., Iterable], out_dir: str | Path, prefix: str, shard_samples: list[int], identity: dict,
                desc: str = "", payloads: list | None = None, stamp: Callable | None = None) -> ShardJob:
    """Check ``out_dir`` for ``write_shards`` (refuse another set's folder, or a README.md /
    LICENSE.md t2i did not write) and return its tasks without running them or touching the
    folder: ``run_shard_jobs`` makes it and drops the shards the shard count no longer has only
    once every set of the build has passed these checks, so a refusal of a later split leaves an
    earlier one as it was."""
    out = Path(out_dir)
    refuse_other_set(out, identity)
    refuse_foreign_card(out)
    names = [shard_name(prefix, i) for i in range(len(shard_samples))]
    task = partial(write_shard, produce, str(out), config_digest(identity), stamp=stamp)
    payloads = list(range(len(names))) if payloads is None else payloads
    return ShardJob(out, task, list(zip(range(len(names)), names, payloads)), list(shard_samples), desc,
                    partial(_prepare_out, out, prefix, names))


def _run_job_item(job_item: tuple) -> dict:
    task, item = job_item
    return task(item)


def _wrote(record: dict) -> bool:
    """Whether a shard task wrote its shard (not reused from an earlier build): the runner times only those."""
    return not record["skipped"]


def run_shard_jobs(jobs: list[ShardJob], runner, desc: str = "") -> list[list[dict]]:
    """Every job's shards in one ``runner.map``, so no worker waits at the end of one set (a
    split) for the slowest shard before the next set's shards start; one record list per job,
    each in shard order. A build of a 20-shard train and a 2-shard test split on 2 workers, set
    by set, idled one worker for a shard's time at the end of train (README, MD-MNIST, Speed)."""
    for j in jobs:
        if j.prepare is not None:
            j.prepare()
    pairs = [(j.task, item) for j in jobs for item in j.items]
    weights = [w for j in jobs for w in j.weights]
    flat = runner.map(_run_job_item, pairs, weights=weights, desc=desc or " + ".join(j.desc for j in jobs if j.desc),
                      did_work=_wrote)
    out, at = [], 0
    for j in jobs:
        records = flat[at : at + len(j.items)]
        at += len(j.items)
        skipped = sum(r["skipped"] for r in records)
        if skipped:
            log.info("%s: reused %d of %d shards already complete", j.out, skipped, len(records))
        out.append(records)
    return out


def write_shards(produce: Callable[..., Iterable], out_dir: str | Path, prefix: str, shard_samples: list[int], identity: dict,
                 runner, desc: str = "", payloads: list | None = None, stamp: Callable | None = None) -> list[dict]:
    """The shards of ``build_shard_set`` without the manifest: one record per shard, in order
    (``stamp``: see ``write_shard``)."""
    return run_shard_jobs([plan_shards(produce, out_dir, prefix, shard_samples, identity, desc, payloads, stamp)], runner, desc)[0]


def finish_shard_set(out_dir: str | Path, identity: dict, records: list[dict], extra: dict | None = None) -> dict:
    """Manifest (``identity`` + ``extra`` + shards, quarantined inputs, stats, totals) and card."""
    out = Path(out_dir)
    manifest = dict(identity, **(extra or {}))
    manifest["format_version"] = FORMAT_VERSION
    manifest["shards"] = [{k: r[k] for k in ("name", "sha256", "bytes", "content_digest", "samples", "first_key", "last_key")} for r in records]
    manifest["quarantined"] = [x for r in records for x in r["quarantined"]]
    if any("stats" in r for r in records):
        stats: dict = {}
        for r in records:
            stats = merge_stats(stats, r.get("stats", {}))
        manifest["stats"] = stats
    manifest["totals"] = {
        "shards": len(records),
        "samples": sum(r["samples"] for r in records),
        "bytes": sum(r["bytes"] for r in records),
        "quarantined": len(manifest["quarantined"]),
    }
    with disk_errors(out / MANIFEST_NAME):
        manifest = write_manifest(out / MANIFEST_NAME, manifest)
        write_card(out, manifest)  # README.md beside the shards, from the manifest
    manifest["_skipped"] = sum(r["skipped"] for r in records)
    return manifest


def _remove_stale(out: Path, prefix: str, keep: set[str]) -> None:
    """Drop this set's shards and partial files that the new shard count does not include."""
    pattern = re.compile(re.escape(prefix) + r"-\d{6}\.tar(" + re.escape(PARTIAL_SUFFIX) + ")?")
    for p in sorted(out.iterdir()):
        if pattern.fullmatch(p.name) and p.name not in keep:
            log.info("removing %s, %s", p, "left unfinished by an earlier build" if p.name.endswith(PARTIAL_SUFFIX)
                     else "which the current config does not produce")
            p.unlink()
            (out / STATS_DIR / f"{p.name}.json").unlink(missing_ok=True)
            index_path(p).unlink(missing_ok=True)
