"""Text-embedding rows for training: one caption's embedding per sample, chosen as the token streams
choose a caption.

A text-embedding set (``t2i embed``, ``t2i_models/embed.py``) stores ``<key>.text_emb.npy``: float16,
(captions, D), row r the embedding of the sample's caption r in source order. A trainer that
conditions on text takes one row per sample and epoch: row ``keyed_u64(seed, stream_id("caption"),
key_ids([key]), epoch) mod C``, the same draw ``TokenStream`` makes for its caption row
(``token_stream.py``), so for the same (seed, key, epoch) a model reading text tokens and one reading
text embeddings see the same caption.

``text_emb_decode`` is the ``decode(sample, epoch)`` a ``ShardStream`` over [images, text_emb] or
[image_tokens, text_emb] takes (``stream.ShardStream`` accepts derived sets of one image set
without the images themselves).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import T2IError
from .npyio import load_npy
from .rng import key_ids, keyed_u64, stream_id

MEMBER = "text_emb.npy"
CAPTION_STREAM = stream_id("caption")  # TokenStream's caption draws use stream_id("caption") too


def caption_index(key: str, seed: int, epoch: int, captions: int) -> int:
    """The caption row (0..captions-1) a sample uses in ``epoch``: (seed, key, epoch) hashed
    (``rng.keyed_u64``) mod ``captions``, as ``TokenStream`` picks its caption row."""
    draw = keyed_u64(seed, CAPTION_STREAM, key_ids([key]), epoch)[0]
    return int(draw % np.uint64(captions))


def text_emb_row(sample: dict, seed: int, epoch: int, dim: int | None = None) -> tuple[np.ndarray, int]:
    """(one caption's embedding, float32 (D,); its caption index) of a sample holding
    ``text_emb.npy``, the row chosen by ``caption_index``. ``dim``: the D the set's manifest records
    (``text_encoder.dim``), checked when given. ``T2IError`` naming the key for a sample without
    the member, without captions ((0, D): there is no caption to condition on), or whose array is
    not float16 of 2 dimensions (of width ``dim``)."""
    key = sample.get("__key__")
    where = f"{sample.get('__url__', 'text-embedding set')}: {key}.{MEMBER}"
    if MEMBER not in sample:
        raise T2IError(f"{where} is missing; zip a text-embedding set (t2i embed) with the others")
    arr = load_npy(sample[MEMBER], where)
    if arr.dtype != np.float16 or arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        want = f"float16 (captions, {dim if dim is not None else 'D'})"
        raise T2IError(f"{where}: {arr.dtype} array of shape {arr.shape}, the set's manifest says {want}; rebuild it with t2i embed")
    if arr.shape[0] == 0:
        raise T2IError(f"{where}: the sample has no captions, so there is no text to condition on; "
                       f"drop it from the image set (t2i preprocess) or train without text")
    i = caption_index(key, seed, epoch, arr.shape[0])
    return arr[i].astype(np.float32), i


def text_emb_decode(seed: int, image_decode: Callable[[dict, int], dict] | None = None, dim: int | None = None):
    """decode(sample, epoch) for a ``ShardStream`` whose sets include a text-embedding set:
    ``{"text_emb": float32 tensor (D,), "caption_index": int64 tensor (), "key": str}`` (the row of
    ``text_emb_row``), merged over ``image_decode(sample, epoch)``'s dict when given (e.g.
    ``stream.decode_and_augment(regime, seed)`` for pixels). ``dim`` as in ``text_emb_row``."""
    import torch

    def decode(sample: dict, epoch: int) -> dict:
        out = dict(image_decode(sample, epoch)) if image_decode is not None else {}
        row, i = text_emb_row(sample, seed, epoch, dim)
        out.update(text_emb=torch.from_numpy(row), caption_index=torch.tensor(i, dtype=torch.int64), key=sample["__key__"])
        return out

    return decode
