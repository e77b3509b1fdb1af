"""VQ-VAE (van den Oord et al. 2017; thesis §5.2, Table 5) with an EMA or a loss-learned codebook.

Nearest codeword per grid cell, straight-through gradient, commitment weight β = 0.25.

``codebook = "ema"`` (default): the codebook, cluster sizes and embedding sums are buffers
updated in place under ``no_grad``: N_k ← γ N_k + (1 − γ) n_k;  m_k ← γ m_k + (1 − γ) Σ z;
Laplace smoothing Ñ_k = (N_k + ε) / (N + V ε) · N;  e_k = m_k / Ñ_k. Loss = rec + β‖z − sg[e]‖².
(The thesis code rebuilt the codebook as a new Parameter every step, which detached it from its
optimizer and voided its separate learning rate.)

``codebook = "loss"``: the codebook is an ``nn.Parameter`` (V, D) learned by the loss
rec + ‖sg[z] − e‖² + β‖z − sg[e]‖² (van den Oord et al., Eq. 3), so it can have its own learning
rate (Table 5's "LR vocabulary" column, 0.01 against 0.001: ``VQVAE.codebook_parameters()`` gives
the trainer the parameters for their own group). Its cluster sizes are still tracked by EMA, in a
buffer, for dead-code restarts only.

Both: codes whose cluster size falls below ``restart_threshold`` are restarted at encoder
outputs of the current batch (0: never). The codebook starts from encoder outputs of the first
batch (``init_output_bias``, which the trainer calls before the first step); a model whose
codebook was never initialised that way (a forward straight after construction) runs on its
random N(0, 1) start, which works but leaves most codes unused for longer. No training forward
reads a value back to the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Autoencoder, check_shape, code_usage, decoder, encoder


CODEBOOKS = ("ema", "loss")


@dataclass(frozen=True)
class VQVAEConfig:
    vocab_size: int = 256  # V codewords (the name tokenizers and OpenAI's dVAE use too)
    dim: int = 64  # codeword dimension D
    hidden: int = 256
    downsamples: int = 2
    n_rd: int = 4
    n_rb: int = 4
    image_size: int = 128
    beta: float = 0.25  # commitment
    decay: float = 0.99  # EMA γ
    eps: float = 1e-5  # Laplace smoothing ε
    restart_threshold: float = 0.0  # 0: no dead-code restarts
    codebook: str = "ema"  # "ema" (buffers, EMA updates) or "loss" (a Parameter learned by the codebook loss)

    def __post_init__(self) -> None:
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"codebook must be one of {', '.join(CODEBOOKS)}, got {self.codebook!r}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.downsamples


class EMACodebook(nn.Module):
    """Buffers ``codebook`` (V, D), ``cluster_size`` N_k (V,), ``embed_sum`` m_k (V, D) and
    ``initialized`` (a bool kept for the state dicts of older checkpoints; set by ``init_from``)."""

    def __init__(self, vocab_size: int, dim: int, decay: float, eps: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        init = torch.randn(vocab_size, dim, generator=generator)
        self.register_buffer("codebook", init.clone())  # (V, D)
        self.register_buffer("cluster_size", torch.ones(vocab_size))  # N_k
        self.register_buffer("embed_sum", init.clone())  # m_k
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent start: codewords drawn from the first batch's encoder outputs z (N, D),
        so none begins far from the data (a random N(0, 1) codebook left most codes unused here).
        Under torch.distributed, rank 0's draw is broadcast so every rank starts alike."""
        pick = torch.randint(len(z), (self.codebook.shape[0],), generator=generator, device=z.device)
        self.codebook.copy_(z[pick].float())
        _broadcast(self.codebook)
        if hasattr(self, "embed_sum"):
            self.embed_sum.copy_(self.codebook)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) → index of the nearest codeword (N,), squared Euclidean distance in fp32."""
        z, e = z.float(), self.codebook.float()
        d = (z * z).sum(1, keepdim=True) - 2 * z @ e.t() + (e * e).sum(1)[None, :]
        return d.argmin(dim=1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA step for a batch of encoder outputs z (N, D) assigned to codes idx (N,)."""
        onehot = F.one_hot(idx, self.codebook.shape[0]).type(torch.float32)  # (N, V)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ z.float(), alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook.shape[0] * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, threshold: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes with N_k < ``threshold`` restart at random rows of z (N, D), with N_k = 1. Returns
        the number restarted as a 0-dim tensor: the selection is a ``torch.where`` over all V codes
        (one candidate row drawn per code), so nothing is read back to the host."""
        if len(z) == 0:
            return torch.zeros((), dtype=torch.long, device=z.device)
        dead = self.cluster_size < threshold  # (V,)
        pick = torch.randint(len(z), (self.codebook.shape[0],), generator=generator, device=z.device)
        fresh = z[pick].float()  # (V, D)
        self.codebook.copy_(torch.where(dead[:, None], fresh, self.codebook))
        if hasattr(self, "embed_sum"):
            self.embed_sum.copy_(torch.where(dead[:, None], fresh, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size))
        return dead.sum()


class LossCodebook(EMACodebook):
    """``codebook`` (V, D) is a Parameter learned by the codebook loss; ``cluster_size`` (EMA of
    the counts, for restarts) and ``initialized`` are buffers. The same state-dict names as the
    EMA codebook, less ``embed_sum``."""

    def __init__(self, vocab_size: int, dim: int, decay: float, eps: float, generator: torch.Generator | None = None) -> None:
        nn.Module.__init__(self)
        self.decay, self.eps = decay, eps
        self.codebook = nn.Parameter(torch.randn(vocab_size, dim, generator=generator))  # (V, D)
        self.register_buffer("cluster_size", torch.ones(vocab_size))  # N_k, counts only
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """Only the cluster sizes: the codewords move by their gradient."""
        counts = torch.zeros_like(self.cluster_size).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)


def _broadcast(t: torch.Tensor) -> None:
    """Rank 0's values on every rank (a no-op outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, 0)


class VQVAE(Autoencoder):
    kind = "vqvae"

    def __init__(self, cfg: VQVAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder(3, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, cfg.dim)
        self.decoder = decoder(cfg.dim, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, 3)
        book = EMACodebook if cfg.codebook == "ema" else LossCodebook
        self.codebook = book(cfg.vocab_size, cfg.dim, cfg.decay, cfg.eps, generator)

    def codebook_parameters(self) -> list[nn.Parameter]:
        """The parameters the codebook loss trains ([codewords (V, D)] for ``codebook = "loss"``,
        [] for "ema"), for an optimizer group at their own learning rate (Table 5 "LR vocabulary")."""
        return [self.codebook.codebook] if self.cfg.codebook == "loss" else []

    @torch.no_grad()
    def init_output_bias(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """The decoder's output bias (``Autoencoder.init_output_bias``) and, once, the codebook from
        this batch's encoder outputs (``EMACodebook.init_from``): here rather than in ``forward``
        so that the training forward never reads ``initialized`` back to the host. The encoder
        runs in training mode (batch statistics, as the first training step sees them) with its
        BatchNorm running statistics restored afterwards."""
        super().init_output_bias(x)
        if bool(self.codebook.initialized):
            return
        saved = {k: v.clone() for k, v in self.encoder.named_buffers()}
        was = self.training
        self.train()
        z = self.latents(x)  # (B, D, h, w)
        self.train(was)
        bufs = dict(self.encoder.named_buffers())
        for k, v in saved.items():
            bufs[k].copy_(v)
        self.codebook.init_from(z.permute(0, 2, 3, 1).reshape(-1, self.cfg.dim), generator)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        check_shape(x, (None, 3, s, s), "vqvae input")
        return self.encoder(x)  # (B, D, h, w)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.latents(x)
        b, d, h, w = z.shape
        return self.codebook.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.cfg.grid
        check_shape(tokens, (None, g, g), "vqvae tokens")
        q = self.codebook.codebook[tokens.long()].permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(q)

    def forward(self, x: torch.Tensor, step: int = 0, generator: torch.Generator | None = None, rec_loss=None) -> dict:
        """One training pass: {"loss", "rec" (MSE), "commit" (‖z − sg[e]‖², mean), "recon"
        (B, 3, S, S), "perplexity", "used"} and, for ``codebook = "loss"``, "codebook_loss"
        (‖sg[z] − e‖², mean). Scalars are 0-dim tensors; nothing is read back to the host.
        ``rec_loss``: a callable (recon, x) → 0-dim loss used as "rec" instead of the pixel MSE
        (``perceptual.PerceptualLoss``); the pixel MSE is then reported as "mse"."""
        z = self.latents(x)  # (B, D, h, w)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
        idx = self.codebook.nearest(flat.detach())
        q = self.codebook.codebook[idx].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w); a gradient to e for "loss"
        with torch.autocast(device_type=x.device.type, enabled=False):
            commit = F.mse_loss(z.float(), q.detach().float())
            book = F.mse_loss(q.float(), z.detach().float()) if self.cfg.codebook == "loss" else None
        if self.training:
            self.codebook.update(flat.detach(), idx)
            if self.cfg.restart_threshold > 0:
                self.codebook.restart_dead(flat.detach(), self.cfg.restart_threshold, generator)
        q_st = z + (q - z).detach()  # straight-through: decoder gradients flow to the encoder
        recon = self.decoder(q_st)
        with torch.autocast(device_type=x.device.type, enabled=False):
            rec = F.mse_loss(recon.float(), x.float())
        extra = {}
        if rec_loss is not None:
            extra["mse"] = rec.detach()
            rec = rec_loss(recon, x)
        loss = rec + self.cfg.beta * commit
        if book is not None:
            loss = loss + book
            extra["codebook_loss"] = book.detach()
        return {"loss": loss, "rec": rec.detach(), "commit": commit.detach(), **extra, "recon": recon, **code_usage(idx, self.cfg.vocab_size)}
