"""Aligned shard sets: shard i of a derived set holds exactly the keys of shard i of its base, in
order (DESIGN.md). Joining is a zip with a key check; these checks guard every consumer."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import T2IError
from .manifest import MANIFEST_NAME, load_manifest
from .tario import iter_samples


def check_aligned(base: dict, derived: dict, derived_name: str = "derived set") -> None:
    if derived.get("aligned_to") != base["digest"]:
        raise T2IError(
            f"{derived_name} ({derived.get('kind')}) is aligned to image set {str(derived.get('aligned_to'))[:16]}, "
            f"but the image set given has digest {base['digest'][:16]} ({base.get('dataset')}/{base.get('split')}); "
            f"re-derive it from this image set"
        )
    if [s["name"] for s in derived["shards"]] != [s["name"] for s in base["shards"]]:
        raise T2IError(f"{derived_name}: its shard list differs from the image set's, although the digests match; rebuild it")


def check_tokenizer(manifest: dict, expected_fingerprint: str, what: str = "the model") -> None:
    found = (manifest.get("tokenizer") or {}).get("fingerprint")
    if found != expected_fingerprint:
        raise T2IError(
            f"text tokens made by tokenizer {str(found)[:16]}, but {what} expects tokenizer {expected_fingerprint[:16]}; "
            f"re-run t2i tokenize with the tokenizer {what} was trained with"
        )


def merge_aligned(parts: tuple[dict, ...], where: str) -> dict:
    """One sample from each aligned set → one dict; the keys must agree."""
    key = parts[0]["__key__"]
    if any(p["__key__"] != key for p in parts[1:]):
        raise T2IError(f"{where}: key {key} in the base set meets {[p['__key__'] for p in parts[1:]]} in the derived sets")
    merged: dict = {}
    for p in parts:
        merged.update(p)
    return merged


def zip_aligned(base_dir: str | Path, *derived_dirs: str | Path) -> Iterator[dict]:
    """Samples of the base set merged with those of each derived set, shard by shard."""
    base_dir = Path(base_dir)
    base = load_manifest(base_dir / MANIFEST_NAME)
    derived = []
    for d in map(Path, derived_dirs):
        m = load_manifest(d / MANIFEST_NAME)
        check_aligned(base, m, str(d))
        derived.append(d)
    for shard in base["shards"]:
        streams = [iter_samples(base_dir / shard["name"])] + [iter_samples(d / shard["name"]) for d in derived]
        for parts in zip(*streams, strict=True):
            yield merge_aligned(parts, shard["name"])
