"""The weights fingerprint: sha256 over a model's state dict (names, dtypes, shapes and bytes, in
name order), so the same weights give the same fingerprint on any machine. A leaf module: the
checkpoint formats (``checkpoint``) and the published tokenizers (``pretrained``) both name
weights by it."""
from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(model: torch.nn.Module) -> str:
    """64 hex digits naming ``model.state_dict()`` (every tensor moved to CPU, contiguous)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
