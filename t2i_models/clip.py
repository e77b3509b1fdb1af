"""CLIP for the MD-MNIST evaluation: a ViT image encoder and a transformer over the 12 description
symbols, contrasted in a shared space (the thesis' model, after Radford et al. 2021).

Image: 8×8 patches of the 128×128 image, a learned CLS token and learned positions, then a
LayerNorm (CLIP's ``ln_pre``: without it the near-black patches of MD-MNIST give almost the same
CLS output for every image and training idles for hundreds of steps at loss log B); text: the 12
symbol ids (0–19, the MD-MNIST vocabulary) after a CLS token. Both towers are pre-LN transformers
(width 128, 8 blocks, 8 heads, MLP 256, dropout 0.1) whose CLS output goes through one linear
projection shared by both towers, as in the thesis code, then L2 normalisation. Logits are
exp(logit_scale) · cosine, logit_scale learnable from log(1/0.07) and capped at log(100) as in
CLIP; the loss is the symmetric cross-entropy over the batch.

The images CLIP sees are always autoencoder reconstructions quantised to 8 bits, as a PNG of a
sample holds them (``encode.reconstruct``), in training and in evaluation alike: a CLIP
trained on sharp originals would score the priors' blurry outputs by their blur.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i_data.errors import T2IError
from t2i_data.mdmnist import VOCAB

from .attention import Attention
from .builders import config_with
from .blocks import check_shape

N_SYMBOLS = len(VOCAB)  # 20: ids 0-19 of the MD-MNIST tokenizer are the description symbols
TEXT_LEN = 12


@dataclass(frozen=True)
class CLIPConfig:
    image_size: int = 128
    patch: int = 8
    text_len: int = TEXT_LEN
    text_vocab: int = N_SYMBOLS
    width: int = 128
    layers: int = 8
    heads: int = 8
    mlp: int = 256
    embed: int = 128  # the shared space
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")


class EncoderBlock(nn.Module):
    """Pre-LN bidirectional block with its own MLP width (the priors' Block fixes it at 4 × width)."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Tower(nn.Module):
    """CLS token + inputs + learned positions → blocks → LayerNorm → the CLS output."""

    def __init__(self, cfg: CLIPConfig, n_inputs: int, ln_pre: bool = False) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1 + n_inputs, cfg.width) * 0.02)
        self.ln_pre = nn.LayerNorm(cfg.width) if ln_pre else nn.Identity()
        self.blocks = nn.ModuleList(EncoderBlock(cfg.width, cfg.heads, cfg.mlp, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_pre(torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos)  # (B, 1 + T, w)
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x[:, 0])  # (B, w)


class CLIP(nn.Module):
    kind = "clip"

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patchify = nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch)
        self.image_tower = Tower(cfg, (cfg.image_size // cfg.patch) ** 2, ln_pre=True)
        self.text_emb = nn.Embedding(cfg.text_vocab, cfg.width)
        self.text_tower = Tower(cfg, cfg.text_len)
        self.proj = nn.Linear(cfg.width, cfg.embed, bias=False)  # shared by both towers (thesis)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → unit vectors (B, embed)."""
        s = self.cfg.image_size
        check_shape(images, (None, 3, s, s), "CLIP images")
        x = self.patchify(images * 2 - 1).flatten(2).transpose(1, 2)  # (B, P, w)
        return F.normalize(self.proj(self.image_tower(x)).float(), dim=-1)

    def text_features(self, symbols: torch.Tensor) -> torch.Tensor:
        """(B, 12) symbol ids → unit vectors (B, embed)."""
        check_shape(symbols, (None, self.cfg.text_len), "CLIP description symbols")
        if symbols.numel() and (int(symbols.min()) < 0 or int(symbols.max()) >= self.cfg.text_vocab):
            raise ValueError(f"CLIP description symbols must be ids 0..{self.cfg.text_vocab - 1}, got {int(symbols.min())}..{int(symbols.max())}")
        return F.normalize(self.proj(self.text_tower(self.text_emb(symbols.long()))).float(), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, images: torch.Tensor, symbols: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
        """Logits image → text (B, B) and the symmetric cross-entropy with the diagonal as targets,
        over the ``valid`` entries only (padding neither scores nor serves as a negative)."""
        logits = self.scale() * self.image_features(images) @ self.text_features(symbols).t()
        if valid is not None:
            logits = logits[valid][:, valid]
        if not len(logits):  # all padding: a zero loss that still reaches every parameter (DDP)
            return {"logits_per_image": logits, "loss": logits.sum() * 0.0}
        target = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        return {"logits_per_image": logits, "loss": loss}

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def clip_mdmnist(**over) -> CLIP:
    """The thesis' CLIP: 8×8 patches of 128×128, width 128, 8 blocks, 8 heads, MLP 256."""
    return CLIP(config_with(CLIPConfig, {}, over, "clip_mdmnist"))


def clip_tiny(**over) -> CLIP:
    """For tests and smoke runs: 16×16 patches, width 32, 2 blocks, no dropout."""
    return CLIP(config_with(CLIPConfig, {"patch": 16, "width": 32, "layers": 2, "heads": 2, "mlp": 64, "embed": 32, "dropout": 0.0}, over,
                            "clip_tiny"))


CLIPS = {f.__name__: f for f in (clip_mdmnist, clip_tiny)}


def symbols_from_text_tokens(text: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of MD-MNIST tokenizer ids (B, L), possibly with BOS / EOS / padding → (B, 12) symbol ids.
    The tokenizer's ids 0-19 are the description symbols themselves; its specials are 20-23.
    Rows where ``valid`` is False (a stream's padding entries) become symbol 0 throughout."""
    if valid is not None:
        out = torch.zeros(len(text), TEXT_LEN, dtype=text.dtype, device=text.device)
        out[valid] = symbols_from_text_tokens(text[valid])
        return out
    keep = text < N_SYMBOLS
    counts = keep.sum(dim=1)
    if len(text) and bool((counts != TEXT_LEN).any()):
        bad = int(counts[counts != TEXT_LEN][0])
        raise T2IError(f"a caption holds {bad} MD-MNIST symbols where a description has {TEXT_LEN}; CLIP reads whole MD-MNIST "
                       f"descriptions tokenized with the mdmnist tokenizer, with a length L that fits BOS / EOS as well")
    return text[keep].reshape(-1, TEXT_LEN)

