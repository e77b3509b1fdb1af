"""Transformer pieces shared by the priors: pre-LN blocks on torch's scaled_dot_product_attention
(fused kernels on GPU), with an optional key/value cache for autoregressive sampling, and the
token-id check every prior runs on its inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_ids(**inputs: tuple[torch.Tensor, int]) -> None:
    """Refuse token ids outside their vocabulary: ``name=(ids, vocab size)``.

    No prior clamps ids (a clamp trained a model on a corrupted shard without a word): an id past
    the embedding table would be an IndexError on CPU and a device-side assert that poisons the
    CUDA context on GPU, so it is refused here with the input's name, the id and the vocabulary.
    All mins and maxes are read back in one transfer (one host sync per forward; training loops
    already sync per step to log, and the stream has checked every batch before)."""
    named = [(k.replace("_", " "), t, v) for k, (t, v) in inputs.items() if t.numel()]
    if not named:
        return
    bounds = torch.stack([x for _, t, _ in named for x in torch.aminmax(t)]).tolist()
    for i, (name, t, vocab) in enumerate(named):
        lo, hi = bounds[2 * i], bounds[2 * i + 1]
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name}: id {int(bad)} is outside the vocabulary of {vocab} ids (0..{vocab - 1}); ids are never "
                             f"clamped: check the tokenizer / autoencoder that made them against the model's config")


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.dropout, self.cross = heads, dropout, cross
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """``mask``: boolean (B or 1, 1 or nh, Tq, Tk), True = may attend. ``cache``: a dict that
        keeps this layer's keys and values; new ones are appended (self-attention) or computed
        once (cross-attention)."""
        q = self._split(self.q(x))
        if self.cross and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = self.kv(context if self.cross else x).chunk(2, dim=-1)
            k, v = self._split(k), self._split(v)
            if cache is not None:
                if not self.cross and "k" in cache:
                    k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        b, _, t, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, self.heads * hs))


class Block(nn.Module):
    """Pre-LN transformer block; with ``cross``, a cross-attention sublayer between the two."""

    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads, dropout)
        self.cross = cross
        if cross:
            self.ln_x, self.xattn = nn.LayerNorm(width), Attention(width, heads, dropout, cross=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x, mask=None, context=None, context_mask=None, cache: dict | None = None):
        x = x + self.attn(self.ln1(x), mask, cache=None if cache is None else cache.setdefault("self", {}))
        if self.cross:
            x = x + self.xattn(self.ln_x(x), context_mask, context=context, cache=None if cache is None else cache.setdefault("cross", {}))
        return x + self.mlp(self.ln2(x))


def image_token_loss(logits: torch.Tensor, image: torch.Tensor) -> dict:
    """The priors' image loss: cross-entropy (nats per token, computed in fp32) of ``logits``
    (B, h·w, V) against the image tokens ``image`` (B, h·w) int64. Returns ``{"image_logits",
    "loss_image", "loss"}`` with ``loss`` = ``loss_image`` (G1 adds its text term to it)."""
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), image.reshape(-1))
    return {"image_logits": logits, "loss_image": loss, "loss": loss}


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits → (B,) ids. temperature 0: argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
