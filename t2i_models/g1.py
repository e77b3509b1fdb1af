"""G1: one joint stream, as DALL·E — text tokens (L), a learned BOS, then the h·w image tokens.

Positions: learned 1D for text, learned row + column for the image grid. The text prefix is
fully visible to itself (``text_causal=False``) or causal as in the thesis code; image positions
see all real text and the earlier image tokens. Text padding is either masked out of attention
(``pad="mask"``) or replaced by a learned embedding per text position (``pad="learned"``, DALL·E).
Loss: cross-entropy on the image tokens, plus ``text_loss_weight`` × next-token cross-entropy on
the text (DALL·E: 1/8 text, 7/8 image), pad targets ignored.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Block, check_ids, image_token_loss, sample_next
from .blocks import check_shape


@dataclass(frozen=True)
class G1Config:
    text_vocab: int
    text_len: int  # L
    pad_id: int
    image_vocab: int  # V
    grid: int  # image tokens form grid × grid
    layers: int = 12
    heads: int = 8
    width: int = 256
    dropout: float = 0.1
    pad: str = "mask"  # or "learned"
    text_causal: bool = False
    text_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.pad not in ("mask", "learned"):
            raise ValueError(f"pad must be 'mask' or 'learned', got {self.pad!r}")
        if not 0 <= self.text_loss_weight < 1:
            raise ValueError(f"text_loss_weight must be in [0, 1), got {self.text_loss_weight}")
        if not 0 <= self.pad_id < self.text_vocab:
            raise ValueError(f"pad_id {self.pad_id} must be a text id, 0..{self.text_vocab - 1} (text_vocab counts the pad id)")


class G1(nn.Module):
    kind = "g1"

    def __init__(self, cfg: G1Config) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.text_emb = nn.Embedding(cfg.text_vocab, w)
        self.text_pos = nn.Parameter(torch.zeros(cfg.text_len, w))
        self.pad_emb = nn.Parameter(torch.zeros(cfg.text_len, w)) if cfg.pad == "learned" else None
        self.image_emb = nn.Embedding(cfg.image_vocab, w)
        self.bos = nn.Parameter(torch.zeros(w))
        self.row = nn.Parameter(torch.zeros(cfg.grid, w))
        self.col = nn.Parameter(torch.zeros(cfg.grid, w))
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(w)
        self.image_head = nn.Linear(w, cfg.image_vocab, bias=False)
        # only with a text loss: an unused parameter leaves DDP's gradient buckets unreduced
        self.text_head = nn.Linear(w, cfg.text_vocab, bias=False) if cfg.text_loss_weight > 0 else None
        for p in (self.text_pos, self.row, self.col, self.bos) + ((self.pad_emb,) if self.pad_emb is not None else ()):
            nn.init.normal_(p, std=0.02)

    # -- embeddings and mask ---------------------------------------------------------------
    def _text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.text_emb(text) + self.text_pos  # (B, L, w); ids checked by forward / generate, never clamped
        if self.pad_emb is not None:
            x = torch.where((text == self.cfg.pad_id)[..., None], self.pad_emb + self.text_pos, x)
        return x

    def _image_inputs(self, image: torch.Tensor) -> torch.Tensor:
        """BOS then the first h·w − 1 image tokens, each at its cell's row + column position."""
        b = image.shape[0]
        g = self.cfg.grid
        pos = (self.row[:, None, :] + self.col[None, :, :]).reshape(g * g, -1)  # (h·w, w)
        tok = torch.cat([self.bos.expand(b, 1, -1), self.image_emb(image[:, :-1])], dim=1)  # (B, h·w, w)
        return tok + pos

    def _mask(self, text: torch.Tensor, n_image: int) -> torch.Tensor:
        """(B, 1, T, T) boolean, True = may attend; T = L + n_image."""
        L = self.cfg.text_len
        t = L + n_image
        causal = torch.ones(t, t, dtype=torch.bool, device=text.device).tril()
        m = causal.clone()
        if not self.cfg.text_causal:
            m[:L, :L] = True  # the text prefix sees all of itself
        m = m[None].repeat(text.shape[0], 1, 1)
        if self.cfg.pad == "mask":
            real = text != self.cfg.pad_id  # (B, L)
            m[:, :, :L] &= real[:, None, :]
        m |= torch.eye(t, dtype=torch.bool, device=text.device)  # every position sees itself: no empty rows
        return m[:, None]

    # -- training ----------------------------------------------------------------------------
    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict:
        c = self.cfg
        check_shape(text, (None, c.text_len), "G1 text tokens")
        check_shape(image, (None, c.grid * c.grid), "G1 image tokens (flattened grid)")
        check_ids(G1_text_tokens=(text, c.text_vocab), G1_image_tokens=(image, c.image_vocab))
        x = torch.cat([self._text(text), self._image_inputs(image)], dim=1)  # (B, L + h·w, w)
        mask = self._mask(text, c.grid * c.grid)
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.ln(x)
        image_logits = self.image_head(x[:, c.text_len :])  # (B, h·w, V)
        out = image_token_loss(image_logits, image)
        loss_img = out["loss_image"]
        if c.text_loss_weight > 0:
            text_logits = self.text_head(x[:, : c.text_len - 1])
            target = text[:, 1:].masked_fill(text[:, 1:] == c.pad_id, -100)
            loss_txt = F.cross_entropy(text_logits.float().reshape(-1, c.text_vocab), target.reshape(-1), ignore_index=-100)
            out["loss_text"] = loss_txt
            out["loss"] = c.text_loss_weight * loss_txt + (1 - c.text_loss_weight) * loss_img
        return out

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, text: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Image tokens (B, h·w) for text (B, L), one token at a time (with a KV cache, or by
        recomputing the whole sequence each step, which the tests compare)."""
        c = self.cfg
        check_shape(text, (None, c.text_len), "G1 text tokens")
        check_ids(G1_text_tokens=(text, c.text_vocab))
        n = c.grid * c.grid
        b = text.shape[0]
        out = torch.zeros(b, n, dtype=torch.long, device=text.device)
        full_mask = self._mask(text, n)
        pos = (self.row[:, None, :] + self.col[None, :, :]).reshape(n, -1)
        caches = [dict() for _ in self.blocks] if use_cache else None
        x_prefix = torch.cat([self._text(text), (self.bos + pos[0]).expand(b, 1, -1)], dim=1)  # text + BOS
        for i in range(n):
            if use_cache:
                x = x_prefix if i == 0 else (self.image_emb(out[:, i - 1]) + pos[i])[:, None]
                t0, t1 = (0, c.text_len + 1) if i == 0 else (c.text_len + i, c.text_len + i + 1)
                h = x
                for blk, cache in zip(self.blocks, caches):
                    h = blk(h, full_mask[:, :, t0:t1, : t1], cache=cache)
            else:  # the whole sequence again; tokens after i are still 0, which the causal mask hides
                h = torch.cat([self._text(text), self._image_inputs(out)], dim=1)
                for blk in self.blocks:
                    h = blk(h, full_mask)
                h = h[:, : c.text_len + i + 1]
            logits = self.image_head(self.ln(h[:, -1]))
            out[:, i] = sample_next(logits, temperature, top_k, top_p, generator)
        return out

    def config_dict(self) -> dict:
        return asdict(self.cfg)
