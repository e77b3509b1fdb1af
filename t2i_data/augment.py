"""The random part of a regime, as a streaming stage and as K materialised views.

``augment(samples, regime, seed, epoch)`` is a webdataset-style generator stage: it takes sample
dicts from image shards and adds ``image`` (an N×N×3 uint8 array) and ``view`` (its
parameters), drawn from (seed, key, epoch). ``views(...)`` gives K views drawn from
(seed, key, view), view 0 being the identity, for pre-encoding into image-token shards. Every
regime (``regimes.REGIMES``: ae, prior, center) goes through the same two functions; center's
view 0 is its stored N×N image itself.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from .digest import IMAGE_EXTS
from .errors import T2IError
from .pngio import load_image
from .regimes import REGIMES, Regime, ViewParams


def regime_of(manifest: dict, allow_none: bool = False) -> Regime | None:
    """The regime an image shard set was prepared for, from its manifest. Sets built without one
    (MD-MNIST: final-size images, no augmentation) give None when ``allow_none``."""
    if manifest.get("regime") is None and allow_none:
        return None
    if manifest.get("regime") not in REGIMES:
        raise T2IError(f"shard set {manifest.get('dataset')}/{manifest.get('split')} has regime "
                       f"{manifest.get('regime')!r}; the random part needs one prepared with --regime {', '.join(REGIMES)}")
    return Regime(manifest["regime"], manifest["size"])


def stored_image(sample: dict, where: str | None = None) -> Image.Image:
    """The sample's stored image as RGB, decoded through ``pngio.load_image`` (its size checked
    from the header first; ``T2IError`` naming ``where`` (the shard, else ``__url__``) and the key)."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise T2IError(f"sample {sample.get('__key__')} has no image field ({', '.join(IMAGE_EXTS)})")
    im = load_image(sample[ext], f"{where or sample.get('__url__', 'sample')}: {sample['__key__']}.{ext}")
    return im.convert("RGB") if im.mode != "RGB" else im


def augment(samples: Iterable[dict], regime: Regime, seed: int, epoch: int) -> Iterator[dict]:
    for sample in samples:
        im = stored_image(sample)
        p = regime.draw(seed, sample["__key__"], epoch, im.size, online=True)
        yield dict(sample, image=np.asarray(regime.apply_view(im, p)), view=p.to_json())


def views(sample: dict, regime: Regime, seed: int, k: int, where: str | None = None) -> list[tuple[ViewParams, np.ndarray]]:
    if k < 1:
        raise T2IError(f"--views must be >= 1, got {k}")
    im = stored_image(sample, where)
    out = []
    for v in range(k):
        p = regime.draw(seed, sample["__key__"], v, im.size, online=False)
        out.append((p, np.asarray(regime.apply_view(im, p))))
    return out
