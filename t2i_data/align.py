"""Aligned shard sets: shard i of a derived set holds exactly the keys of shard i of its base, in
order (DESIGN.md). Joining is a zip with a key check; these checks guard every consumer: a
derived set against its image set (``check_aligned``), two sets against each other
(``check_same_image_set``), token sets against the tokenizer / autoencoder a model expects
(``check_tokenizer``, ``check_autoencoder``, ``check_text_encoder``), and each zipped sample's keys (``merge_aligned``)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import T2IError
from .manifest import MANIFEST_NAME, ShardSet, checked_samples, load_manifest


def check_aligned(base: dict, derived: dict, derived_name: str = "derived set") -> None:
    """Refuse a derived set (manifest ``derived``) that was not derived from the image set
    ``base``: ``T2IError`` naming both digests when its ``aligned_to`` is not ``base``'s digest,
    or when its shard list is not ``base``'s."""
    if derived.get("aligned_to") != base["digest"]:
        raise T2IError(
            f"{derived_name} ({derived.get('kind')}) is aligned to image set {str(derived.get('aligned_to'))[:16]}, "
            f"but the image set given has digest {base['digest'][:16]} ({base.get('dataset')}/{base.get('split')}); "
            f"re-derive it from this image set"
        )
    if [s["name"] for s in derived["shards"]] != [s["name"] for s in base["shards"]]:
        raise T2IError(f"{derived_name}: its shard list differs from the image set's, although the digests match; rebuild it")


def image_set_of(manifest: dict) -> str | None:
    """The digest of the image set a set belongs to: its own for an image set, ``aligned_to`` for
    a derived one (None when a derived manifest lacks it)."""
    return manifest["digest"] if manifest.get("kind") == "images" else manifest.get("aligned_to")


def check_same_image_set(first: dict, second: dict, first_name: str, second_name: str,
                         fix: str = "derive both from the same image set") -> None:
    """Refuse two sets (manifests, of any kinds) that do not belong to the same image set
    (``image_set_of``), or whose shard lists differ although they do: ``T2IError`` naming both
    sets and both digests, ending with ``fix``."""
    if image_set_of(second) != image_set_of(first):
        raise T2IError(f"{second_name} ({second.get('kind')}) belongs to image set {str(image_set_of(second))[:16]}, but "
                       f"{first_name} ({first.get('kind')}) to {str(image_set_of(first))[:16]}; {fix}")
    mine, theirs = [s["name"] for s in first["shards"]], [s["name"] for s in second["shards"]]
    if theirs != mine:
        odd = sorted(set(mine) ^ set(theirs))
        raise T2IError(f"{second_name}: its shard list differs from {first_name}'s ({f'e.g. {odd[0]}' if odd else 'in its order'}) "
                       f"although both belong to image set {str(image_set_of(first))[:16]}; rebuild it")


def _check_maker(manifest: dict, part: str, tokens: str, command: str, expected: str, what: str) -> None:
    found = (manifest.get(part) or {}).get("fingerprint")
    if found != expected:
        raise T2IError(f"{tokens} made by {part} {str(found)[:16]}, but {what} expects {expected[:16]}; "
                       f"re-run t2i {command} with the {part} {what} was trained with")


def check_tokenizer(manifest: dict, expected_fingerprint: str, what: str = "the model") -> None:
    """Refuse a text-token set made by another tokenizer than the one ``what`` expects
    (``T2IError`` naming both fingerprints)."""
    _check_maker(manifest, "tokenizer", "text tokens", "tokenize", expected_fingerprint, what)


def check_autoencoder(manifest: dict, expected_fingerprint: str, what: str = "the model") -> None:
    """Refuse an image-token set made by another autoencoder than the one ``what`` expects
    (``T2IError`` naming both fingerprints)."""
    _check_maker(manifest, "autoencoder", "image tokens", "encode", expected_fingerprint, what)


def check_text_encoder(manifest: dict, expected_fingerprint: str, what: str = "the model") -> None:
    """Refuse a text-embedding set made by another text encoder than the one ``what`` expects
    (``T2IError`` naming both fingerprints; ``t2i_models/embed.py`` records it as
    ``text_encoder.fingerprint``)."""
    _check_maker(manifest, "text_encoder", "text embeddings", "embed", expected_fingerprint, what)


def same_key(parts: tuple[dict, ...] | list[dict], where: str) -> str:
    """The key the samples of aligned sets read side by side share (the base set's first);
    ``T2IError`` naming the shard and every key when they differ."""
    key = parts[0]["__key__"]
    if any(p["__key__"] != key for p in parts[1:]):
        raise T2IError(f"{where}: key {key} in the base set meets {[p['__key__'] for p in parts[1:]]} in the derived sets; rebuild them")
    return key


def merge_aligned(parts: tuple[dict, ...], where: str) -> dict:
    """One sample from each aligned set → one dict; the keys must agree (``same_key``)."""
    same_key(parts, where)
    merged: dict = {}
    for p in parts:
        merged.update(p)
    return merged


def zip_aligned(base_dir: str | Path, *derived_dirs: str | Path) -> Iterator[dict]:
    """Samples of the base set merged with those of each derived set, shard by shard, every shard
    checked against its manifest first (``manifest.checked_samples``: size, sha256, count)."""
    base = ShardSet(Path(base_dir), load_manifest(Path(base_dir) / MANIFEST_NAME))
    derived = []
    for d in map(Path, derived_dirs):
        ss = ShardSet(d, load_manifest(d / MANIFEST_NAME))
        check_aligned(base.manifest, ss.manifest, str(d))
        derived.append(ss)
    for i, shard in enumerate(base.manifest["shards"]):
        streams = [checked_samples(base, shard)] + [checked_samples(ss, ss.manifest["shards"][i]) for ss in derived]
        for parts in zip(*streams, strict=True):
            yield merge_aligned(parts, shard["name"])
