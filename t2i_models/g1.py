"""G1: one joint stream, as DALL·E — text tokens (L), a learned BOS, then the h·w image tokens.

Positions: learned 1D for text, learned row + column for the image grid. The text prefix is
fully visible to itself (``text_causal=False``) or causal as in the thesis code; image positions
see all real text and the earlier image tokens. Text padding is either masked out of attention
(``pad="mask"``) or replaced by a learned embedding per text position (``pad="learned"``, DALL·E).
Loss: cross-entropy on the image tokens, plus ``text_loss_weight`` × next-token cross-entropy on
the text (DALL·E: 1/8 text, 7/8 image), pad targets ignored; both per sample (means over the
sample's tokens, ``loss_per_sample`` (B,)), then averaged over the batch.

Attention masks. With ``text_causal=True`` the whole sequence is causal, and unless padding must
be hidden the attention runs as ``is_causal`` with no mask (the FlashAttention kernel on GPU):
always for ``pad="learned"`` (padding is embedded, never masked: decided from the config) and for
``pad="mask"`` on batches without a pad id. Whether a batch holds one is read back in the same
transfer as the id-range check (``check_ids``), so it costs no extra host sync. Otherwise
(bidirectional text prefix, or padding to mask) an explicit (B or 1, 1, T, T) mask is built.
``fast_attention = False`` on a model forces the explicit mask everywhere (the reference the
tests compare the fast path with).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ACTIVATIONS, Block, check_ids, image_token_loss, sample_next
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
    mlp: int = 0  # MLP hidden width; 0: 4 · width
    activation: str = "gelu"  # or "relu" (thesis Table 4)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.mlp < 0:
            raise ValueError(f"mlp must be >= 0 (0: 4 x width), got {self.mlp}")
        if self.pad not in ("mask", "learned"):
            raise ValueError(f"pad must be 'mask' or 'learned', got {self.pad!r}")
        if not 0 <= self.text_loss_weight < 1:
            raise ValueError(f"text_loss_weight must be in [0, 1), got {self.text_loss_weight}")
        if not 0 <= self.pad_id < self.text_vocab:
            raise ValueError(f"pad_id {self.pad_id} must be a text id, 0..{self.text_vocab - 1} (text_vocab counts the pad id)")


class G1(nn.Module):
    kind = "g1"
    fast_attention = True  # False: explicit masks everywhere (the reference path)

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
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.dropout, mlp_hidden=cfg.mlp, activation=cfg.activation)
                                    for _ in range(cfg.layers))
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

    def _mask(self, text: torch.Tensor, n_image: int, padded: bool = True) -> torch.Tensor:
        """(B, 1, T, T) boolean, True = may attend; T = L + n_image. ``padded=False`` (no pad id
        in ``text``): one mask for the whole batch, expanded, not copied."""
        L = self.cfg.text_len
        t = L + n_image
        m = torch.ones(t, t, dtype=torch.bool, device=text.device).tril()
        if not self.cfg.text_causal:
            m[:L, :L] = True  # the text prefix sees all of itself
        if not (padded and self.cfg.pad == "mask"):
            return m[None, None].expand(text.shape[0], 1, t, t)
        m = m[None].repeat(text.shape[0], 1, 1)
        real = text != self.cfg.pad_id  # (B, L)
        m[:, :, :L] &= real[:, None, :]
        m |= torch.eye(t, dtype=torch.bool, device=text.device)  # every position sees itself: no empty rows
        return m[:, None]

    def _causal_only(self, padded: bool) -> bool:
        """Whether the attention is exactly causal (no mask needed, ``is_causal``)."""
        c = self.cfg
        return self.fast_attention and c.text_causal and (c.pad == "learned" or not padded)

    # -- training ----------------------------------------------------------------------------
    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict:
        c = self.cfg
        check_shape(text, (None, c.text_len), "G1 text tokens")
        check_shape(image, (None, c.grid * c.grid), "G1 image tokens (flattened grid)")
        padded = check_ids(pad=(text, c.pad_id), G1_text_tokens=(text, c.text_vocab), G1_image_tokens=(image, c.image_vocab))
        x = torch.cat([self._text(text), self._image_inputs(image)], dim=1)  # (B, L + h·w, w)
        causal = self._causal_only(padded)
        mask = None if causal else self._mask(text, c.grid * c.grid, padded)
        for blk in self.blocks:
            x = blk(x, mask, causal=causal)
        x = self.ln(x)
        image_logits = self.image_head(x[:, c.text_len :])  # (B, h·w, V)
        out = image_token_loss(image_logits, image)
        if c.text_loss_weight > 0:
            text_logits = self.text_head(x[:, : c.text_len - 1])  # (B, L − 1, text_vocab): predicts text[:, 1:]
            target = text[:, 1:]
            ce = F.cross_entropy(text_logits.float().reshape(-1, c.text_vocab), target.reshape(-1), reduction="none").view_as(target)
            real = (target != c.pad_id).float()
            per_text = (ce * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)  # (B,) mean over the real targets; 0 if none
            per = c.text_loss_weight * per_text + (1 - c.text_loss_weight) * out["loss_per_sample"]
            out.update(loss_text=per_text.mean(), loss_per_sample=per, loss=per.mean())
        return out

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, text: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Image tokens (B, h·w) for text (B, L), one token at a time (with a KV cache, or by
        recomputing the whole sequence each step, which the tests compare)."""
        c = self.cfg
        check_shape(text, (None, c.text_len), "G1 text tokens")
        padded = check_ids(pad=(text, c.pad_id), G1_text_tokens=(text, c.text_vocab))
        n = c.grid * c.grid
        b = text.shape[0]
        out = torch.zeros(b, n, dtype=torch.long, device=text.device)
        causal = self._causal_only(padded)
        full_mask = None if causal else self._mask(text, n, padded)
        pos = (self.row[:, None, :] + self.col[None, :, :]).reshape(n, -1)
        caches = [dict() for _ in self.blocks] if use_cache else None
        x_prefix = torch.cat([self._text(text), (self.bos + pos[0]).expand(b, 1, -1)], dim=1)  # text + BOS
        for i in range(n):
            if use_cache:
                x = x_prefix if i == 0 else (self.image_emb(out[:, i - 1]) + pos[i])[:, None]
                t0, t1 = (0, c.text_len + 1) if i == 0 else (c.text_len + i, c.text_len + i + 1)
                h = x
                m = None if causal else full_mask[:, :, t0:t1, :t1]
                for blk, cache in zip(self.blocks, caches):
                    h = blk(h, m, cache=cache, causal=causal)
            else:  # the whole sequence again; tokens after i are still 0, which the causal mask hides
                h = torch.cat([self._text(text), self._image_inputs(out)], dim=1)
                for blk in self.blocks:
                    h = blk(h, full_mask, causal=causal)
                h = h[:, : c.text_len + i + 1]
            logits = self.image_head(self.ln(h[:, -1]))
            out[:, i] = sample_next(logits, temperature, top_k, top_p, generator)
        return out

    def config_dict(self) -> dict:
        return asdict(self.cfg)
