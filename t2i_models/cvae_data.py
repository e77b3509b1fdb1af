"""What the CVAE trainer and its figures read from shard sets: the stored image size a set must
have, the class names its manifest records, the decode functions of the MLP (class-conditioned)
and conv (caption-embedding-conditioned) CVAEs, and D of a text-embedding set. Its own module so
that ``train_cvae`` and ``cvae_figures`` both import it without importing each other."""
from __future__ import annotations

import json

import numpy as np
import torch

from t2i_data.augment import regime_of, stored_image
from t2i_data.errors import T2IError
from t2i_data.manifest import split_manifest


def stored_size(manifest: dict, where: str) -> int:
    """The side of the stored images of a set, when it is the side the model sees unchanged: a
    center-regime set (N×N) or a set without a regime (MD-MNIST). ``T2IError`` for ae / prior sets,
    whose stored image is larger than N (the random crop / resize is their online part)."""
    regime = regime_of(manifest, allow_none=True)
    if regime is not None and regime.name != "center":
        raise T2IError(f"{where} holds {regime.name}-{regime.size} images, stored larger than {regime.size}x{regime.size} for a random "
                       f"crop; the CVAE trains on the images as they are: preprocess with --regime center --size N")
    return regime.size if regime else manifest["size"]


def manifest_classes(manifest: dict, where: str) -> list[str]:
    """The class names a labelled set's manifest records (``sources.<dataset>.classes``, label
    order); ``T2IError`` when it names none (an unlabelled set: no ``class_id`` per sample)."""
    for src in (manifest.get("sources") or {}).values():
        if isinstance(src, dict) and isinstance(src.get("classes"), list):
            return [str(c) for c in src["classes"]]
    raise T2IError(f"{where}: its manifest names no classes (sources.<dataset>.classes), so its samples carry no class_id; the MLP "
                   f"CVAE needs a labelled set such as fashion_mnist (t2i preprocess fashion_mnist)")


def class_decode(size: int, channels: int, num_classes: int):
    """decode(sample, epoch) for the MLP CVAE: {"image": uint8 (C, S, S), the stored pixels (grayscale
    by PIL's ITU-R 601 luma when C = 1), "label": int64 class id, "key"}; ``T2IError`` naming the
    key for a stored image of another size or a ``class_id`` that is missing or outside 0..K−1."""

    def decode(sample: dict, epoch: int) -> dict:
        key = sample["__key__"]
        im = stored_image(sample)
        if im.size != (size, size):
            raise T2IError(f"{sample.get('__url__')}: {key} is stored {im.size[0]}x{im.size[1]}; the model takes {size}x{size}")
        arr = np.asarray(im.convert("L"))[None] if channels == 1 else np.asarray(im).transpose(2, 0, 1)
        cid = json.loads(sample["json"]).get("class_id") if "json" in sample else None
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < num_classes:
            raise T2IError(f"{sample.get('__url__')}: {key} has class_id {cid!r}; the MLP CVAE needs one in 0..{num_classes - 1} per sample")
        return {"image": torch.from_numpy(np.array(arr)), "label": torch.tensor(cid, dtype=torch.int64), "key": key}

    return decode


def image_decode(size: int):
    """decode(sample, epoch) for the conv CVAE's images: {"image": uint8 (3, S, S), "key"}."""

    def decode(sample: dict, epoch: int) -> dict:
        im = stored_image(sample)
        if im.size != (size, size):
            raise T2IError(f"{sample.get('__url__')}: {sample['__key__']} is stored {im.size[0]}x{im.size[1]}; the model takes {size}x{size}")
        return {"image": torch.from_numpy(np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))), "key": sample["__key__"]}

    return decode


def text_dim_of(path: str, what: str) -> int:
    """D of a text-embedding set (manifest ``text_encoder.dim``); ``T2IError`` for another kind of set."""
    m = split_manifest(path)
    if m.get("kind") != "text_emb":
        raise T2IError(f"{what}={path}: a {m.get('kind')} shard set, not a text-embedding set (t2i embed writes those)")
    dim = (m.get("text_encoder") or {}).get("dim")
    if not isinstance(dim, int) or dim < 1:
        raise T2IError(f"{what}={path}: its manifest records no text_encoder.dim; rebuild it with t2i embed")
    return dim
