"""Reading published weight files without executing them.

Published image tokenizers ship as whole pickled modules (OpenAI's ``encoder.pkl`` /
``decoder.pkl``: ``torch.save(model)`` of ``dall_e.*`` classes) or as PyTorch Lightning
checkpoints (taming-transformers' ``last.ckpt``) whose pickles name classes of packages that are
not installed here and must never be imported. ``restricted_load`` reads them with torch's own
``weights_only`` unpickler (``torch.load(weights_only=True)``, the maintained restricted
unpickler: tensors, storages, plain containers) and allows, through
``torch.serialization.safe_globals``, exactly the class names a family lists, each mapped onto
``Pickled``: an inert record of the pickled object's state. No class of the file's is imported and
no code of its is run; any other global stops the load with one ``T2IError`` naming it.

``state_dict_of`` walks the records' ``_modules`` / ``_parameters`` / ``_buffers`` into the flat
state dict a ``torch.nn.Module`` would give; a family then builds its own module and loads that
state dict strictly. ``read_state_dict`` reads a plain state dict (``.pt`` / ``.pth`` / ``.bin``
through ``weights_only``, ``.safetensors`` through safetensors); ``file_sha256`` names the source
files in a loaded tokenizer's record.
"""
from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path

import torch

from t2i_data.errors import T2IError

# torch classes a pickled module tree holds; each family adds its own package's class names.
TORCH_MODULES = (
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.conv.Conv2d",
)
# globals a pickled nn.Module's own state holds besides tensors (its hook and buffer-name sets,
# its device attributes); torch's weights_only unpickler already allows OrderedDict and tensors.
_PLAIN = {"builtins.set": set, "torch.device": torch.device}


class Pickled:
    """The state of one pickled object whose class is ``cls`` (its module path and name), kept
    as data: ``state`` is the dict the pickle's BUILD gave (an ``nn.Module``'s ``__dict__``:
    ``_modules``, ``_parameters``, ``_buffers`` and its own attributes)."""

    cls = "?"

    def __init__(self, *args) -> None:  # a class called with arguments by the pickle (REDUCE)
        self.state: dict = {}
        self.args = args

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) of a class with __slots__
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise T2IError(f"a pickled {self.cls} holds state of type {type(state).__name__}, not an object's attributes")
        self.state = dict(state)

    def __getattr__(self, name: str):
        state = self.__dict__.get("state", {})
        if name in state:
            return state[name]
        for group in ("_modules", "_parameters", "_buffers"):  # as nn.Module.__getattr__ finds them
            if name in (state.get(group) or {}):
                return state[group][name]
        raise AttributeError(f"the pickled {self.cls} has no attribute {name!r}")

    def children(self) -> dict:
        return dict(self.state.get("_modules") or {})


def _stand_in(path: str) -> type:
    """A subclass of ``Pickled`` for one class path (NEWOBJ creates instances of it)."""
    return type(path.rsplit(".", 1)[-1], (Pickled,), {"cls": path, "__module__": __name__})


_UNSUPPORTED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def restricted_load(path: str | Path, classes: tuple[str, ...], what: str, map_location: str = "cpu"):
    """``torch.load(path, weights_only=True)`` with each class path in ``classes`` (plus
    ``TORCH_MODULES``) mapped onto a ``Pickled`` record; returns the unpickled object.

    Raises ``T2IError`` for a missing file, a global outside that list (naming it: "the pickle
    names the global os.system, which {what} files do not hold; refusing to load it"), or a file
    that is not a torch pickle."""
    path = Path(path)
    if not path.is_file():
        raise T2IError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'} ({what})")
    allowed = [(_stand_in(c), c) for c in (*classes, *TORCH_MODULES)] + [(v, k) for k, v in _PLAIN.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        m = _UNSUPPORTED.search(text)
        if m:
            raise T2IError(f"{path}: the pickle names the global {m.group(1)}, which {what} files do not hold; "
                           f"refusing to load it (nothing of it was run)") from None
        if "WeightsUnpickler error:" in text:  # torch's refusal: keep its reason, not its advice to unpickle without it
            reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
            raise T2IError(f"{path}: torch's weights_only unpickler refused it ({reason[:200]}); this loader reads {what} "
                           f"files only through it (a file saved by torch.save in its legacy format stores module source "
                           f"code that it does not read: save the module again with a current torch)") from None
        first = (text.strip().splitlines() or [""])[0]
        raise T2IError(f"{path}: not a readable {what} file ({type(e).__name__}: {first[:300]})") from None


def state_dict_of(root, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """The flat state dict (``name.sub.param`` → tensor) of a tree of ``Pickled`` modules, in
    module order, as ``nn.Module.state_dict`` would give it (non-persistent buffers left out)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    if not isinstance(root, Pickled):
        raise T2IError(f"{prefix or 'the file'}: holds a {type(root).__name__}, not a pickled module")
    skip = set(root.state.get("_non_persistent_buffers_set") or ())
    for name, t in (root.state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else t
    for name, t in (root.state.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in root.children().items():
        if child is not None:
            out.update(state_dict_of(child, f"{prefix}{name}."))
    return out


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``.safetensors`` (safetensors) or a torch file read with
    ``weights_only=True``; a dict with a ``state_dict`` entry (a Lightning or training checkpoint)
    gives that entry. Raises ``T2IError`` for a missing or unreadable file, or one that holds no
    tensors by name."""
    path = Path(path)
    if not path.is_file():
        raise T2IError(f"{path}: no such file ({what})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise T2IError(f"{path}: not a readable {what} state dict ({type(e).__name__}: {first[:300]})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise T2IError(f"{path}: holds no state dict (names → tensors) of a {what}")
    return dict(sd)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_keys(path: str | Path) -> set[str]:
    """The tensor names of a state-dict file, cheaply (safetensors' header; a torch file mapped
    with ``mmap``), or an empty set when it is not one: what a family's ``claims`` looks at."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return set(f.keys())
        if path.suffix in (".pt", ".pth", ".bin"):
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
            return {k for k in sd if isinstance(k, str)} if isinstance(sd, dict) else set()
    except Exception:  # not a state dict: the family does not claim it, and the caller's own error names the file
        return set()
    return set()
