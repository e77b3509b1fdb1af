"""Derived shard sets: one set per split of an image shard set, aligned with it (DESIGN.md,
"Aligned shard sets"): shard i of the output holds exactly the keys of image shard i, in order.

``t2i tokenize`` (text tokens) and ``t2i encode`` (image tokens) differ only in what they make of
one image shard and what their manifests record about how; everything else is here, once:
finding the image manifests, refusing other kinds and missing shards, where each split's set
goes (``build.derived_dir``), refusing to write into the input, the build lock, one output
shard per image shard, the manifest's ``aligned_to`` and sources, and the build card.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .card import write_build_card
from .errors import T2IError
from .manifest import find_manifests, load_manifest
from .build import derived_dir, finish_shard_set, locks_out, plan_shards, refuse_overwrite, run_shard_jobs

# derive(manifest path, image manifest) -> (the kind's own manifest fields, produce(payload))
Derive = Callable[[Path, dict], tuple[dict, Callable]]


@locks_out
def build_derived_sets(images: str | Path, out: str | Path, runner, kind: str, command: str, reads: str, derive: Derive) -> dict[str, dict]:
    """Build the ``kind`` set derived from each split of ``images`` (a split folder, its
    manifest, or a build folder of splits) under ``out``, holding ``out``'s build lock.

    Per split, ``derive(manifest_path, image_manifest)`` runs the kind's own checks (raising
    ``T2IError``) and returns (its manifest fields besides the shared ones: ``config``, ``seed``,
    the ``tokenizer`` or ``autoencoder`` record, ``encoder``; the per-shard producer, which gets
    ``(image split folder as str, image shard record)`` and yields the output shard's samples,
    picklable for a dask runner). ``command`` and ``reads`` name the step in messages ("t2i
    {command} reads {reads}") and in progress.

    Returns {split: manifest} as ``build.build_shard_set`` does, each manifest also carrying
    (never written) ``_images``: the image split folder, and ``_out``: the derived set's folder,
    both ``Path``. Raises ``T2IError`` for a set that is not an image set, for shards its manifest
    lists but its folder lacks, and for an ``out`` that is the input's own folder."""
    manifests, planned = {}, []
    for mpath in find_manifests(images):
        base = load_manifest(mpath)
        if base.get("kind") != "images":
            raise T2IError(f"{mpath}: a {base.get('kind')} set; t2i {command} reads {reads}")
        split_dir = mpath.parent
        missing = [s["name"] for s in base["shards"] if not (split_dir / s["name"]).is_file()]
        if missing:
            raise T2IError(f"{split_dir}: shards listed in its manifest are missing ({', '.join(missing[:3])}); run t2i verify")
        own, produce = derive(mpath, base)
        identity = {
            "kind": kind, "dataset": base["dataset"], "split": base["split"], "regime": base.get("regime"), "size": base.get("size"),
            "sources": {"images": {"digest": base["digest"], "dataset": base["dataset"], "split": base["split"]}},
            "aligned_to": base["digest"],
        }
        if identity.keys() & own.keys():
            raise ValueError(f"derive may not set the shared manifest fields {sorted(identity.keys() & own.keys())}")
        target = derived_dir(images, mpath, out)
        refuse_overwrite(split_dir, target)
        job = plan_shards(produce, target, f"{base['dataset']}-{base['split']}", [s["samples"] for s in base["shards"]],
                          identity | own, desc=f"{command} {base['dataset']} {base['split']}",
                          payloads=[(str(split_dir), s) for s in base["shards"]])
        planned.append((base["split"], identity | own, job, split_dir))
    records = run_shard_jobs([job for _, _, job, _ in planned], runner, desc=f"{command} " + " + ".join(p[0] for p in planned))
    for (split, ident, job, split_dir), recs in zip(planned, records):  # every split's shards ran in one map
        manifests[split] = dict(finish_shard_set(job.out, ident, recs), _images=split_dir, _out=job.out)
    write_build_card(out, manifests)  # out/README.md for a build folder; nothing when out is the one set
    return manifests
