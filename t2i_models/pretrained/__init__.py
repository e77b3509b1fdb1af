"""Published image tokenizers read from local files, as autoencoders of this project.

A family is one module of this package exposing

- ``KIND`` (str): the autoencoder kind recorded in token manifests (e.g. ``"openai_dvae"``);
- ``claims(path: Path) -> bool``: whether ``path`` is one of its published files (by name,
  suffix, the files beside it, or a state dict's key names), cheap and without unpickling code;
- ``load(path: Path, map_location: str) -> (model, record)``: the model in eval mode and its
  record ``{"format", "kind", "config", "fingerprint", "source"}``, shaped like this project's
  autoencoder checkpoint dicts (``checkpoint.load_autoencoder``), so ``t2i encode``,
  ``preview --autoencoder``, ``sample`` and the evaluation take it unchanged.

The model gives the autoencoder interface every caller here uses: ``kind``; ``cfg`` with
``vocab_size``, ``grid`` and ``image_size``; ``encode(x)`` (B, 3, S, S) float in [0, 1] →
(B, h, w) int64 codes; ``decode(tokens)`` (B, h, w) → (B, 3, S, S) float in [0, 1];
``config_dict()``. Pickled files go through ``safe_load.restricted_load`` only (torch's
``weights_only`` unpickler with the family's class names mapped onto inert records), never a
plain unpickler. One more family (a diffusers ``VQModel`` folder, say) is one more module
listed in ``FAMILIES``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

FAMILIES = ("openai_dvae", "taming_vqgan")  # modules of this package, asked in this order


def families():
    return [importlib.import_module(f"{__name__}.{name}") for name in FAMILIES]


def claiming_family(path: str | Path):
    """The family module that claims ``path``, or None (a file of this project, or not one of a
    published tokenizer)."""
    path = Path(path)
    for family in families():
        if family.claims(path):
            return family
    return None


def load_pretrained(path: str | Path, map_location: str = "cpu"):
    """(model in eval mode, record) for a published tokenizer file, or None when no family claims
    ``path``. Raises ``T2IError`` (from the family) for a claimed file that cannot be read."""
    family = claiming_family(path)
    if family is None:
        return None
    return family.load(Path(path), map_location)


def known_layouts() -> str:
    """One line per family: what ``--autoencoder`` takes for it (for the error on an unknown file)."""
    return "; ".join(f"{f.KIND}: {f.LAYOUT}" for f in families())
