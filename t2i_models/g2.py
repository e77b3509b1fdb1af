"""G2: a separate text encoder (bidirectional, padding masked) and a causal image decoder that
cross-attends to it. The decoder's input is a learned BOS (the thesis used a zero vector) then
the first h·w − 1 image tokens, at learned row + column positions.

Attention masks: the decoder's self-attention is always plain causal (``is_causal``, no mask:
the FlashAttention kernel on GPU). The encoder's self-attention and the cross-attention get a
key mask only when the batch's text holds a pad id; whether it does is read back in the same
transfer as the id-range check (``check_ids``), no extra host sync. ``fast_attention = False``
on a model forces explicit masks everywhere (the reference the tests compare with).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attention import ACTIVATIONS, Block, check_ids, image_token_loss, sample_next
from .blocks import check_shape


@dataclass(frozen=True)
class G2Config:
    text_vocab: int
    text_len: int
    pad_id: int
    image_vocab: int
    grid: int
    encoder_layers: int = 6
    decoder_layers: int = 12
    heads: int = 8
    width: int = 256
    dropout: float = 0.1
    mlp: int = 0  # MLP hidden width; 0: 4 · width
    activation: str = "gelu"  # or "relu" (thesis Table 4)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.mlp < 0:
            raise ValueError(f"mlp must be >= 0 (0: 4 x width), got {self.mlp}")
        if not 0 <= self.pad_id < self.text_vocab:
            raise ValueError(f"pad_id {self.pad_id} must be a text id, 0..{self.text_vocab - 1} (text_vocab counts the pad id)")


class G2(nn.Module):
    kind = "g2"
    fast_attention = True  # False: explicit masks everywhere (the reference path)

    def __init__(self, cfg: G2Config) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.text_emb = nn.Embedding(cfg.text_vocab, w)
        self.text_pos = nn.Parameter(torch.zeros(cfg.text_len, w))
        blk = dict(mlp_hidden=cfg.mlp, activation=cfg.activation)
        self.encoder = nn.ModuleList(Block(w, cfg.heads, cfg.dropout, **blk) for _ in range(cfg.encoder_layers))
        self.ln_enc = nn.LayerNorm(w)
        self.image_emb = nn.Embedding(cfg.image_vocab, w)
        self.bos = nn.Parameter(torch.zeros(w))
        self.row = nn.Parameter(torch.zeros(cfg.grid, w))
        self.col = nn.Parameter(torch.zeros(cfg.grid, w))
        self.decoder = nn.ModuleList(Block(w, cfg.heads, cfg.dropout, cross=True, **blk) for _ in range(cfg.decoder_layers))
        self.ln = nn.LayerNorm(w)
        self.head = nn.Linear(w, cfg.image_vocab, bias=False)
        for p in (self.text_pos, self.row, self.col, self.bos):
            nn.init.normal_(p, std=0.02)

    def encode_text(self, text: torch.Tensor, image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L) → encoder states (B, L, w) and the key mask (B, 1, 1, L) of real tokens, None
        when no caption of the batch has padding (every key visible). ``image`` (B, h·w), if
        given, has its ids checked in the same host transfer as the text's."""
        c = self.cfg
        check_shape(text, (None, c.text_len), "G2 text tokens")
        more = {} if image is None else {"G2_image_tokens": (image, c.image_vocab)}
        padded = check_ids(pad=(text, c.pad_id), G2_text_tokens=(text, c.text_vocab), **more)
        key_mask = None
        if padded or not self.fast_attention:
            real = text != c.pad_id
            real = real | ~real.any(dim=1, keepdim=True)  # an all-padding caption attends to its padding, not to nothing
            key_mask = real[:, None, None, :]
        x = self.text_emb(text) + self.text_pos  # ids checked above, never clamped
        for blk in self.encoder:
            x = blk(x, key_mask)
        return self.ln_enc(x), key_mask

    def _positions(self) -> torch.Tensor:
        g = self.cfg.grid
        return (self.row[:, None, :] + self.col[None, :, :]).reshape(g * g, -1)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict:
        c = self.cfg
        n = c.grid * c.grid
        check_shape(image, (None, n), "G2 image tokens (flattened grid)")
        ctx, key_mask = self.encode_text(text, image)
        b = image.shape[0]
        x = torch.cat([self.bos.expand(b, 1, -1), self.image_emb(image[:, :-1])], dim=1) + self._positions()
        tril = None if self.fast_attention else torch.ones(n, n, dtype=torch.bool, device=image.device).tril()
        for blk in self.decoder:
            x = blk(x, tril, context=ctx, context_mask=key_mask, causal=tril is None)
        logits = self.head(self.ln(x))  # (B, h·w, V)
        return image_token_loss(logits, image)

    @torch.no_grad()
    def generate(self, text: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        c = self.cfg
        n = c.grid * c.grid
        b = text.shape[0]
        ctx, key_mask = self.encode_text(text)
        pos = self._positions()
        out = torch.zeros(b, n, dtype=torch.long, device=text.device)
        tril = None if self.fast_attention else torch.ones(n, n, dtype=torch.bool, device=text.device).tril()
        caches = [dict() for _ in self.decoder] if use_cache else None
        for i in range(n):
            if use_cache:
                h = (self.bos if i == 0 else self.image_emb(out[:, i - 1])) + pos[i]
                h = h.expand(b, -1)[:, None] if h.dim() == 1 else h[:, None]
                for blk, cache in zip(self.decoder, caches):
                    h = blk(h, None, context=ctx, context_mask=key_mask, cache=cache)  # one query sees all cached keys: no mask
            else:  # the whole sequence again; tokens after i are still 0, which the causal mask hides
                h = torch.cat([self.bos.expand(b, 1, -1), self.image_emb(out[:, :-1])], dim=1) + pos
                for blk in self.decoder:
                    h = blk(h, tril, context=ctx, context_mask=key_mask, causal=tril is None)
                h = h[:, : i + 1]
            out[:, i] = sample_next(self.head(self.ln(h[:, -1])), temperature, top_k, top_p, generator)
        return out

    def config_dict(self) -> dict:
        return asdict(self.cfg)
