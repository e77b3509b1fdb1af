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

Two text routes (``CLIPConfig.text_input``):

- ``"symbols"`` (``clip_mdmnist``, ``clip_tiny``): the 12 MD-MNIST description symbols, taken out
  of the mdmnist tokenizer's rows (``symbols_from_text_tokens``), as above.
- ``"tokens"`` (``clip_tokens``, ``clip_tokens_tiny``; issue 19): the text-token rows as the
  tokenize stage stored them, for any tokenizer. The vocabulary size V, the length L and the pad
  id come from the text-token manifest (``t2i train clip`` passes them); BOS / EOS stay in the row
  where the set's ``add_bos`` / ``add_eos`` put them, as ordinary ids the encoder learns, and the
  evaluation re-tokenizes every caption with the same settings (recorded in the checkpoint as
  ``text_config``). Padding is masked: no query attends to a pad position, so a caption's features
  depend neither on the pad embedding nor on the positions only padding fills
  (``tests/test_eval_priors.py::test_token_clip_sizes_its_patches_from_the_image_and_masks_padding``). The image patch is
  sized from the image: ``clip_tokens`` cuts a 16 × 16 grid of patches (the thesis' 8 × 8 pixels
  of 128 × 128: 4 at 64, 16 at 256), ``clip_tokens_tiny`` a 4 × 4 grid. The widths are Table 8's
  (the only CLIP sizes the thesis gives; it trained no CUB CLIP): width 128, 8 blocks, 8 heads,
  MLP 256, dropout 0.1, shared space 128.
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
TEXT_INPUTS = ("symbols", "tokens")
PATCH_GRID = {"clip_tokens": 16, "clip_tokens_tiny": 4}  # patches per side of the token-route builders
TOKEN_SETTINGS = ("image_size", "text_vocab", "text_len", "pad_id")  # what the trainer reads from the sets, never a model.<field>


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
    text_input: str = "symbols"  # "symbols": MD-MNIST's 12; "tokens": any tokenizer's rows (module docstring)
    pad_id: int = -1  # "tokens": the tokenizer's pad id, masked in attention; -1 with "symbols" (no padding)

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.text_input not in TEXT_INPUTS:
            raise ValueError(f"text_input must be one of {', '.join(TEXT_INPUTS)}, got {self.text_input!r}")
        if self.text_input == "tokens" and not 0 <= self.pad_id < self.text_vocab:
            raise ValueError(f"pad_id {self.pad_id} must be an id of the text vocabulary (0..{self.text_vocab - 1})")
        if self.text_input == "symbols" and self.pad_id != -1:
            raise ValueError(f"pad_id is for text_input 'tokens'; MD-MNIST symbols have no padding, got {self.pad_id}")


class EncoderBlock(nn.Module):
    """Pre-LN bidirectional block with its own MLP width (the priors' Block fixes it at 4 × width)."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
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

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep`` (B, T) bool: False marks padding inputs, which no query attends to (the CLS
        token is always kept, so every row has a key)."""
        x = self.ln_pre(torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos)  # (B, 1 + T, w)
        mask = None
        if keep is not None:
            mask = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)[:, None, None, :]  # (B, 1, 1, 1 + T): key may be attended
        for blk in self.blocks:
            x = blk(x, mask)
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
        """(B, 12) symbol ids ("symbols") or (B, L) text-token rows ("tokens", padding masked) →
        unit vectors (B, embed). ``ValueError`` for another shape or an id outside the vocabulary."""
        what = "CLIP description symbols" if self.cfg.text_input == "symbols" else "CLIP text tokens"
        check_shape(symbols, (None, self.cfg.text_len), what)
        if symbols.numel() and (int(symbols.min()) < 0 or int(symbols.max()) >= self.cfg.text_vocab):
            raise ValueError(f"{what} must be ids 0..{self.cfg.text_vocab - 1}, got {int(symbols.min())}..{int(symbols.max())}")
        keep = symbols != self.cfg.pad_id if self.cfg.text_input == "tokens" else None
        return F.normalize(self.proj(self.text_tower(self.text_emb(symbols.long()), keep)).float(), dim=-1)

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


def _token_clip(name: str, base: dict, over: dict) -> CLIP:
    """A "tokens" CLIP: ``over`` holds the settings read from the sets (``TOKEN_SETTINGS``) and any
    ``model.<field>``; the patch is image_size / PATCH_GRID[name] unless model.patch says otherwise."""
    missing = [k for k in TOKEN_SETTINGS if k not in over]
    if missing:
        raise T2IError(f"{name} needs {', '.join(missing)} (t2i train clip reads them from the autoencoder and the text-token manifest)")
    grid = PATCH_GRID[name]
    if "patch" not in over and over["image_size"] % grid:
        raise T2IError(f"{name} cuts {grid} x {grid} patches; image_size {over['image_size']} is not a multiple of {grid}: "
                       f"set model.patch to a divisor of it")
    patch = {"patch": over["image_size"] // grid} if "patch" not in over else {}
    return CLIP(config_with(CLIPConfig, {**base, "text_input": "tokens", **patch}, over, name))


def clip_tokens(**over) -> CLIP:
    """The evaluation CLIP for any tokenizer and image size (CUB, COCO): Table 8's widths (width
    128, 8 blocks, 8 heads, MLP 256, dropout 0.1, space 128), a 16 × 16 grid of patches (8 × 8
    pixels at 128 × 128, as the thesis), the text-token rows with padding masked."""
    return _token_clip("clip_tokens", {}, over)


def clip_tokens_tiny(**over) -> CLIP:
    """For tests and smoke runs: clip_tiny's widths (32, 2 blocks, 2 heads, MLP 64, no dropout), a
    4 × 4 grid of patches, the text-token rows with padding masked."""
    return _token_clip("clip_tokens_tiny", {"width": 32, "layers": 2, "heads": 2, "mlp": 64, "embed": 32, "dropout": 0.0}, over)


CLIPS = {f.__name__: f for f in (clip_mdmnist, clip_tiny, clip_tokens, clip_tokens_tiny)}
TOKEN_CLIPS = tuple(PATCH_GRID)  # the archs whose text is the text-token rows


def clip_text(cfg: CLIPConfig, text: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """A stream's text rows (B, L), as the tokenize stage wrote them → what ``CLIP.text_features``
    reads: the rows themselves ("tokens"; ``T2IError`` when L is not the CLIP's) or their 12
    MD-MNIST symbols ("symbols", ``symbols_from_text_tokens``)."""
    if cfg.text_input == "symbols":
        return symbols_from_text_tokens(text, valid)
    if text.dim() != 2 or text.shape[1] != cfg.text_len:
        raise T2IError(f"text rows of shape {tuple(text.shape)}; this CLIP reads rows of L = {cfg.text_len} tokens: tokenize with "
                       f"the length it was trained with")
    return text


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

