"""VQ-VAE-2 (Razavi, van den Oord & Vinyals 2019, "Generating Diverse High-Fidelity Images with
VQ-VAE-2", §3.1 and Fig. 2a): two levels of codes, a coarse *top* grid and a fine *bottom* grid.

Data flow (shapes for S×S input, hidden width H, code dimension D)::

    x (B, 3, S, S) ──enc_b──► f_b (B, H, S/4, S/4)                    bottom encoder, ×4 down
    f_b ──enc_t──► pre_t ──► z_t (B, D, S/8, S/8) ──quantize──► q_t     top from the bottom encoder's features
    q_t ──dec_t──► (B, D, S/4, S/4); concat with f_b ──pre_b──► z_b ──quantize──► q_b   bottom conditioned on top
    concat(up_t(q_t), q_b) (B, 2D, S/4, S/4) ──decoder──► x̂ (B, 3, S, S)  decoder from both levels

The layers follow the paper's Fig. 2a as rosinality/vq-vae-2-pytorch (``vqvae.py``) builds it:
strided 4×4 convolutions to go down, 3×3 convolutions, residual blocks x + conv1(ReLU(conv3(ReLU(x))))
without normalisation, transposed 4×4 convolutions to go up. One difference: the decoder ends in a
sigmoid (this project's images are in [0, 1], as the dVAE's and the VQ-VAE's decoders end), and its
output bias starts at the data's mean pixel (``init_output_bias``).

Codebooks: one per level, the project's ``vqvae.EMACodebook`` (EMA updates γ, Laplace smoothing ε,
optional dead-code restarts, start from the first batch's latents; under DDP both levels learn
from the global batch, their counts and sums summed over ranks before each step, as that class's
docstring says, tests/test_ddp_ema.py). Loss (the VQ-VAE objective of
the paper's §2.1 with the codebook term replaced by the EMA updates, as its §2.1 and rosinality do):
‖x − x̂‖² + β (‖z_t − sg[e_t]‖² + ‖z_b − sg[e_b]‖²), both commitment terms means over their grid,
straight-through gradients at both quantizers (rosinality: ``recon_loss + 0.25 * latent_loss``).

API. Levels are named, coarse to fine, ``LEVELS = ("top", "bottom")``: ``encode_levels(x)`` →
``{"top": (B, S/8, S/8), "bottom": (B, S/4, S/4)}`` int64; ``decode_levels(dict)`` → (B, 3, S, S);
``cfg.levels`` → ``{"top": (grid, vocab), "bottom": (grid, vocab)}``. The single-grid interface of
the other autoencoders (``encode``, ``decode``, ``cfg.grid``, ``cfg.vocab_size``) is refused with one
``T2IError`` naming the levels, so a command that reads one grid stops with that line, not a crash.

Decoding a top grid alone (``bottom_from_top``, what ``t2i sample`` does with a top-level prior,
since there is no bottom prior here: the paper's is a PixelSNAIL conditioned on the top codes): the
bottom codes are the ones the bottom quantizer picks for the top codes with the bottom encoder's
features set to zero, then ``refine`` times those of the image the pair decodes to, re-encoded with
the top codes held. A stated, deterministic rule, not a learned prior: the images carry the top
level's layout and colours with little bottom-level detail.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i_data.errors import T2IError

from .blocks import Autoencoder, check_shape, code_usage
from .distributed import broadcast_from_rank0
from .vqvae import EMACodebook

LEVELS = ("top", "bottom")  # coarse to fine: the order of the levels in files, manifests and reports


@dataclass(frozen=True)
class VQVAE2Config:
    """Defaults are Razavi et al. 2019's ImageNet 256×256 model (Appendix A, Table 4: input
    256×256, latent layers 32×32 and 64×64, β 0.25, hidden units 128, residual units 64, residual
    layers 2, codebook size 512, codebook dimension 64); γ = 0.99 is the EMA decay of van den Oord
    et al. 2017 (Appendix A.1) and of rosinality/vq-vae-2-pytorch's ``Quantize``; ε = 1e-5 is
    rosinality's and sonnet's Laplace smoothing."""

    image_size: int = 256
    hidden: int = 128  # H: "hidden units"
    res_hidden: int = 64  # the residual blocks' inner width: "residual units" (rosinality's default is 32)
    n_res: int = 2  # residual blocks per stack: "layers"
    dim: int = 64  # D: codebook dimension, both levels
    vocab_top: int = 512
    vocab_bottom: int = 512
    beta: float = 0.25  # commitment weight, each level
    decay: float = 0.99  # EMA γ
    eps: float = 1e-5  # Laplace smoothing ε
    restart_threshold: float = 0.0  # 0: no dead-code restarts

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (bottom grid S/4, top grid S/8), got {self.image_size}")
        if self.hidden < 2 or self.hidden % 2:
            raise ValueError(f"hidden must be an even width >= 2, got {self.hidden}")
        for name in ("res_hidden", "dim", "vocab_top", "vocab_bottom"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_res < 0:
            raise ValueError(f"n_res must be >= 0, got {self.n_res}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        """{level: (grid side, codes)}: top S/8 (three ×2 steps), bottom S/4 (two)."""
        return {"top": (self.image_size // 8, self.vocab_top), "bottom": (self.image_size // 4, self.vocab_bottom)}

    def _one_grid(self, what: str):
        shown = ", ".join(f"{k} {g}x{g} of {v} codes" for k, (g, v) in self.levels.items())
        raise T2IError(f"a vqvae2 autoencoder has two token levels ({shown}), not one {what}; this step reads single-grid "
                       f"tokens (a dvae or vqvae); use the level-aware commands (t2i encode, t2i train prior level=top|bottom, t2i sample)")

    @property
    def grid(self) -> int:
        self._one_grid("grid")

    @property
    def vocab_size(self) -> int:
        self._one_grid("vocabulary")


class Residual(nn.Module):
    """x + conv1(ReLU(conv3(ReLU(x)))), no normalisation (Razavi et al. Fig. 2a; rosinality's ResBlock)."""

    def __init__(self, c: int, inner: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, inner, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(inner, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _res(c: int, cfg: VQVAE2Config) -> list[nn.Module]:
    return [Residual(c, cfg.res_hidden) for _ in range(cfg.n_res)] + [nn.ReLU(inplace=True)]


class VQVAE2(Autoencoder):
    kind = "vqvae2"

    def __init__(self, cfg: VQVAE2Config, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden, cfg.dim
        # bottom encoder: (B, 3, S, S) → (B, H, S/4, S/4)
        self.enc_b = nn.Sequential(nn.Conv2d(3, h // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(h // 2, h, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(h, h, 3, padding=1), *_res(h, cfg))
        # top encoder, on the bottom encoder's features: (B, H, S/4) → (B, H, S/8), then to D
        self.enc_t = nn.Sequential(nn.Conv2d(h, h // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(h // 2, h, 3, padding=1), *_res(h, cfg))
        self.pre_t = nn.Conv2d(h, d, 1)
        # top decoder: q_t (B, D, S/8) → (B, D, S/4), the condition of the bottom quantizer
        self.dec_t = nn.Sequential(nn.Conv2d(d, h, 3, padding=1), *_res(h, cfg), nn.ConvTranspose2d(h, d, 4, stride=2, padding=1))
        self.pre_b = nn.Conv2d(d + h, d, 1)
        self.up_t = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)  # q_t to the bottom grid for the decoder
        # decoder from both levels: (B, 2D, S/4) → (B, 3, S, S)
        self.decoder = nn.Sequential(nn.Conv2d(2 * d, h, 3, padding=1), *_res(h, cfg),
                                     nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                     nn.ConvTranspose2d(h // 2, 3, 4, stride=2, padding=1), nn.Sigmoid())
        self.codebook_top = EMACodebook(cfg.vocab_top, d, cfg.decay, cfg.eps, generator)
        self.codebook_bottom = EMACodebook(cfg.vocab_bottom, d, cfg.decay, cfg.eps, generator)

    def books(self) -> dict[str, EMACodebook]:
        return {"top": self.codebook_top, "bottom": self.codebook_bottom}

    # -- the pieces ---------------------------------------------------------------------------

    def bottom_features(self, x: torch.Tensor) -> torch.Tensor:
        """f_b (B, H, S/4, S/4) of images x (B, 3, S, S) in [0, 1]; ``ValueError`` naming both shapes."""
        s = self.cfg.image_size
        check_shape(x, (None, 3, s, s), "vqvae2 input")
        return self.enc_b(x)

    def top_latents(self, f_b: torch.Tensor) -> torch.Tensor:
        """z_t (B, D, S/8, S/8) from the bottom encoder's features."""
        return self.pre_t(self.enc_t(f_b))

    def bottom_latents(self, f_b: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
        """z_b (B, D, S/4, S/4): the bottom quantizer's input, from f_b and the quantized top q_t."""
        return self.pre_b(torch.cat([self.dec_t(q_t), f_b], dim=1))

    def _embed(self, level: str, tokens: torch.Tensor) -> torch.Tensor:
        g, v = self.cfg.levels[level]
        check_shape(tokens, (None, g, g), f"vqvae2 {level} tokens")
        return self.books()[level].codebook[tokens.long()].permute(0, 3, 1, 2)  # (B, D, g, g)

    def _decode(self, q_t: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([self.up_t(q_t), q_b], dim=1))

    @staticmethod
    def _nearest(book: EMACodebook, z: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z.shape
        return book.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    # -- tokens ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_levels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (B, 3, S, S) in [0, 1] → {"top": (B, S/8, S/8), "bottom": (B, S/4, S/4)} int64
        codes (nearest codeword, fp32 distances); the bottom codes are conditioned on the
        quantized top, as in training."""
        f_b = self.bottom_features(x)
        top = self._nearest(self.codebook_top, self.top_latents(f_b))
        bottom = self._nearest(self.codebook_bottom, self.bottom_latents(f_b, self._embed("top", top)))
        return {"top": top, "bottom": bottom}

    def decode_levels(self, tokens: dict) -> torch.Tensor:
        """{"top": (B, S/8, S/8), "bottom": (B, S/4, S/4)} codes → images (B, 3, S, S) in [0, 1].
        ``T2IError`` for a dict without exactly these two levels; ``ValueError`` for a grid of the
        wrong shape (both shapes named)."""
        if set(tokens) != set(LEVELS):
            raise T2IError(f"vqvae2 decodes both levels ({', '.join(LEVELS)}); got {', '.join(sorted(tokens)) or 'none'}")
        return self._decode(self._embed("top", tokens["top"]), self._embed("bottom", tokens["bottom"]))

    @torch.no_grad()
    def bottom_from_top(self, top: torch.Tensor, refine: int = 1) -> torch.Tensor:
        """Bottom codes (B, S/4, S/4) for top codes alone (module docstring, "Decoding a top grid
        alone"): the bottom quantizer's pick with f_b = 0, then ``refine`` rounds of re-encoding
        the decoded image with the top codes held."""
        q_t = self._embed("top", top)
        g = self.cfg.image_size // 4
        f_b = torch.zeros(len(top), self.cfg.hidden, g, g, device=q_t.device, dtype=q_t.dtype)
        bottom = self._nearest(self.codebook_bottom, self.bottom_latents(f_b, q_t))
        for _ in range(refine):
            x = self._decode(q_t, self._embed("bottom", bottom))
            bottom = self._nearest(self.codebook_bottom, self.bottom_latents(self.enc_b(x), q_t))
        return bottom

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.cfg._one_grid("token grid (encode)")

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.cfg._one_grid("token grid (decode)")

    # -- training -------------------------------------------------------------------------------

    @torch.no_grad()
    def init_output_bias(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """The last layer's bias at logit(mean pixel per channel) of ``x``, and each codebook, once,
        from this batch's latents (``EMACodebook.init_from``): the top one from z_t, the bottom one
        from z_b computed with the top codes of the freshly started top codebook. No
        normalisation layers, so nothing to restore afterwards."""
        last = self.decoder[-2]
        m = x.float().mean(dim=(0, 2, 3)).clamp(1e-3, 1 - 1e-3)  # (3,)
        last.bias.copy_(torch.log(m / (1 - m)).to(last.bias.dtype))
        broadcast_from_rank0(last.bias.data)  # each rank computed it from its own first batch: rank 0's wins
        if bool(self.codebook_top.initialized) and bool(self.codebook_bottom.initialized):
            return
        f_b = self.bottom_features(x)
        z_t = self.top_latents(f_b)
        self.codebook_top.init_from(z_t.permute(0, 2, 3, 1).reshape(-1, self.cfg.dim), generator)
        q_t = self._embed("top", self._nearest(self.codebook_top, z_t))
        z_b = self.bottom_latents(f_b, q_t)
        self.codebook_bottom.init_from(z_b.permute(0, 2, 3, 1).reshape(-1, self.cfg.dim), generator)

    def _quantize(self, level: str, z: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through q (B, D, g, g), commitment ‖z − sg[e]‖² mean (fp32), codes (N,)), with
        the level's EMA update and restarts in training mode."""
        book = self.books()[level]
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
        idx = book.nearest(flat.detach())
        q = book.codebook[idx].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w), a buffer: no gradient
        with torch.autocast(device_type=z.device.type, enabled=False):
            commit = F.mse_loss(z.float(), q.float())
        if self.training:
            book.update(flat.detach(), idx)
            if self.cfg.restart_threshold > 0:
                book.restart_dead(flat.detach(), self.cfg.restart_threshold, generator)
        return z + (q.to(z.dtype) - z).detach(), commit, idx

    def forward(self, x: torch.Tensor, step: int = 0, generator: torch.Generator | None = None) -> dict:
        """One training pass: {"loss", "rec" (MSE), "commit" (the two levels' sum), "commit_top",
        "commit_bottom", "recon" (B, 3, S, S), and per level "perplexity_<level>" and
        "used_<level>"} (``blocks.code_usage``). Scalars are 0-dim tensors; nothing is read back
        to the host."""
        f_b = self.bottom_features(x)
        q_t, commit_t, idx_t = self._quantize("top", self.top_latents(f_b), generator)
        q_b, commit_b, idx_b = self._quantize("bottom", self.bottom_latents(f_b, q_t), generator)
        recon = self._decode(q_t, q_b)
        with torch.autocast(device_type=x.device.type, enabled=False):
            rec = F.mse_loss(recon.float(), x.float())
        commit = commit_t + commit_b
        out = {"loss": rec + self.cfg.beta * commit, "rec": rec.detach(), "commit": commit.detach(), "commit_top": commit_t.detach(),
               "commit_bottom": commit_b.detach(), "recon": recon}
        for level, idx in (("top", idx_t), ("bottom", idx_b)):
            usage = code_usage(idx, self.cfg.levels[level][1])
            out[f"perplexity_{level}"], out[f"used_{level}"] = usage["perplexity"], usage["used"]
        return out
