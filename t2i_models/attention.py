"""Transformer pieces shared by the priors: pre-LN blocks on torch's scaled_dot_product_attention
(fused kernels on GPU), with an optional key/value cache for autoregressive sampling, and the
token-id check every prior runs on its inputs.

Masks. ``scaled_dot_product_attention`` reaches the FlashAttention kernel only without an
explicit ``attn_mask``; a purely causal attention therefore goes as ``causal=True`` (SDPA's
``is_causal``) with no mask, and a mask is built only where something must be hidden beyond
causality (text padding, a bidirectional text prefix). With a KV cache, a single new query sees
every cached key, so it needs neither; a causal block of several new queries after cached keys
gets an explicit bottom-right-aligned mask (SDPA's ``is_causal`` aligns top-left)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_ids(pad: tuple[torch.Tensor, int] | None = None, **inputs: tuple[torch.Tensor, int]) -> bool:
    """Refuse token ids outside their vocabulary: ``name=(ids, vocab size)``. With
    ``pad=(text, pad_id)``, also return whether any entry of ``text`` is ``pad_id`` (False without
    ``pad``), which tells a prior whether it needs a padding mask at all.

    No prior clamps ids (a clamp trained a model on a corrupted shard without a word): an id past
    the embedding table would be an IndexError on CPU and a device-side assert that poisons the
    CUDA context on GPU, so it is refused here with the input's name, the id and the vocabulary.
    All mins and maxes, and the padding flag, are read back in one transfer: the one host sync of
    a prior's forward, which the padding check rides on for free."""
    named = [(k.replace("_", " "), t, v) for k, (t, v) in inputs.items() if t.numel()]
    extra = [(pad[0] == pad[1]).any().to(pad[0].dtype)] if pad is not None and pad[0].numel() else []
    if not named and not extra:
        return False
    values = torch.stack([x for _, t, _ in named for x in torch.aminmax(t)] + extra).tolist()
    bounds = values[: 2 * len(named)]
    for i, (name, t, vocab) in enumerate(named):
        lo, hi = bounds[2 * i], bounds[2 * i + 1]
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name}: id {int(bad)} is outside the vocabulary of {vocab} ids (0..{vocab - 1}); ids are never "
                             f"clamped: check the tokenizer / autoencoder that made them against the model's config")
    return bool(values[-1]) if extra else False


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
                cache: dict | None = None, causal: bool = False) -> torch.Tensor:
        """``mask``: boolean (B or 1, 1 or nh, Tq, Tk), True = may attend. ``causal`` (with no
        mask): query i sees keys up to its own position, the last Tq of the Tk keys being the
        queries' own (SDPA's ``is_causal`` when Tq = Tk, nothing for one query after a cache, an
        explicit tril otherwise). ``cache``: a dict that keeps this layer's keys and values; new
        ones are appended (self-attention) or computed once (cross-attention)."""
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
        is_causal = False
        if causal and mask is None:
            tq, tk = q.shape[2], k.shape[2]
            if tq == tk:
                is_causal = True
            elif tq > 1:  # several new queries after cached keys: bottom-right aligned
                mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal)
        b, _, t, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, self.heads * hs))


ACTIVATIONS = ("gelu", "relu")


def mlp(width: int, hidden: int, activation: str, dropout: float) -> nn.Sequential:
    """The block's MLP, (B, T, width) → (B, T, width), ``hidden`` units (0: 4 · width).

    "gelu" (default, ViT / GPT): Linear, GELU, Linear, Dropout — state-dict names ``mlp.0``,
    ``mlp.2`` as every checkpoint so far. "relu": the thesis' Table 4 exactly, Linear(H_in,
    H_hidden), Dropout(P), ReLU, Linear(H_hidden, H_out) — names ``mlp.0``, ``mlp.3``; the dropout
    acts on the hidden units (it commutes with ReLU) and there is none on the output."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if hidden < 0:
        raise ValueError(f"mlp must be >= 0 (0: 4 x width), got {hidden}")
    h = hidden or 4 * width
    if activation == "gelu":
        return nn.Sequential(nn.Linear(width, h), nn.GELU(), nn.Linear(h, width), nn.Dropout(dropout))
    return nn.Sequential(nn.Linear(width, h), nn.Dropout(dropout), nn.ReLU(), nn.Linear(h, width))


class Block(nn.Module):
    """Pre-LN transformer block (thesis Eqs. 19–20); with ``cross``, a cross-attention sublayer
    between the two. ``mlp``/``activation``: see ``mlp``."""

    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False, mlp_hidden: int = 0,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads, dropout)
        self.cross = cross
        if cross:
            self.ln_x, self.xattn = nn.LayerNorm(width), Attention(width, heads, dropout, cross=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = mlp(width, mlp_hidden, activation, dropout)

    def forward(self, x, mask=None, context=None, context_mask=None, cache: dict | None = None, causal: bool = False):
        """``mask`` / ``causal`` for the self-attention, ``context_mask`` (None: every context
        position visible) for the cross-attention; see ``Attention.forward``."""
        x = x + self.attn(self.ln1(x), mask, cache=None if cache is None else cache.setdefault("self", {}), causal=causal)
        if self.cross:
            x = x + self.xattn(self.ln_x(x), context_mask, context=context, cache=None if cache is None else cache.setdefault("cross", {}))
        return x + self.mlp(self.ln2(x))


def image_token_loss(logits: torch.Tensor, image: torch.Tensor) -> dict:
    """The priors' image loss: cross-entropy (nats per token, computed once, in fp32) of
    ``logits`` (B, h·w, V) against the image tokens ``image`` (B, h·w) int64. Returns
    ``{"image_logits", "loss_per_sample", "loss_image", "loss"}``: ``loss_per_sample`` (B,) fp32
    is each sample's mean over its tokens (what a trainer weights or masks per sample),
    ``loss_image`` = ``loss`` = its mean (every sample has h·w tokens: the mean over all tokens).
    G1 adds its text term to ``loss_per_sample`` and ``loss``."""
    b, t, v = logits.shape
    per_token = F.cross_entropy(logits.float().reshape(b * t, v), image.reshape(b * t), reduction="none").view(b, t)  # (B, h·w)
    per_sample = per_token.mean(dim=1)  # (B,)
    loss = per_sample.mean()
    return {"image_logits": logits, "loss_per_sample": per_sample, "loss_image": loss, "loss": loss}


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
