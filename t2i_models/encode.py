"""Pre-encoding: an image shard set → aligned image-token shards, K views per image.

Shard i of the output holds, for each key of image shard i in order, ``<key>.image_tokens.npy``
(uint16, (K, h, w); int32 above 65,536 codes) and ``<key>.json`` with the parameters of each
view. View 0 is the identity; the others come from the regime's random part drawn from
(seed, key, view). Tokens are the fp32 argmax (dVAE) or nearest codeword (VQ-VAE) in eval mode.
The manifest records the autoencoder (kind, weights fingerprint, V, grid), the digest of the
image set it is aligned to, and the code-usage histogram.

A multi-level autoencoder (VQ-VAE-2, ``vqvae2.py``: ``encode_levels`` instead of ``encode``) writes
one array per level instead of ``<key>.image_tokens.npy``: ``<key>.image_tokens.<level>.npy``, (K,
g, g) for that level's grid g, levels coarse to fine (``vqvae2.LEVELS``: ``image_tokens.top.npy``
(K, S/8, S/8), then ``image_tokens.bottom.npy`` (K, S/4, S/4)), one dtype for all (uint16 unless a
level has over 65,536 codes). Its manifest's ``autoencoder`` adds ``levels``: ``{level: {"grid",
"vocab_size"}}`` (JSON sorts the names; readers order the levels coarse to fine by grid,
``t2i_data.schema.levels_of``), and repeats the finest (bottom) level's ``grid`` and ``vocab_size``
at the top of the record, where every image-token manifest has them; readers go by ``levels``
(``t2i_data.schema.levels_of``). ``stats.code_usage`` is ``{level: {code: count}}``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from t2i_data.align import check_aligned
from t2i_data.augment import regime_of, stored_image, views
from t2i_data.derived import build_derived_sets
from t2i_data.manifest import ShardSet, checked_samples, load_manifest
from t2i_data.digest import canonical_array, canonical_json
from t2i_data.schema import check_meta, schema_for
from t2i_data.errors import T2IError
from t2i_data.npyio import load_npy, npy_bytes
from t2i_data.build import ShardStats
from t2i_data.tario import WRITER_ID, iter_samples

from .checkpoint import load_autoencoder


@dataclass(frozen=True)
class EncodeConfig:
    views: int = 1
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.views < 1:
            raise T2IError(f"--views must be >= 1, got {self.views}")
        if self.batch_size < 1:
            raise T2IError(f"--batch-size must be >= 1, got {self.batch_size}")


def sample_views(sample: dict, regime, seed: int, k: int, where: str | None = None) -> list:
    """[(ViewParams or None, (S, S, 3) uint8)]: K views, or the image itself without a regime;
    ``where`` (the shard) names a damaged or oversized image in the error."""
    if regime is None:
        return [(None, np.array(stored_image(sample, where)))]
    return views(sample, regime, seed, k, where)


@lru_cache(maxsize=2)
def cached_autoencoder(path: str):
    return load_autoencoder(path)


def model_levels(model) -> dict[str, tuple[int, int]] | None:
    """A multi-level autoencoder's ``{level: (grid, codes)}``, coarse to fine (VQ-VAE-2's
    ``cfg.levels``); None for a single-grid one (dVAE, VQ-VAE, the pretrained tokenizers)."""
    return dict(model.cfg.levels) if hasattr(model, "encode_levels") else None


def level_member(level: str | None) -> str:
    """The tar member (field) of a level's tokens: ``image_tokens.<level>.npy``; ``image_tokens.npy``
    for None (a single-grid set)."""
    return "image_tokens.npy" if level is None else f"image_tokens.{level}.npy"


def encode_arrays(model, images, batch_size: int, prefetch: int = 2) -> np.ndarray:
    """(S, S, 3) uint8 views (a list, or any iterable: e.g. a generator decoding them) → (N, h, w)
    int64 tokens, in batches of ``batch_size``, fp32, in input order, on the device of the model's
    weights (uint8 batches are moved there, tokens come back to the CPU).

    Decoding and the model overlap: a thread pulls the next batches (up to ``prefetch`` ahead) from
    ``images`` while the model encodes the current one. JPEG decoding (simplejpeg / Pillow) and
    torch's kernels both release the GIL, so the two run on separate cores
    (``bench/bench_encode.py`` measures it against decoding and encoding one after the other). An
    exception while decoding is raised here, after the batches before it were encoded. A
    multi-level autoencoder (``encode_levels``) gives ``{level: (N, g, g)}`` instead."""
    import queue
    import threading

    done = object()
    levels = model_levels(model)
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item) -> bool:  # False once the consumer has stopped (an error in the model): no one will take it
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        batch = []
        try:
            for a in images:
                batch.append(a)
                if len(batch) == batch_size:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(done)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=fill, name="t2i-encode-decode", daemon=True)
    thread.start()
    out = []
    device = next((p.device for p in model.parameters()), torch.device("cpu")) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    try:
        with torch.inference_mode():
            while (batch := q.get()) is not done:
                if isinstance(batch, BaseException):
                    raise batch
                x = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
                if levels:
                    out.append({k: v.cpu().numpy() for k, v in model.encode_levels(x).items()})
                else:
                    out.append(model.encode(x).cpu().numpy())
    finally:
        stop.set()
        thread.join()
    if levels:  # a multi-level autoencoder: {level: (N, g, g)}
        return {k: np.concatenate([o[k] for o in out]) if out else np.zeros((0, g, g), np.int64) for k, (g, _) in levels.items()}
    return np.concatenate(out) if out else np.zeros((0, model.cfg.grid, model.cfg.grid), np.int64)


def produce_shard(ckpt: str, cfg: EncodeConfig, regime_name: str, size: int, dtype: str, json_schema, shard: tuple[str, dict]) -> Iterator:
    """One image shard → its image-token shard; ``json_schema`` (``t2i_data.schema``) is what
    every sample's JSON must match. ``shard``: (its folder, its manifest record); it is read
    only after its size and sha256 match, and its sample count must too
    (``manifest.checked_samples``), so a truncated shard cannot give a short aligned set."""
    folder, record = shard
    image_shard = str(Path(folder) / record["name"])
    from t2i_data.regimes import Regime

    model, _ = cached_autoencoder(ckpt)
    regime = Regime(regime_name, size) if regime_name else None
    keys, params = [], []

    def decoded() -> Iterator[np.ndarray]:  # runs in encode_arrays' decoding thread, ahead of the model
        for sample in checked_samples(ShardSet(Path(folder), {"shards": [record]}), record):
            vs = sample_views(sample, regime, cfg.seed, cfg.views, image_shard)
            keys.append(sample["__key__"])
            params.append([p.to_json() if p else {"identity": True} for p, _ in vs])
            yield from (a for _, a in vs)

    levels = model_levels(model)
    if levels:  # one member per level, coarse to fine (module docstring)
        arrays = {k: v.astype(dtype) for k, v in encode_arrays(model, decoded(), cfg.batch_size).items()}
        for i, key in enumerate(keys):
            views = {"views": params[i]}
            check_meta(views, json_schema, key)
            meta = canonical_json(views)
            sample = {"__key__": key, "__content__": {}}
            for level in levels:
                t = arrays[level][i * cfg.views : (i + 1) * cfg.views]  # (K, g, g)
                sample[level_member(level)] = npy_bytes(t)
                sample["__content__"][level_member(level)] = canonical_array(t)
            sample["json"] = sample["__content__"]["json"] = meta
            yield sample
        usage = {k: np.bincount(arrays[k].ravel().astype(np.int64), minlength=v) for k, (_, v) in levels.items()}
        yield ShardStats({"samples": len(keys), "views": len(next(iter(arrays.values()))),
                          "code_usage": {k: {str(c): int(n) for c, n in enumerate(u) if n} for k, u in usage.items()}})
        return
    tokens = encode_arrays(model, decoded(), cfg.batch_size).astype(dtype)
    usage = np.bincount(tokens.ravel().astype(np.int64), minlength=model.cfg.vocab_size)
    for i, key in enumerate(keys):
        t = tokens[i * cfg.views : (i + 1) * cfg.views]  # (K, h, w)
        views = {"views": params[i]}
        check_meta(views, json_schema, key)
        meta = canonical_json(views)
        yield {"__key__": key, "image_tokens.npy": npy_bytes(t), "json": meta, "__content__": {"image_tokens.npy": canonical_array(t), "json": meta}}
    yield ShardStats({"samples": len(keys), "views": len(tokens), "code_usage": {str(c): int(n) for c, n in enumerate(usage) if n}})


def encode(ckpt: str | Path, images: str | Path, out: str | Path, cfg: EncodeConfig, runner) -> dict[str, dict]:
    """Image-token sets aligned with each split of ``images``, under ``out``
    (``t2i_data.derived.build_derived_sets``: {split: manifest}, with ``_images`` / ``_out``
    folders). Raises ``T2IError`` when a split's views are not the autoencoder's input size, or
    ``--views`` asks for several views of a set without an augmentation regime."""
    model, ck = load_autoencoder(ckpt)
    levels = model_levels(model)
    vocab = max(v for _, v in levels.values()) if levels else model.cfg.vocab_size
    dtype = "uint16" if vocab <= 65536 else "int32"
    finest = list(levels.values())[-1] if levels else (model.cfg.grid, model.cfg.vocab_size)

    def derive(mpath: Path, base: dict) -> tuple[dict, partial]:
        regime = regime_of(base, allow_none=True)
        if regime is None and cfg.views != 1:
            raise T2IError(f"{mpath}: {base['dataset']} images have no augmentation regime, so there is one view; drop --views")
        size = regime.size if regime else base["size"]
        if size != model.cfg.image_size:
            raise T2IError(f"{mpath}: views are {size}x{size} ({base['regime']}-{size}) but the "
                           f"autoencoder takes {model.cfg.image_size}x{model.cfg.image_size}; preprocess with --size {model.cfg.image_size}")
        own = {
            "config": asdict(cfg) | {"batch_size": None}, "seed": cfg.seed,
            "autoencoder": {"kind": ck["kind"], "fingerprint": ck["fingerprint"], "vocab_size": finest[1], "grid": finest[0],
                            "config": ck["config"], "dtype": dtype, "precision": "fp32"}
                           | ({"format": ck["format"], "source": ck["source"]} if "source" in ck else {})
                           | ({"levels": {k: {"grid": g, "vocab_size": v} for k, (g, v) in levels.items()}} if levels else {}),
            "encoder": {"npy": f"numpy-format {dtype}", "tar": WRITER_ID, "torch": torch.__version__},
        }
        return own, partial(produce_shard, str(Path(ckpt).resolve()), cfg, regime.name if regime else None, size, dtype,
                            schema_for("image_tokens", base["dataset"], dtype, list(levels or ()))["json"])

    return build_derived_sets(images, out, runner, "image_tokens", "encode", "an image shard set", derive)


def check_reencode(ckpt: str | Path, images: str | Path, tokens: str | Path, n: int = 32, seed: int = 0) -> int:
    """Re-encode up to ``n`` samples chosen by ``seed`` (spread over the shards), in another order
    and batch size, and compare
    with the stored tokens; returns the number checked, raises on any difference."""
    model, _ = load_autoencoder(ckpt)
    images, tokens = Path(images), Path(tokens)
    tm = load_manifest(tokens / "manifest.json")
    base = load_manifest(images / "manifest.json")
    check_aligned(base, tm, str(tokens))
    regime = regime_of(base, allow_none=True)
    k = tm["config"]["views"]
    rng = np.random.default_rng(seed)
    chosen = []
    for shard in base["shards"]:
        pairs = list(zip(iter_samples(images / shard["name"]), iter_samples(tokens / shard["name"])))
        chosen += [pairs[i] for i in rng.permutation(len(pairs))[: -(-n // len(base["shards"]))]]  # spread over shards
    chosen = chosen[:n][::-1]  # reversed: another batch composition than the build's
    arrays = [a for img, _ in chosen for _, a in sample_views(img, regime, tm["seed"], k)]
    again = encode_arrays(model, arrays, batch_size=7)
    again = again if isinstance(again, dict) else {None: again}  # {level: (N, g, g)}; None: the one grid
    for i, (img, tok) in enumerate(chosen):
        for level, redone in again.items():
            member = level_member(level)
            stored = load_npy(tok[member], f"{tokens}: {tok['__key__']}.{member}")
            if not np.array_equal(stored, redone[i * k : (i + 1) * k]):
                diff = int((stored != redone[i * k : (i + 1) * k]).sum())
                raise T2IError(f"{img['__key__']}: {diff} of {stored.size} {member} tokens differ when re-encoded in another batch order")
    return len(chosen)


@torch.no_grad()
def reconstruct(autoencoder, tokens: torch.Tensor) -> torch.Tensor:
    """Image tokens (B, h·w) or (B, h, w) → the autoencoder's images (B, 3, S, S) in [0, 1], on the
    device of the tokens, rounded to the 8-bit levels a PNG of them holds (what CLIP and the
    evaluation score, in training and in evaluation alike)."""
    g = autoencoder.cfg.grid
    x = autoencoder.decode(tokens.reshape(-1, g, g).long())
    return (x.float().clamp(0, 1) * 255 + 0.5).floor() / 255


def decode_tokens(model, tokens) -> np.ndarray:
    """(B, h, w) tokens (an array or a tensor) → (B, S, S, 3) uint8 images. For a multi-level
    autoencoder (VQ-VAE-2) ``tokens`` is ``{level: (B, g, g)}``, decoded with ``decode_levels``."""
    if isinstance(tokens, dict):
        if not hasattr(model, "decode_levels"):
            raise T2IError(f"token levels {', '.join(tokens)} need a multi-level autoencoder (vqvae2); this one decodes one grid")
        t = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v, dtype=np.int64))).long() for k, v in tokens.items()}
        with torch.no_grad():
            x = (model.decode_levels(t).float().clamp(0, 1) * 255 + 0.5).floor() / 255  # as ``reconstruct`` rounds
        return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    t = tokens if isinstance(tokens, torch.Tensor) else torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    return (reconstruct(model, t) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
